"""Checkpoint writes survive a kill at any of them: best.pt is written before last.pt, both atomically,
so a resumed run always loads, repeats the uninterrupted run's log.csv and ends with the same best.pt;
temp files that a kill left behind are removed at the next start."""

import csv

import pytest
import torch

import recogfast.engine.trainer as trainer_module
from recogfast.engine import load_checkpoint
from test_engine import Killed, _trainer

TIMES = ("epoch_s", "train_img_per_s")


def _log(folder):
    return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(open(folder / "log.csv"))]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    t = _trainer(folder)
    t.fit()
    return folder, t


@pytest.mark.parametrize("kill_at", range(8))  # the k-th checkpoint write of a 4-epoch run (best + last each)
def test_kill_at_any_checkpoint_write(tmp_path, monkeypatch, full, kill_at):
    folder, done = full
    real, writes = trainer_module.atomic_save, []

    def killed_save(obj, path):
        if len(writes) == kill_at:  # killed while writing: the temp file stays, the rename never happens
            (path.parent / f".{path.name}.x1y2.tmp").write_bytes(b"half a checkpoint")
            raise Killed
        writes.append(path.name)
        real(obj, path)

    monkeypatch.setattr(trainer_module, "atomic_save", killed_save)
    run = _trainer(tmp_path)
    try:
        run.fit()
    except Killed:
        pass
    monkeypatch.setattr(trainer_module, "atomic_save", real)
    if not (tmp_path / "last.pt").exists():  # killed before the first last.pt: start again
        resumed = _trainer(tmp_path)
        resumed.fit()
    else:
        torch.manual_seed(12345)  # a new process: another RNG state
        resumed = _trainer(tmp_path)
        resumed.fit(resume=True)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert _log(tmp_path) == _log(folder)
    best, want = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(folder / "best.pt")
    assert best["epoch"] == want["epoch"] == done.best_epoch == resumed.best_epoch
    for a, b in zip(best["model"].values(), want["model"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_missing_best_is_repaired_from_last(tmp_path):
    t = _trainer(tmp_path, epochs=1)
    t.fit()
    assert t.best_epoch == 1
    (tmp_path / "best.pt").unlink()
    again = _trainer(tmp_path, epochs=1)
    again.fit(resume=True)
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
