"""Offline tools: records and outcomes files, evaluation on a dataset."""
