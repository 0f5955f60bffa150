"""Dataset sources: MedMNIST, files and tables, captions, VQA; batch preprocessing."""
