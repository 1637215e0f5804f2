"""What is trained: one module per task, each a :class:`~recogfast.tasks.base.Task` — classify,
retrieval, multilabel — and verify (any trained model's embeddings scored on image pairs; it trains
nothing, so it is not in the registry). The engine (loop, checkpoints, schedules, logs, fine-tuning)
knows no task; :func:`recogfast.engine.build.build_trainer` asks the run's task for its data, head,
loss, metrics and best-epoch rule.

Adding a task: a module with a Task subclass, and its line below.
"""

from __future__ import annotations

from typing import Any

from recogfast.tasks.base import SINGLE_LABEL_DATASETS, Task
from recogfast.tasks.classify import Classify
from recogfast.tasks.multilabel import MULTILABEL_DATASETS, MultiLabel
from recogfast.tasks.retrieval import Retrieval

REGISTRY: dict[str, Task] = {t.name: t for t in (Classify(), Retrieval(), MultiLabel())}
TASKS = tuple(REGISTRY)
DATASETS = SINGLE_LABEL_DATASETS + MULTILABEL_DATASETS


def get_task(name: str) -> Task:
    """The registered task `name` (ValueError naming the choices)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def preprocessing(config: dict) -> dict[str, Any]:
    """What a model of this run expects (recogfast.data.transforms.input_description) and returns (its task's
    output), for a deployment that has no recogfast: plain values, written as JSON into exports."""
    from recogfast.data.transforms import input_description

    task = get_task(config.get("task", "classify"))
    out = {**input_description(int(config.get("image_size") or 64)), "task": task.name, **task.describe_output()}
    names = config.get("class_names")
    if names and task.output != "embedding":
        out["class_names"] = list(names)
    return out


__all__ = ["Task", "REGISTRY", "TASKS", "DATASETS", "get_task", "preprocessing", "Classify", "Retrieval", "MultiLabel"]
