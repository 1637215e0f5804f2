"""A real `kill -9` of `recogfast train` at seeded random moments (ten times), each followed by `--resume`: the
finished run equals one that was never interrupted (the same log rows, the same best.pt weights, the same
TEST line), and no temporary checkpoint files are left behind; the run flips, jitters and erases (the default
backend's draws). (tests/test_checkpoints.py simulates a kill at each checkpoint write in-process; this one lets
the operating system do it wherever the process happens to be.)"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["train", "classify", "--dataset", "shapes196", "--images-per-class", "4", "--model", "tinynet",
        "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "3", "--epochs", "6", "--device", "cpu",
        "--workers", "0", "--quiet", "--vflip", "0.5", "--color-jitter", "0.3", "--reprob", "0.25"]  # augmentation too
TIMING = {"train_img_per_s", "epoch_s"}
KILLS = 10


def _cmd(cache: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "recogfast", *ARGS, "--data", str(cache), "--out", str(out), *extra]


def _rows(run: Path) -> list[dict]:
    with open(run / "log.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _epochs_logged(run: Path) -> int:
    try:
        with open(run / "log.csv") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return folder


def test_kill_9_and_resume_equals_the_uninterrupted_run(tmp_path, cache):
    env = dict(os.environ, PYTHONHASHSEED="0")
    whole = tmp_path / "whole"
    subprocess.run(_cmd(cache, whole), env=env, check=True, capture_output=True, timeout=600)

    run, rng, kills = tmp_path / "killed", random.Random(0), 0
    proc = subprocess.Popen(_cmd(cache, run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and _epochs_logged(run) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the first kill once the run holds last.pt
    while kills < KILLS:
        # A random moment: starting up, loading, mid-epoch, validating, writing a checkpoint, testing, reporting.
        time.sleep(rng.uniform(0.2, 4.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = subprocess.Popen(_cmd(cache, run, "--resume"), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=600) == 0
    assert kills >= 1, "the run finished before any kill: lengthen it"

    assert _rows(run) == _rows(whole)
    a = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    b = torch.load(whole / "best.pt", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"]
    for (k, x), (_, y) in zip(a["model"].items(), b["model"].items()):
        assert torch.equal(x, y), k
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (run, whole))
    assert sa["test"] == sb["test"] and sa["val"] == sb["val"]
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
