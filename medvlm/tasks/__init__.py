"""Task heads and losses: classification, retrieval, VQA."""
