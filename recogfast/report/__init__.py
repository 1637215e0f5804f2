"""``recogfast report RUN``: a run's pictures in ``RUN/report/`` (PNGs and one self-contained
``index.html`` that opens from the file system): training curves, per-class accuracy, confusions and
misclassified images (classification), a retrieval grid, Recall@K curve and 2-D embedding map (retrieval).

``make_report(run)`` builds it; the figure functions in :mod:`recogfast.report.figures` take plain
tensors / rows, so a notebook gets the same pictures.
"""

from recogfast.report.build import make_report

__all__ = ["make_report"]
