"""Metric-learning losses: the Multi-Similarity loss (fused op `recogfast.ops.ms_loss`) and the
cross-batch memory that feeds it a reference set of earlier embeddings; BCE-with-logits for multi-label
classification."""

from recogfast.losses.memory import CrossBatchMemory
from recogfast.losses.multi_similarity import MultiSimilarityLoss
from recogfast.losses.multilabel import MultiLabelBCELoss

__all__ = ["MultiSimilarityLoss", "CrossBatchMemory", "MultiLabelBCELoss"]
