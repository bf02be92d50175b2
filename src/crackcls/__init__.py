"""crackcls: a reproducible concrete-crack image classifier (DVC + MLflow + Keras)."""

import os

from crackcls.util import quiet

# Quiet TensorFlow's C++ start-up chatter and MLflow's per-file progress bars;
# users can still set either variable themselves.
quiet.install()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", quiet.default_log_level())
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"
