"""The report's pictures for notebooks (``pip install recogfast[viz]``): figure functions that take a model and a
dataset, or plain tensors / images, and return matplotlib Figures; CUBS and SE gates from hooks; Captum
attributions.

    fig = recogfast.viz.retrieval_grid(model, dataset, n=8)       # queries and their 8 nearest neighbours
    gates = recogfast.viz.gate_maps(model, images)                # {block name: gate}
"""

from __future__ import annotations

import torch

from recogfast.report import make_report  # noqa: F401
from recogfast.report.figures import (  # noqa: F401
    confusion, curves, embedding_map, image_grid, per_class_accuracy, recall_curve,
)
from recogfast.report.figures import retrieval_grid as retrieval_grid_figure  # noqa: F401  (from plain images)
from recogfast.report.gates import channel_gate, gate_figure, gate_maps, se_gate, spatial_gate  # noqa: F401
from recogfast.report.why import attributions, why_figure  # noqa: F401


@torch.no_grad()
def retrieval_grid(model, dataset, n: int = 16, k: int = 8, seed: int = 0, image_size: int = 64,
                   features: bool = False, batch_size: int = 128, backend: str = "torchvision"):
    """`n` seeded queries of `dataset` (a recogfast dataset: ``files``, ``labels``, ``class_names``), each followed
    by its `k` nearest other items by `model`'s output (``features=True``: its pooled features, e.g. a
    classifier's), framed green (same class) or red, with the cosine similarity: a matplotlib Figure. The
    neighbours are those `recogfast.metrics` counts (same order, ties to the lower index)."""
    from recogfast.data import build_loader
    from recogfast.report.build import _outputs, neighbour_grid

    device = next(model.parameters()).device
    loader = build_loader(dataset, train=False, batch_size=batch_size, image_size=image_size, backend=backend,
                          device=device, num_workers=0)
    was = model.training
    model.eval()
    try:
        e, y = _outputs(model, loader, features)
    finally:
        model.train(was)
    return neighbour_grid(e, y, dataset, n, seed, image_size, k)[0]
