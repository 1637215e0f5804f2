"""The GPU check's CPU rehearsal (tools/gpu_check.sh with no GPU: every step that can run here runs, the rest
skip with one line) and the results tool that turns its summary into RESULTS.md tables."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_results  # noqa: E402


def test_rehearsal_runs_every_step_it_can_and_writes_the_summary(tmp_path):
    # The rehearsal takes about a minute on an idle 2-core machine; the budget leaves room for a loaded one (a CI
    # run beside the emulation's hundreds of threads once reached the 150 s it had and skipped its last steps).
    # The deadline logic itself is tested below with a budget that runs out on purpose.
    env = dict(os.environ, PYTHON=sys.executable, REHEARSE="1", BUDGET="600")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert summary["mode"] == "rehearsal"
    assert status == {"env": "ok", "build": "ok", "tests": "ok", "crosscheck": "ok", "memcheck": "skipped",
                      "racecheck": "skipped", "variants_san": "ok", "bench": "ok", "se_fused": "skipped", "graphs": "skipped",
                      "flash": "skipped", "cubs_tiles": "skipped", "profile": "ok", "compiled": "skipped",
                      "ncu": "skipped", "maxautotune": "skipped"}, status
    notes = {s["step"]: s["note"] for s in summary["steps"]}
    # The CUBS kernel variants: Block 2 (RECOGFAST_CUBS_SPATIAL_TILE 0-3) at 56x56 and 28x28, Block 1
    # (RECOGFAST_CUBS_CHANNEL_THREADS 128, 512) at 56x56 and 7x7, Block 1's one-CTA variant at four stages (7x7 in
    # both Block 1 selections: 14 distinct), fwd and fwd+bwd, a pytest run each variant.
    assert notes["cubs_tiles"] == "no GPU: 14 CUBS Block 1 and 2 benchmarks selected, a run each variant", notes["cubs_tiles"]
    # The flash MS-loss step (tile variants, batch sweep) skips here, but its selection names CUDA benchmarks.
    assert int(notes["flash"].split("no GPU: ")[1].split()[0]) >= 5, notes["flash"]
    # The torch.compile peers skip on the CPU, but their -k selections must name CUDA benchmarks.
    for step in ("compiled", "maxautotune", "graphs", "se_fused"):
        n = int(notes[step].split("no GPU: ")[1].split()[0])
        assert n >= {"compiled": 10, "maxautotune": 5, "graphs": 16, "se_fused": 8}[step], notes[step]
    assert summary["crosscheck"]["summary"]["comparisons"] > 100
    assert summary["crosscheck"]["summary"]["failed"] == 0
    # The sanitizer's variant runs: each cross-check ran (here on the CPU) with its variables set.
    san = tarfile.open(out / "logs.tar.gz").extractfile("logs/variants_san.log").read().decode()
    assert san.count("crosscheck cpu: ") == 7 and "RECOGFAST_MS_FLASH_TILE=5: ms_loss bfloat16" in san, san
    assert "== RECOGFAST_MS_LOSS_PATH=flash RECOGFAST_MS_FLASH_FWD=one: ms_loss bfloat16" in san, san
    assert "== RECOGFAST_CUBS_CHANNEL_VARIANT=fused: cubs_channel float32,bfloat16" in san, san
    assert san.count(" comparisons, 0 failed") == 7, san
    # The variants' winners (tools/tuned_table.py): none among CPU records.
    tuned = tarfile.open(out / "logs.tar.gz").extractfile("logs/tuned.txt").read().decode()
    assert tuned.strip() == "no swept variant in these records", tuned
    # The benchmark records come from the JSON lines, written as each benchmark finished.
    lines = (out / "bench.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[0])["extra_info"]["timing"].startswith("wall clock only")
    assert summary["bench"] and summary["bench"][0]["group"].startswith("se_gate fwd cpu")
    assert summary["bench"][0]["events_ms"] is None and summary["bench"][0]["graph_ms"] is None  # CPU: wall only
    # The profiler harness ran on the CPU: a table and an op count a case, fused and reference.
    cases = summary["profile"]["cases"]
    assert {c["impl"] for c in cases} == {"fused", "reference"} and all(c["rows"] and c["ops"] > 0 for c in cases)
    md = (out / "summary.md").read_text()
    assert md.startswith("# gpu_check rehearsal") and "| name | calls | GPU µs | CPU µs |" in md
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
        extra_peak_mb=extra.get("mb"), peak_memory_gib=None, events_ms=extra.get("events"), graph_ms=extra.get("graph"))


def test_goals_are_read_from_the_benchmark_records():
    rows = [
        _bench_row("se_gate fwd+bwd cuda bfloat16 B=256 C=64 56x56", "fused", 0.8, floor_ms=0.12, events=0.5, graph=0.3),
        _bench_row("se_gate fwd+bwd cuda bfloat16 B=256 C=512 7x7", "fused", 0.3, floor_ms=0.1, events=0.19),
        _bench_row("cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56", "fused", 1.2, events=0.9, graph=0.7),
        _bench_row("cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56", "compiled", 1.2, events=0.9, graph=1.2),
        _bench_row("cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56", "compiled_maxautotune", 1.2, events=0.9),
        _bench_row("resnet18 train step cuda bf16 B=256 64x64", "fused", 10.0, graph=5.0),
        _bench_row("resnet18 train step cuda bf16 B=256 64x64", "plain", 9.0, graph=4.0),
        _bench_row("engine train step cuda bf16 B=256 64x64", "plain_graphs", 9.0, events=4.5),
        _bench_row("engine train step cuda bf16 B=256 64x64", "fused_graphs", 10.0, events=5.0),
        _bench_row("engine train step cuda bf16 B=256 64x64", "fused_parallel_graphs", 10.0, events=6.0),
        _bench_row("ms_loss fwd+bwd cuda fp32 B=16384 R=0 D=512", "fused", 4.0, mb=50.0),
        _bench_row("ms_loss fwd+bwd cuda fp32 B=16384 R=0 D=512", "pml", 100.0),
    ]
    goals = gpu_results.goals(rows)

    def goal(text):
        return next(g for g in goals if text in g["goal"])

    assert goal("SE fwd+bwd <= 1.3x")["measured"] == "2.50x (graph)" and goal("SE fwd+bwd <= 1.3x")["met"] is False
    assert goal("SE fwd+bwd <= 2.0x")["measured"] == "1.90x (events)" and goal("SE fwd+bwd <= 2.0x")["met"] is True
    assert goal("CUBS Block 2")["measured"] == "0.700 ms (graph)" and goal("CUBS Block 2")["met"] is True
    assert goal("(serial12) throughput >= 0.8x plain ResNet-18 at 64x64")["measured"] == "0.90x (wall)"  # 9 / 10
    assert goal("(serial12) throughput >= 0.8x plain ResNet-18 at 64x64")["met"] is True
    assert goal("(serial12), both captured in a CUDA graph, >= 0.85x at 64x64")["measured"] == "0.80x (graph)"
    assert not any("(parallel) throughput >= 0.8x" in g["goal"] for g in goals)  # not measured: no row, no goal
    graphs = [g for g in goals if g["goal"].startswith("recogfast train --cuda-graphs")]
    assert [(g["measured"], g["met"]) for g in graphs] == [("0.90x (events)", True), ("0.75x (events)", False)]
    assert "(serial12) throughput >= 0.85x plain ResNet-18, both captured, at 64x64" in graphs[0]["goal"]
    assert goal("compiled): cubs2")["measured"] == "1.71x (graph)" and goal("compiled): cubs2")["met"] is True
    assert goal("compiled_maxautotune): cubs2")["measured"] == "1.00x (events)"  # no graph column: events
    assert goal("extra peak memory")["met"] is True
    assert [g["met"] for g in goals].count(None) == 3  # 224x224 (eager and graph) and the bf16 MS loss
    speed = next(g for g in goals if "faster than pytorch" in g["goal"])
    assert speed["measured"] == "25.0x" and speed["met"] is True


def test_bench_records_from_json_lines_keep_what_finished(tmp_path):
    """bench.jsonl: a line a finished benchmark; a later line of the same test replaces the earlier one, and a
    line cut by a kill at the deadline is ignored."""
    def line(name, mean, **info):
        return json.dumps(dict(name=name, fullname=f"b.py::{name}", group="g cuda", extra_info=dict(impl=name, **info),
                               stats=dict(min=mean, max=mean, mean=mean, stddev=0, median=mean, rounds=3)))

    (tmp_path / "bench.jsonl").write_text("\n".join([
        line("fused", 1e-3, events_ms=0.9, graph_ms=0.5), line("compiled", 3e-3, first_call_s=20.5, events_ms=2.0,
                                                                 graph_ms=1.5), line("fused", 2e-3, events_ms=1.8),
        line("reference", 5e-3)[:40]]) + "\n")
    rows = {r["impl"]: r for r in gpu_results._bench(tmp_path)}
    assert set(rows) == {"fused", "compiled"}
    assert rows["fused"]["mean_ms"] == 2.0 and rows["fused"]["graph_ms"] is None
    table = gpu_results.bench_tables(list(rows.values()))
    assert "| g cuda | compiled | 3.000 | 2.000 | 1.500 | 1.11 (e) | - | - | 20.5 |" in table


def test_bench_records_of_a_kernel_variant_sit_beside_the_default(tmp_path):
    """tools/gpu_check.sh step cubs_tiles runs the same test under RECOGFAST_CUBS_SPATIAL_TILE=N, labelled impl
    fused_tileN (benchmarks/test_cubs_bench.py): it must not replace the default variant's row, and its table row
    gives its time relative to the default's."""
    def line(impl, mean, tile):
        return json.dumps(dict(name="test_cubs[fwd+bwd-fused-cubs2-stage0-cuda]",
                               fullname="benchmarks/test_cubs_bench.py::test_cubs[fwd+bwd-fused-cubs2-stage0-cuda]",
                               group="cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56",
                               extra_info=dict(impl=impl, cubs_spatial_tile=tile, events_ms=mean * 1e3),
                               stats=dict(min=mean, max=mean, mean=mean, stddev=0, median=mean, rounds=20)))

    (tmp_path / "bench.jsonl").write_text("\n".join([line("fused", 2e-3, "0"), line("fused_tile1", 1.5e-3, "1"),
                                                      line("fused_tile3", 3e-3, "3"), line("fused", 1.6e-3, "0")]))
    rows = {r["impl"]: r for r in gpu_results._bench(tmp_path)}
    assert set(rows) == {"fused", "fused_tile1", "fused_tile3"}
    assert rows["fused"]["mean_ms"] == 1.6  # the last line of a test and impl wins
    table = gpu_results.bench_tables(list(rows.values()))
    assert "| cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56 | fused_tile1 | 1.500 | 1.500 | - | 0.94 (e) |" in table
    assert "| fused_tile3 | 3.000 | 3.000 | - | 1.88 (e) |" in table
    assert gpu_results.goals(list(rows.values()))[0]["measured"] == "1.600 ms (events)"  # the default's row


NCU_RAW = (
    '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
    '"Device","CC","gpu__time_duration.sum","sm__throughput.avg.pct_of_peak_sustained_elapsed",'
    '"gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed","dram__throughput.avg.pct_of_peak_sustained_elapsed",'
    '"sm__warps_active.avg.pct_of_peak_sustained_active","launch__registers_per_thread",'
    '"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",'
    '"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",'
    '"smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",'
    '"sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",'
    '"l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum"\n'
    '"","","","","","","","","","","","usecond","%","%","%","%","register/thread","ratio","ratio","ratio","%",""\n'
    '"0","1","python3","h","cubs_spatial_row_kernel","1","7","(256, 1, 1)","(3136, 1, 1)","0","9.0","1,234.5",'
    '"61.2","20.5","18.0","45.1","72","3.5","0.4","7.25","38.5","12,288"\n')


def test_ncu_raw_csv_is_parsed_to_one_record_a_kernel():
    (rec,) = gpu_results.parse_ncu("==PROF== noise\n" + NCU_RAW)
    assert rec["kernel"] == "cubs_spatial_row_kernel" and rec["duration"] == 1234.5 and rec["duration_unit"] == "usecond"
    assert rec["sm_sol_pct"] == 61.2 and rec["mem_sol_pct"] == 20.5 and rec["occupancy_pct"] == 45.1
    assert rec["registers"] == 72 and rec["stalls"][0] == ("math_pipe_throttle", 7.25)
    assert rec["tensor_pct"] == 38.5 and rec["bank_conflicts"] == 12288 and "smem_pct" not in rec  # not collected
    md = "\n".join(gpu_results.ncu_table([rec]))
    assert "cubs_spatial_row_kernel" in md and "math_pipe_throttle 7.2" in md and "| 38.5 | - | 12288 |" in md
    assert gpu_results.parse_ncu("") == []
    import gpu_ncu

    name = ("void recogfast::(anonymous namespace)::ms_flash_fwd_kernel<recogfast::(anonymous namespace)::FlashTile<64, "
            "64, 32, 64, false, 2>, (recogfast::(anonymous namespace)::MmaKind)0, c10::BFloat16, 1>(recogfast::(anonymous "
            "namespace)::FlashArgs<c10::BFloat16>, float*, long*, float*)")
    assert gpu_ncu.short_kernel_name(name) == (
        "ms_flash_fwd_kernel<FlashTile<64, 64, 32, 64, false, 2>, (MmaKind)0, BFloat16, 1>")
    assert gpu_ncu.short_kernel_name("se_gate_kernel") == "se_gate_kernel"
    assert gpu_ncu.short_kernel_name("k<" + "x" * 200 + ">", 20) == "k<xxxxxxxxxxxxxxx..."


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
    assert "| cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56 | fused | 1.200 | - | - | 1.00 (w) | 0.450 | 2.67 | - |" in once
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


def test_ncu_driver_runs_each_key_call_once_and_restores_the_path(monkeypatch, capsys):
    """gpu_check's ncu step runs `gpu_profile.py --ncu-driver` under Nsight Compute (GPU only): on the CPU the same
    calls run (the MS loss on its CPU kernel), and the path it forces for the flash MS loss is put back."""
    import gpu_profile

    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "tiles")
    gpu_profile.ncu_driver("cpu")
    assert os.environ["RECOGFAST_MS_LOSS_PATH"] == "tiles"
    assert "ms_loss (float32) at B=64 D=512, then cubs2, se, cubs1" in capsys.readouterr().out


@pytest.mark.parametrize("kernel", ["se_gate", "cubs_spatial", "cubs_channel", "ms_loss"])
def test_cuda_emulation_transform_renames_each_kernel_namespace(tmp_path, kernel):
    """tools/cuda_emulation/run.sh (minutes, not in CI) calls the launchers through the renamed namespace;
    a kernel file the rewrite no longer fits must fail here, in CI, not only when someone runs the emulation."""
    out = tmp_path / f"{kernel}.cpp"
    subprocess.run([sys.executable, str(ROOT / "tools/cuda_emulation/transform.py"),
                    str(ROOT / f"csrc/ops/cuda/{kernel}_kernel.cu"), str(out), "emu_x"], check=True)
    text = out.read_text()
    assert "namespace emu_x {" in text and "<<<" not in text and "TORCH_LIBRARY_IMPL" not in text


def test_cuda_emulation_transform_rewrites_the_one_cta_headers(tmp_path):
    """The one-CTA variants (se_gate_fused.cuh: RECOGFAST_SE_VARIANT=fused; cubs_channel_fused.cuh:
    RECOGFAST_CUBS_CHANNEL_VARIANT=fused) and their shared streaming half (sample_stage.cuh, which launches them) reach
    the emulation as rewritten headers (run.sh): the launch, the dynamic shared memory and the includes."""
    run_sh = (ROOT / "tools/cuda_emulation/run.sh").read_text()

    def rewrite(name):
        out = tmp_path / f"{name}_emu.h"
        subprocess.run([sys.executable, str(ROOT / "tools/cuda_emulation/transform.py"),
                        str(ROOT / f"csrc/ops/cuda/{name}.cuh"), str(out)], check=True)
        assert name in run_sh
        return out.read_text()

    stage = rewrite("sample_stage")
    assert "<<<" not in stage and "emu_launch(kernel, emu_cfg(" in stage and '#include "common_emu.h"' in stage
    for name in ("se_gate_fused", "cubs_channel_fused"):
        text = rewrite(name)
        assert "<<<" not in text and "emu_dynamic_smem()" in text and '#include "sample_stage_emu.h"' in text, name
