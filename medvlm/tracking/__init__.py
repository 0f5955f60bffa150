"""MLflow runs, plots and registered adapter models."""
