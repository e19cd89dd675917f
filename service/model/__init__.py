"""The model's life: feature definitions, training, the MLflow registry, the served version."""
