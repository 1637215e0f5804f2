"""The GPU check's CPU rehearsal (tools/gpu_check.sh with no GPU: every step that can run here runs, the rest
skip with one line) and the results tool that turns its summary into RESULTS.md tables."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_results  # noqa: E402


def test_rehearsal_runs_every_step_it_can_and_writes_the_summary(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, REHEARSE="1", BUDGET="150")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert summary["mode"] == "rehearsal"
    assert status == {"env": "ok", "build": "ok", "tests": "ok", "crosscheck": "ok", "memcheck": "skipped",
                      "racecheck": "skipped", "bench": "ok", "profile": "skipped"}, status
    assert summary["crosscheck"]["summary"]["comparisons"] > 100
    assert summary["crosscheck"]["summary"]["failed"] == 0
    assert summary["bench"] and summary["bench"][0]["group"].startswith("se_gate fwd cpu")
    assert (out / "summary.md").read_text().startswith("# gpu_check rehearsal")
    assert (out / "logs.tar.gz").stat().st_size > 0
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back


def test_step_deadline_is_shared(tmp_path):
    """A budget too small for the steps: they skip or time out with a line each, and the summary is written."""
    env = dict(os.environ, PYTHON=sys.executable, REHEARSE="1", BUDGET="14")
    out = tmp_path / "out"
    subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                   text=True, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    statuses = [s["status"] for s in summary["steps"]]
    assert "skipped" in statuses or "timeout" in statuses
    assert summary["seconds"] <= 14 + 15  # the deadline, the kill grace and the summary


def _bench_row(group, impl, mean_ms, **extra):
    return dict(group=group, impl=impl, name=f"{group}-{impl}", mean_ms=mean_ms, min_ms=mean_ms, floor_ms=extra.get(
        "floor_ms"), floor=None, ratio_to_floor=extra.get("ratio"), images_per_s=extra.get("ips"),
        extra_peak_mb=extra.get("mb"), peak_memory_gib=None)


def test_goals_are_read_from_the_benchmark_records():
    rows = [
        _bench_row("se_gate fwd+bwd cuda bfloat16 B=256 C=64 56x56", "fused", 0.3, floor_ms=0.12, ratio=2.5),
        _bench_row("cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56", "fused", 1.2),
        _bench_row("resnet18 train step cuda bf16 B=256 64x64", "fused", 10.0),
        _bench_row("resnet18 train step cuda bf16 B=256 64x64", "plain", 9.0),
        _bench_row("ms_loss fwd+bwd cuda fp32 B=16384 R=0 D=512", "fused", 4.0, mb=50.0),
        _bench_row("ms_loss fwd+bwd cuda fp32 B=16384 R=0 D=512", "pml", 100.0),
    ]
    goals = gpu_results.goals(rows)

    def met(text):
        return next(g["met"] for g in goals if text in g["goal"])

    assert met("SE fwd+bwd") is False  # 2.5x its floor
    assert met("CUBS Block 2") is True  # 1.2 ms
    assert met("plain ResNet-18 at 64x64") is True  # 9 / 10 = 0.9x >= 0.8x
    assert met("extra peak memory") is True
    assert [g["met"] for g in goals].count(None) == 2  # 224x224 step and the bf16 MS loss were not measured
    speed = next(g for g in goals if "faster than" in g["goal"])
    assert speed["measured"] == "25.0x" and speed["met"] is True


def test_results_md_replaces_only_its_block(tmp_path):
    summary = dict(date="2026-12-04T00:00:00+00:00", mode="gpu", budget_s=300, seconds=100, steps=[
        dict(step="env", status="ok", seconds=1, note="versions")], tests=None, crosscheck=None,
        bench=[_bench_row("cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56", "fused", 1.2, floor_ms=0.45, ratio=2.7)],
        goals=[], profile=["x: eager 1 ms"], env="torch 2.11.0+cu130 cuda 13.0 gpu True NVIDIA H200 132\n")
    sp = tmp_path / "s.json"
    sp.write_text(json.dumps(summary))
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## GPU\n\nprose stays\n\n## CPU\n\ncpu stays\n")
    gpu_results.results_md(sp, results, "cmd")
    once = results.read_text()
    gpu_results.results_md(sp, results, "cmd")
    assert results.read_text() == once  # idempotent: the block is replaced, not appended
    assert once.count(gpu_results.BEGIN) == 1 and "prose stays" in once and "cpu stays" in once
    assert "| cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56 | fused | 1.200 | 1.00 | 0.450 | 2.70 |" in once
    assert "NVIDIA H200" in once


@pytest.mark.parametrize("small", [True, False])
def test_crosscheck_flags_a_kernel_outside_the_bound(small):
    import torch
    import gpu_crosscheck

    t = [torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), torch.full((3,), 2.0)]
    cpu = [t[0] + 1e-3, t[1], t[2]]
    good = gpu_crosscheck._compare("case", torch.bfloat16, [t[0] + 1e-3, t[1], t[2]], cpu, t)
    bad = gpu_crosscheck._compare("case", torch.bfloat16, [t[0] + 0.1, t[1], t[2]], cpu, t)
    assert all(r["ok"] for r in good)
    assert [r["ok"] for r in bad] == [False, True, True]
    # A gradient that is zero in exact arithmetic is measured on the call's gradient scale.
    noisy = gpu_crosscheck._compare("case", torch.float32, [t[0], t[1] + 1e-7, t[2]], cpu, t)
    assert noisy[1]["ok"] and noisy[1]["scale"] == 2.0


@pytest.mark.parametrize("kernel", ["se_gate", "cubs_spatial", "cubs_channel", "ms_loss"])
def test_cuda_emulation_transform_renames_each_kernel_namespace(tmp_path, kernel):
    """tools/cuda_emulation/run.sh (minutes, not in CI) calls the launchers through the renamed namespace;
    a kernel file the rewrite no longer fits must fail here, in CI, not only when someone runs the emulation."""
    out = tmp_path / f"{kernel}.cpp"
    subprocess.run([sys.executable, str(ROOT / "tools/cuda_emulation/transform.py"),
                    str(ROOT / f"csrc/ops/cuda/{kernel}_kernel.cu"), str(out), "emu_x"], check=True)
    text = out.read_text()
    assert "namespace emu_x {" in text and "<<<" not in text and "TORCH_LIBRARY_IMPL" not in text
