"""MLflow logging: runs, params, metrics, datasets and plots."""
