"""The inspector's desk: a web page to scan photos, review and correct the answers, and report them."""
