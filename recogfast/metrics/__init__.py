"""Evaluation metrics: top-k accuracy for classification, Recall@K and MAP@R for retrieval, mean
average precision for multi-label classification (``recogfast.metrics.multilabel``: VOC07 11-point and
area-under-PR AP), ROC AUC / EER / TAR@FAR for pair verification (``recogfast.metrics.verification``).

Retrieval metrics follow SPEC "Metrics": each test item is a query against all *other* test items,
ranked by cosine similarity. They run as an exact nearest-neighbour search in chunks of queries, so
memory is O(chunk · N), never the N×N similarity matrix of the whole test set.
"""

from recogfast.metrics.classification import AccuracyMeter, accuracy
from recogfast.metrics.multilabel import average_precision, mean_average_precision
from recogfast.metrics.retrieval import map_at_r, recall_at_k, retrieval_metrics
from recogfast.metrics.verification import kfold_accuracy, roc_curve, verification_metrics

__all__ = ["accuracy", "AccuracyMeter", "recall_at_k", "map_at_r", "retrieval_metrics", "average_precision",
           "mean_average_precision", "roc_curve", "verification_metrics", "kfold_accuracy"]
