"""MLflow: the tracking store, data lineage, the registry, the served pyfunc and the team server."""
