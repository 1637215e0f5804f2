"""The report's pictures for notebooks (``pip install recogfast[viz]``): figure functions that take plain
tensors / images and return matplotlib Figures, CUBS gates from hooks, and Captum attributions."""

from recogfast.report.figures import (  # noqa: F401
    confusion, curves, embedding_map, image_grid, per_class_accuracy, recall_curve, retrieval_grid,
)
from recogfast.report.gates import channel_gate, gate_figure, gate_maps, spatial_gate  # noqa: F401
from recogfast.report.why import attributions, why_figure  # noqa: F401
from recogfast.report import make_report  # noqa: F401
