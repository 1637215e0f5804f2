"""DDP through the Trainer: two CPU processes on gloo give the same losses and weights as one process
with the same global batch (classification with cross-entropy, retrieval with the MS loss and
cross-rank mining, multi-label BCE on index-carrying batches), and the evaluation gathers metrics over
ranks (top-1 and loss; mAP)."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed")

STEPS, GLOBAL_BATCH, WORLD = 3, 16, 2


def _model(out_dim):
    torch.manual_seed(0)  # no BatchNorm, no dropout: DDP is then exactly the big-batch computation
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, out_dim))


def _targets():
    # multilabel: [samples, 4] in {0, 1}; no ignored (-1) entry, so every rank counts as many entries and
    # the DDP average of the ranks' mean losses is the global mean
    return (torch.rand(STEPS * GLOBAL_BATCH, 4, generator=torch.Generator().manual_seed(2)) < 0.4).to(torch.int8)


def _batches(task):
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g)
        y = torch.arange(GLOBAL_BATCH) % 4 if task == "classify" else torch.arange(GLOBAL_BATCH) // 2 % 8
        if task == "multilabel":
            y = torch.arange(GLOBAL_BATCH) + step * GLOBAL_BATCH  # the samples' indices into _targets()
        out.append((x, y))
    return out


class _Shard:
    """Rank r sees rows r, r + WORLD, ... of every global batch (a strided shard, like the samplers)."""

    def __init__(self, batches, rank, world):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            yield x[self.rank :: self.world], y[self.rank :: self.world]


def _run(task, rank, world, out_dir, accumulate=1):
    from recogfast.engine import Trainer, TrainerOptions
    from recogfast.tasks.multilabel import multilabel_eval
    from recogfast.tasks.classify import classification_eval
    from recogfast.losses import MultiLabelBCELoss, MultiSimilarityLoss

    model = _model(16 if task == "retrieval" else 4)
    loss = {"classify": nn.CrossEntropyLoss(), "multilabel": MultiLabelBCELoss(_targets())}.get(
        task, MultiSimilarityLoss(gather_across_ranks=world > 1))
    batches = _batches(task)
    loader = _Shard(batches, rank, world)
    evaluate = {"classify": classification_eval(_Shard(batches[:1], rank, world)),
                "multilabel": multilabel_eval(_Shard(batches[:2], rank, world), _targets())}.get(task)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    options = TrainerOptions(epochs=1, progress=False, tensorboard=False, plots=False,
                             monitor="map" if task == "multilabel" else "top1", accumulate=accumulate)
    t = Trainer(model, loss, loader, evaluate, opt, out_dir=out_dir, options=options)
    t.fit()
    return t


def _worker(rank, task, init_file, out_dir, result_file, accumulate):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        t = _run(task, rank, WORLD, out_dir, accumulate)
        losses = torch.tensor(t.step_losses, dtype=torch.float64)
        dist.all_reduce(losses)  # each rank's loss is its local mean; the global loss is their average
        if rank == 0:
            torch.save({"losses": losses / WORLD, "state": t.model.state_dict(), "history": t.history}, result_file)
    finally:
        # Both ranks leave together: a rank tearing gloo down while the other still saves (rank 0) or
        # sends aborted intermittently with SIGABRT under load.
        dist.barrier()
        dist.destroy_process_group()
    # Skip the interpreter's teardown: with gloo's threads gone it has nothing left to do, and a rank that
    # aborted in it (SIGABRT, seen under load in CI after the result was saved) failed the test for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.parametrize("task, accumulate", [("classify", 1), ("retrieval", 1), ("multilabel", 1), ("classify", 3)])
def test_two_gloo_ranks_match_one_process(tmp_path, task, accumulate):
    # accumulate 3: one optimizer step over the 3 batches; DDP all-reduces only on the last (no_sync before)
    single = _run(task, 0, 1, tmp_path / "single", accumulate)
    assert single.global_step == STEPS // accumulate
    result_file = tmp_path / "ddp.pt"
    mp.start_processes(_worker, args=(task, str(tmp_path / "init"), str(tmp_path / "ddp"), str(result_file), accumulate),
                       nprocs=WORLD, join=True, start_method="spawn")
    ddp = torch.load(result_file, weights_only=True)
    torch.testing.assert_close(ddp["losses"], torch.tensor(single.step_losses, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-4, atol=1e-6)
    if task == "classify":  # metrics gathered over both ranks' shards equal the single-process ones
        assert ddp["history"][0]["val_top1"] == pytest.approx(single.history[0]["val_top1"])
        assert ddp["history"][0]["val_loss"] == pytest.approx(single.history[0]["val_loss"], rel=1e-5)
    if task == "multilabel":  # logits and indices gathered over both ranks: the same mAP and loss
        assert ddp["history"][0]["val_map"] == pytest.approx(single.history[0]["val_map"], abs=1e-12)
        assert ddp["history"][0]["val_loss"] == pytest.approx(single.history[0]["val_loss"], rel=1e-5)
        assert 0.0 < single.history[0]["val_map"] <= 1.0
    assert os.path.isfile(tmp_path / "ddp" / "last.pt")  # rank 0 writes the checkpoint
