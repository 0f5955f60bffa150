"""Evaluation metrics: MedMNIST-style classification and chunked image-text retrieval recall@k."""

from medvlm.metrics.classification import classification_metrics, probabilities
from medvlm.metrics.retrieval import RetrievalResult, retrieval_metrics, retrieval_ranks

__all__ = ["RetrievalResult", "classification_metrics", "probabilities", "retrieval_metrics", "retrieval_ranks"]
