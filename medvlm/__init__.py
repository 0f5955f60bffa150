"""medvlm: general or medical CLIP? Evaluate and adapt CLIP-family models on medical tasks, tracked in MLflow."""

__version__ = "0.1.0"
