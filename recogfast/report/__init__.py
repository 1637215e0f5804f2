"""``recogfast report RUN``: a run's pictures in ``RUN/report/`` (PNGs and one self-contained
``index.html`` that opens from the file system): training curves, per-class accuracy, confusions and
misclassified images (classification), a retrieval grid, Recall@K curve and 2-D embedding map (retrieval).

``make_report(run)`` builds it; the figure functions in :mod:`recogfast.report.figures` take plain
tensors / rows, so a notebook gets the same pictures.
"""

__all__ = ["make_report"]


def __getattr__(name):  # lazily: `recogfast --help` needs no matplotlib
    if name == "make_report":
        from recogfast.report.build import make_report

        return make_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
