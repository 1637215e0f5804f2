"""The Task interface (recogfast.tasks): the registry, what each task answers, and the promise that a new
task is one module plus a registry line — the engine trains a task it has never heard of."""

import collections

import pytest
import torch
from torch import nn

from recogfast import tasks
from recogfast.engine import build
from recogfast.tasks import Classify, get_task, preprocessing


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _cfg(cache, out, task="classify", **kw):
    base = dict(dataset="shapes196", data=cache, images_per_class=4, model="tinynet", image_size=16, batch_size=32,
                epochs=1, steps_per_epoch=2, optimizer="adamw", num_workers=0, device="cpu", backend="torchvision",
                out=str(out), progress=False)
    base.update(kw)
    return build.RunConfig(task=task, **base)


def test_registry_names_and_unknown_task():
    assert tasks.TASKS == ("classify", "retrieval", "multilabel")
    assert all(get_task(name).name == name for name in tasks.TASKS)
    with pytest.raises(ValueError, match=r"unknown task 'segment'; choose one of: classify, retrieval, multilabel"):
        get_task("segment")


@pytest.mark.parametrize("name, output, monitor, val_fraction, protocol", [
    ("classify", "softmax", ("top1", "max"), 0.1, "classification"),
    ("retrieval", "embedding", ("map@r", "max"), 0.15, "retrieval"),
    ("multilabel", "sigmoid", ("map", "max"), 0.1, "classification"),
])
def test_each_task_states_its_rules(name, output, monitor, val_fraction, protocol):
    t = get_task(name)
    assert (t.output, t.monitor, t.default_val_fraction, t.default_protocol) == (output, monitor, val_fraction, protocol)
    assert t.loss_ops == (("ms_loss",) if name == "retrieval" else ())
    assert t.takes_soft_labels == (name == "classify")
    cfg = build.RunConfig(task=name, dataset=t.default_dataset, device="cpu").resolved()
    assert (cfg.val_fraction, cfg.protocol) == (val_fraction, protocol)


def test_preprocessing_describes_each_tasks_output():
    common = {"image_size": 32, "class_names": ["a", "b"]}
    assert preprocessing({**common, "task": "classify"})["activation"] == "softmax"
    assert preprocessing({**common, "task": "multilabel"})["activation"] == "sigmoid per class"
    emb = preprocessing({**common, "task": "retrieval"})
    assert emb["output"] == "embedding" and emb["l2_normalised"] and "class_names" not in emb
    cls = preprocessing({**common, "task": "classify"})
    assert cls["class_names"] == ["a", "b"] and cls["size"] == 32 and cls["resize_shorter"] == 37


def test_probabilities_follow_the_output_kind():
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    assert torch.allclose(get_task("classify").probabilities(logits), logits.softmax(1))
    assert torch.allclose(get_task("multilabel").probabilities(logits), logits.sigmoid())
    with pytest.raises(ValueError, match="embeddings, not class probabilities"):
        get_task("retrieval").probabilities(logits)


def test_retrieval_training_batches_come_from_its_sampler(shapes_cache, tmp_path):
    """build.build_train_loader (also the report's augmentation figure) asks the task for its sampler: a
    retrieval batch holds m_per_class images of each of batch_size / m_per_class classes."""
    cfg = _cfg(shapes_cache, tmp_path, "retrieval", m_per_class=4, embedding_dim=16).resolved()
    train_ds, _, _ = build.build_datasets(cfg)
    _, labels = next(iter(build.build_train_loader(cfg, train_ds)))
    counts = collections.Counter(labels.tolist())
    assert len(counts) == 32 // 4 and set(counts.values()) == {4}


class PlainClassify(Classify):
    """A task the engine has never heard of: classification without label smoothing, best epoch = lowest
    val loss."""

    name = "classify-plain"
    monitor = ("loss", "min")

    def build_loss(self, cfg, train_ds) -> nn.Module:
        return nn.CrossEntropyLoss()


def test_a_new_task_is_one_class_and_a_registry_line(shapes_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(tasks.REGISTRY, PlainClassify.name, PlainClassify())
    trainer = build.build_trainer(_cfg(shapes_cache, tmp_path, PlainClassify.name, epochs=2))
    assert isinstance(trainer.loss_fn, nn.CrossEntropyLoss) and trainer.loss_fn.label_smoothing == 0.0
    assert (trainer.opt.monitor, trainer.opt.mode) == ("loss", "min")
    summary = trainer.fit()
    val_losses = [row["val_loss"] for row in trainer.history]
    assert len(val_losses) == 2 and summary["monitor"] == "loss"
    assert summary["best_epoch"] == 1 + val_losses.index(min(val_losses)) and summary["val"]["loss"] == min(val_losses)
    assert summary["test"]["chosen_by"] == "best val loss" and {"top1", "top5", "loss"} <= set(summary["test"])
