"""Serving: logged LoRA adapters as MLflow pyfunc models that rebuild the base model and predict."""
