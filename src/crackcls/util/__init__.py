"""Plumbing every wing shares: atomic writes, workspace paths, user errors, progress bars, quiet start-up, figures."""
