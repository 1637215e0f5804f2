"""Checks of command-line inputs that read the package (datasets, checkpoints): UsageError, one line."""

from __future__ import annotations

import os

from recogfast.cli.errors import UsageError


def check_dataset_args(dataset: str, data: str | None) -> None:
    from recogfast.engine.build import DATASETS, EMBEDDED

    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if data is not None and dataset not in EMBEDDED and not os.path.isdir(data):
        raise UsageError(f"data folder not found: {data}")
    if data is None and dataset not in EMBEDDED:
        raise UsageError(f"--data DIR is required for {dataset}")


def check_checkpoint(path: str) -> dict:
    from recogfast.engine.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
