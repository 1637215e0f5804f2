"""Evaluation metrics: top-k accuracy for classification, Recall@K and MAP@R for retrieval.

Retrieval metrics follow SPEC "Metrics": each test item is a query against all *other* test items,
ranked by cosine similarity. They run as an exact nearest-neighbour search in chunks of queries, so
memory is O(chunk · N), never the N×N similarity matrix of the whole test set.
"""

from recogfast.metrics.classification import AccuracyMeter, accuracy
from recogfast.metrics.retrieval import map_at_r, recall_at_k, retrieval_metrics

__all__ = ["accuracy", "AccuracyMeter", "recall_at_k", "map_at_r", "retrieval_metrics"]
