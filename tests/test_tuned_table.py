"""The tuned table (recogfast/tuned.py, csrc/ops/cuda/tuned_table.h, tools/tuned_table.py): the kernels' header
matches the Python table, the committed entries are values their knobs allow, a sweep's winner is picked only when
it is faster beyond the noise margin at every shape, the MS loss's flash default needs a passing GPU cross-check,
--write keeps both files in step, and the dispatch mirror and the benchmarks' labels read the same table.
(The C++ reader itself: tools/cuda_emulation/tuned_check.cpp.)"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import recogfast.tuned as tuned
from recogfast import dispatch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("tuned_table", ROOT / "tools" / "tuned_table.py")
tt = importlib.util.module_from_spec(spec)
sys.modules["tuned_table"] = tt
spec.loader.exec_module(tt)


def test_header_matches_the_python_table():
    assert (ROOT / "csrc/ops/cuda/tuned_table.h").read_text() == tt.render_header(tuned.TUNED)


def test_committed_entries_are_allowed_values():
    for (knob, cc, dtype), value in tuned.TUNED.items():
        assert value in tuned.KNOBS[knob].allowed and value != "auto"
        assert dtype in tt.CPP_DTYPES and len(cc.split(".")) == 2


def test_header_renders_entries_in_order():
    text = tt.render_header({("ms_flash_tile", "9.0", "bfloat16"): "3", ("cubs_spatial_tile", "8.0", "float16"): "1"})
    body = text[text.index("kTuned[] = {"):]
    assert body.index('{"cubs_spatial_tile", 80, kHalf, "1"},') < body.index('{"ms_flash_tile", 90, kBFloat16, "3"},')
    assert body.index('{"ms_flash_tile", 90, kBFloat16, "3"},') < body.index("{nullptr, 0, kFloat, nullptr},")


def _row(group, impl, ms, cc="9.0", **variant):
    return dict(group=group, impl=impl, events_ms=ms, mean_ms=ms, device_cc=cc, **variant)


G56 = "cubs2 fwd+bwd cuda bfloat16 B=64 C=64 56x56"
G28 = "cubs2 fwd+bwd cuda bfloat16 B=64 C=128 28x28"


def _tiles(times: dict, cc="9.0"):
    """Block 2 rows: {variant: (ms at 56x56, ms at 28x28)}, the sweep's explicit rows (impl fused_tileN)."""
    return [_row(g, f"fused_tile{v}", t[i], cc, cubs_spatial_tile=v) for v, t in times.items()
            for i, g in enumerate((G56, G28))]


def test_pick_takes_a_variant_faster_at_every_shape():
    rows = _tiles({"0": (1.0, 0.50), "1": (0.90, 0.46), "2": (0.80, 0.52), "3": (1.2, 0.6)})
    decisions, report = tt.pick(rows, None)
    # 2 has the better geomean (0.80 x 1.04) but is slower at 28x28 by more than the margin; 1 wins
    assert decisions[("cubs_spatial_tile", "9.0", "bfloat16")] == "1"
    lines = {c["value"]: c for c in report[0]["candidates"]}
    assert lines["1"]["geomean"] == pytest.approx((0.9 * 0.92) ** 0.5)
    assert lines["2"]["worst"] == pytest.approx(1.04)


def test_pick_keeps_the_default_within_the_noise():
    rows = _tiles({"0": (1.0, 0.50), "1": (0.98, 0.495), "3": (1.01, 0.49)})
    decisions, _ = tt.pick(rows, None)
    assert decisions[("cubs_spatial_tile", "9.0", "bfloat16")] is None


def test_pick_needs_every_shape_and_keys_by_device():
    rows = _tiles({"0": (1.0, 0.5)}) + [_row(G56, "fused_tile1", 0.5, cubs_spatial_tile="1")]
    rows += _tiles({"0": (1.0, 0.5), "3": (0.5, 0.25)}, cc="8.0")
    decisions, report = tt.pick(rows, None)
    assert decisions[("cubs_spatial_tile", "9.0", "bfloat16")] is None  # tile 1 measured at one shape of two
    assert "not measured at every shape" in report[1]["candidates"][0]["note"]
    assert decisions[("cubs_spatial_tile", "8.0", "bfloat16")] == "3"


def test_pick_prefers_a_sweep_row_to_the_headline_row_of_the_same_variant():
    rows = _tiles({"0": (1.0, 0.5), "2": (0.8, 0.4)})
    rows += [_row(G56, "fused", 0.1, cubs_spatial_tile="0"), _row(G28, "fused", 0.1, cubs_spatial_tile="0")]
    decisions, _ = tt.pick(rows, None)
    assert decisions[("cubs_spatial_tile", "9.0", "bfloat16")] == "2"


def test_pick_block1_threads_default_is_256():
    g = "cubs1 fwd+bwd cuda bfloat16 B=64 C=64 56x56"
    rows = [_row(g, "fused", 1.0, cubs_channel_threads="256"),
            _row(g, "fused_threads128", 0.9, cubs_channel_threads="128"),
            _row(g, "fused_threads512", 1.1, cubs_channel_threads="512")]
    decisions, _ = tt.pick(rows, None)
    assert decisions[("cubs_channel_threads", "9.0", "bfloat16")] == "128"


def test_pick_keeps_the_entry_when_the_baseline_was_not_measured():
    """A table that names a winner makes the headline rows run it; a sweep without the baseline's rows must not
    turn that into "default" (the next --write would drop the entry, the run after pick it again)."""
    g = "cubs1 fwd+bwd cuda bfloat16 B=64 C=64 56x56"
    rows = [_row(g, "fused", 0.9, cubs_channel_threads="512"),
            _row(g, "fused_threads128", 1.0, cubs_channel_threads="128"),
            _row(g, "fused_threads512", 0.9, cubs_channel_threads="512")]
    decisions, report = tt.pick(rows, None)
    assert ("cubs_channel_threads", "9.0", "bfloat16") not in decisions
    assert report[0]["decision"] == "kept" and "not measured" in report[0]["candidates"][0]["note"]
    se = "se_gate fwd+bwd cuda bfloat16 B=256 C=64 56x56"
    decisions, _ = tt.pick([_row(se, "fused", 0.5, se_variant="fused"), _row(se, "fused_1cta", 0.5, se_variant="fused")],
                           None)
    assert ("se_variant", "9.0", "bfloat16") not in decisions


def _ms(flash: dict, tiles: float, mode="bf16"):
    g = f"ms_loss fwd+bwd cuda {mode} B=16384 R=0 D=512"
    rows = [_row(g, "fused" if v == "0" else f"fused_tile{v}", t, ms_loss_path="flash", flash_tile=v)
            for v, t in flash.items()]
    return rows + [_row(g, "fused-tiles", tiles, ms_loss_path="tiles", flash_tile="0")]


PASSED = dict(counts=dict(tests=40, failures=0, errors=0, flash_passed=12), failed=[])


def test_flash_by_default_needs_a_passing_cross_check_and_the_winning_tile():
    rows = _ms({"0": 6.0, "3": 3.0}, tiles=5.0)
    decisions, _ = tt.pick(rows, PASSED)
    assert decisions[("ms_flash_tile", "9.0", "bfloat16")] == "3"
    assert decisions[("ms_loss_path", "9.0", "bfloat16")] == "flash"  # tile 3 beats tiles; tile 0 alone would not
    failed = dict(PASSED, failed=[dict(test="tests.test_ms_loss_flash::test_cuda_flash_matches_cpu[bf16]",
                                       message="x")])
    for tests in (None, failed, dict(PASSED, counts=dict(PASSED["counts"], flash_passed=0))):
        decisions, report = tt.pick(rows, tests)
        assert decisions[("ms_loss_path", "9.0", "bfloat16")] is None
        assert "faster, but" in report[-1]["candidates"][-1]["note"]
    # the 3xTF32 accuracy test does not gate (no table entry turns fp32 without TF32 onto flash)
    exact = dict(PASSED, failed=[dict(test="tests.test_ms_loss_flash::test_cuda_flash_fp32_without_tf32_is_fp32_accurate"
                                           "[cuda]", message="x")])
    decisions, _ = tt.pick(rows, exact)
    assert decisions[("ms_loss_path", "9.0", "bfloat16")] == "flash"


def test_pick_flash_forward_form_apart_from_the_tile_sweep():
    """RECOGFAST_MS_FLASH_FWD's sweep (rows fused_fwdone / fused_fwdtwo at the table's tile) and the tile sweep
    share their groups: each knob is decided on its own rows, a forced form's row is no row of the tile sweep."""
    g = "ms_loss fwd+bwd cuda bf16 B=16384 R=0 D=512"
    rows = [_row(g, "fused", 3.0, ms_loss_path="flash", flash_tile="0", flash_fwd="auto"),
            _row(g, "fused_tile4", 2.8, ms_loss_path="flash", flash_tile="4", flash_fwd="auto"),
            _row(g, "fused_fwdone", 3.0, ms_loss_path="flash", flash_tile="0", flash_fwd="one"),
            _row(g, "fused_fwdtwo", 2.5, ms_loss_path="flash", flash_tile="0", flash_fwd="two"),
            _row(g, "fused-tiles", 5.0, ms_loss_path="tiles", flash_tile="0", flash_fwd="auto")]
    decisions, _ = tt.pick(rows, PASSED)
    assert decisions[("ms_flash_fwd", "9.0", "bfloat16")] == "two"
    # tile 0's row is its headline (3.0), not the two-pass row (2.5): tile 4 wins the tile sweep
    assert decisions[("ms_flash_tile", "9.0", "bfloat16")] == "4"
    assert decisions[("ms_loss_path", "9.0", "bfloat16")] == "flash"


def test_flash_tf32_rows_key_float32():
    decisions, _ = tt.pick(_ms({"0": 2.0}, tiles=4.0, mode="tf32"), PASSED)
    assert decisions == {("ms_flash_tile", "9.0", "float32"): None, ("ms_loss_path", "9.0", "float32"): "flash"}


def test_pick_write_keeps_both_files_in_step(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    lines = [dict(name="t", fullname=f"t{i}", group=r["group"], extra_info={k: v for k, v in r.items() if k != "group"},
                  stats=dict(mean=r["mean_ms"] / 1e3, min=r["mean_ms"] / 1e3))
             for i, r in enumerate(_tiles({"0": (1.0, 0.5), "2": (0.8, 0.4)}))]
    (out / "bench.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    py, header = tmp_path / "tuned.py", tmp_path / "tuned_table.h"
    py.write_text((ROOT / "recogfast/tuned.py").read_text())
    monkeypatch.setattr(tt, "PY_TABLE", py)
    monkeypatch.setattr(tt, "HEADER", header)
    monkeypatch.setattr(tt, "ROOT", tmp_path)
    monkeypatch.setattr(tuned, "TUNED", {("cubs_spatial_tile", "9.0", "bfloat16"): "1",
                                         ("ms_flash_tile", "8.0", "float16"): "2"})
    assert tt.main(["pick", str(out), "--write"]) == 0
    assert "cubs_spatial_tile" in capsys.readouterr().out
    ns: dict = {}
    exec(compile(py.read_text(), str(py), "exec"), ns)
    # the measured key takes the new winner; the unmeasured one stays
    assert ns["TUNED"] == {("cubs_spatial_tile", "9.0", "bfloat16"): "2", ("ms_flash_tile", "8.0", "float16"): "2"}
    assert header.read_text() == tt.render_header(ns["TUNED"])
    assert tt.main(["pick", str(tmp_path / "missing")]) == 2


def test_dispatch_mirror_reads_the_table(monkeypatch):
    monkeypatch.delenv("RECOGFAST_MS_LOSS_PATH", raising=False)
    monkeypatch.setattr(dispatch, "MS_FLASH_BY_DEFAULT", False)
    monkeypatch.setattr(tuned, "TUNED", {("ms_loss_path", "9.0", "bfloat16"): "flash"})
    assert dispatch.ms_loss_path(torch.bfloat16, "cuda", capability=(9, 0)) == "flash"
    assert dispatch.ms_loss_path(torch.float16, "cuda", capability=(9, 0)) == "tiles"  # no entry for fp16
    assert dispatch.ms_loss_path(torch.bfloat16, "cuda", capability=(8, 0)) == "tiles"  # another device
    monkeypatch.setenv("RECOGFAST_MS_LOSS_PATH", "tiles")
    assert dispatch.ms_loss_path(torch.bfloat16, "cuda", capability=(9, 0)) == "tiles"


def test_effective_variable_over_table_over_default(monkeypatch):
    monkeypatch.setattr(tuned, "TUNED", {("cubs_spatial_tile", "9.0", "bfloat16"): "2"})
    monkeypatch.delenv("RECOGFAST_CUBS_SPATIAL_TILE", raising=False)
    assert tuned.effective("cubs_spatial_tile", (9, 0), torch.bfloat16) == "2"
    assert tuned.effective("cubs_spatial_tile", (9, 0), torch.float32) == "0"
    monkeypatch.setenv("RECOGFAST_CUBS_SPATIAL_TILE", "3")
    assert tuned.effective("cubs_spatial_tile", (9, 0), torch.bfloat16) == "3"
    monkeypatch.setenv("RECOGFAST_CUBS_SPATIAL_TILE", "9")
    with pytest.raises(ValueError, match="RECOGFAST_CUBS_SPATIAL_TILE must be 0, 1, 2 or 3, got '9'"):
        tuned.effective("cubs_spatial_tile", (9, 0), torch.bfloat16)


def test_knobs_match_the_cuda_readers():
    """Each knob's variable, allowed values, default and table key as the C++ reader (gpu::env_choice) lists them:
    the tool and the kernels cannot drift apart."""
    import re

    src = "".join(p.read_text() for p in sorted((ROOT / "csrc/ops/cuda").glob("*.cu*")))
    # the one-CTA variants: sample_stage::one_cta_wanted(op, variable, knob, dtype) with its own allowed values
    one_cta = re.search(r'one_cta_wanted\(const char\* op.*?env_choice\(op, var, \{([^}]*)\}, (\d+), tuned\)', src, re.S)
    assert one_cta and tuple(re.findall(r'"([^"]*)"', one_cta.group(1))) == tuned.ONE_CTA and one_cta.group(2) == "0"
    for knob, k in tuned.KNOBS.items():
        if k.allowed == tuned.ONE_CTA:
            assert re.search(rf'one_cta_wanted\("[\w:]+",\s*"{k.env}",\s*"{knob}",\s*dtype\)', src), knob
            assert k.default == "auto", knob
            continue
        m = re.search(rf'"{k.env}",\s*\{{([^}}]*)\}}(?:,\s*(\d+))?(?:,\s*gpu::tuned_value\("(\w+)")?', src)
        assert m, k.env
        assert tuple(re.findall(r'"([^"]*)"', m.group(1))) == k.allowed, knob
        assert k.allowed[int(m.group(2) or 0)] == k.default, knob
        if knob != "ms_loss_path":  # its table entry is read beside the variable (use_flash)
            assert m.group(3) == knob, knob
    assert 'gpu::tuned_value("ms_loss_path", dtype)' in src


def _one_cta(knob, group, split, fused):
    """Rows of a one-CTA sweep: the headline (split) and the variant's (fused_1cta), at each group."""
    return [r for g, a, b in zip(group, split, fused)
            for r in (_row(g, "fused", a, **{knob: "split"}), _row(g, "fused_1cta", b, **{knob: "fused"}))]


SE_GROUPS = ["se_gate fwd+bwd cuda bfloat16 B=256 C=128 28x28", "se_gate fwd+bwd cuda bfloat16 B=256 C=512 7x7"]
B1_GROUPS = ["cubs1 fwd+bwd cuda bfloat16 B=64 C=128 28x28", "cubs1 fwd cuda bfloat16 B=64 C=512 7x7"]
GATED = dict(counts=dict(tests=40, failures=0, errors=0, flash_passed=0, se_variant_passed=3,
                         cubs_channel_variant_passed=5), failed=[])


def test_one_cta_variants_are_picked_against_split_after_their_gpu_tests():
    rows = _one_cta("se_variant", SE_GROUPS, (1.0, 0.3), (0.8, 0.2))
    rows += _one_cta("cubs_channel_variant", B1_GROUPS, (1.0, 0.3), (0.9, 0.31))  # slower at 7x7: keeps split
    decisions, report = tt.pick(rows, GATED)
    assert decisions[("se_variant", "9.0", "bfloat16")] == "fused"
    assert decisions[("cubs_channel_variant", "9.0", "bfloat16")] is None
    # without the variant's own passing tests, or with a failing test of the op, the split path stays
    for tests, why in [(None, "no junit.xml"), (dict(GATED, counts=dict(GATED["counts"], se_variant_passed=0)),
                                                "no se one-CTA CUDA test passed"),
                       (dict(GATED, failed=[dict(test="tests.test_se_gate::test_cuda_x", message="")]),
                        "1 test_se_gate CUDA tests failed")]:
        decisions, report = tt.pick(rows, tests)
        assert decisions[("se_variant", "9.0", "bfloat16")] is None
        se = next(r for r in report if r["knob"] == "se_variant")
        assert se["decision"] == "split" and why in se["candidates"][-1]["note"], se


def test_effective_one_cta_auto_is_the_table_else_split(monkeypatch):
    monkeypatch.delenv("RECOGFAST_CUBS_CHANNEL_VARIANT", raising=False)
    assert tuned.effective("cubs_channel_variant", (9, 0), torch.bfloat16) == "split"
    monkeypatch.setitem(tuned.TUNED, ("cubs_channel_variant", "9.0", "bfloat16"), "fused")
    assert tuned.effective("cubs_channel_variant", (9, 0), torch.bfloat16) == "fused"
    assert tuned.effective("cubs_channel_variant", (8, 0), torch.bfloat16) == "split"
    for env, want in [("auto", "fused"), ("split", "split"), ("fused", "fused")]:
        monkeypatch.setenv("RECOGFAST_CUBS_CHANNEL_VARIANT", env)
        assert tuned.effective("cubs_channel_variant", (9, 0), torch.bfloat16) == want, env
    monkeypatch.setenv("RECOGFAST_SE_VARIANT", "1cta")
    with pytest.raises(ValueError, match="RECOGFAST_SE_VARIANT must be auto, fused or split, got '1cta'"):
        tuned.effective("se_variant", (9, 0), torch.bfloat16)
