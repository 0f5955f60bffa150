"""The training loop and frozen-feature encoding."""
