"""The tuned table: which kernel variant each knob takes per device and dtype (recogfast/tuned.py), picked from a
GPU sweep's benchmark records and rendered for the kernels as csrc/ops/cuda/tuned_table.h.

    python tools/tuned_table.py pick OUT [--margin 0.03] [--cc 9.0] [--write]
        OUT: a tools/gpu_check.sh output folder (bench.jsonl, junit.xml) or its summary.json. Prints, per knob,
        compute capability and dtype, each variant's time relative to the built-in default (geometric mean over
        the shapes measured, and the worst shape) and the decision; --write merges the decisions into
        recogfast/tuned.py (an entry for each winner; a measured key whose winner is the default loses its entry)
        and renders the header.
    python tools/tuned_table.py render [--check]
        renders the header from recogfast/tuned.py (--check: exit 1 if the file on disk differs).

A variant wins only where it is faster than the default by at least the margin in the geometric mean and slower
by less than the margin at every shape the default was measured at (the sweep's timing noise is a few percent).
The MS loss's path (knob ms_loss_path) becomes "flash" for a dtype only where the flash kernels (at their chosen
tile) beat the tiles path by the margin at every shape and the same run's CUDA tests of the MS loss all passed with
flash tests among them (junit.xml): the default changes only after a GPU cross-check. The one-CTA variants of SE and
CUBS Block 1 (se_variant, cubs_channel_variant) likewise: "fused" against the split path, and only where the op's
CUDA tests all passed with the variant's own among them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from gpu_results import _bench, _junit, best_time  # noqa: E402
from recogfast.tuned import KNOBS, TUNED  # noqa: E402

PY_TABLE = ROOT / "recogfast" / "tuned.py"
HEADER = ROOT / "csrc" / "ops" / "cuda" / "tuned_table.h"
# A benchmark group's dtype word (benchmarks/: "cubs2 fwd cuda bfloat16 B=..", "ms_loss fwd+bwd cuda tf32 B=..")
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "tf32": "float32",
          "float32": "float32", "fp32": "float32", "float64": "float64"}
CPP_DTYPES = {"bfloat16": "kBFloat16", "float16": "kHalf", "float32": "kFloat", "float64": "kDouble"}
# Each swept knob: the benchmark groups that time it and the extra_info key naming the variant a record ran.
SWEPT = {
    "cubs_spatial_tile": (r"^cubs2 (fwd|fwd\+bwd) cuda ", "cubs_spatial_tile", None),
    "cubs_channel_threads": (r"^cubs1 (fwd|fwd\+bwd) cuda ", "cubs_channel_threads", None),
    "ms_flash_tile": (r"^ms_loss fwd\+bwd cuda (bf16|fp16|tf32) ", "flash_tile", "flash"),
    "ms_flash_fwd": (r"^ms_loss fwd\+bwd cuda (bf16|fp16|tf32) ", "flash_fwd", "flash"),
    "se_variant": (r"^se_gate (fwd|fwd\+bwd) cuda ", "se_variant", None),
    "cubs_channel_variant": (r"^cubs1 (fwd|fwd\+bwd) cuda ", "cubs_channel_variant", None),
}
# Knobs swept on the same groups: a row that forced one (its impl suffix) is not a row of the other's sweep.
EXCLUDE = {"ms_flash_tile": "_fwd", "ms_flash_fwd": "_tile", "ms_loss_path": "_fwd"}
# The one-CTA variants: "fused" is measured against the split path (the records name the variant each ran, "auto"
# resolved), and becomes a table entry only where the same run's CUDA tests of the op passed, with the variant's
# own tests among them (junit.xml counts, tools/gpu_results.py GATED_TESTS), as the flash path.
ONE_CTA = {"se_variant": ("se_variant_passed", "test_se_gate"),
           "cubs_channel_variant": ("cubs_channel_variant_passed", "test_cubs")}


def _dtype(group: str) -> str | None:
    words = group.split()
    return DTYPES.get(words[3]) if len(words) > 3 else None


def _times(rows, pattern, key, path, cc, exclude=None):
    """{(cc, dtype): {group: {variant: row}}} of the records matching; a sweep's explicit row (impl other than
    "fused") wins over the headline's row of the same variant; rows whose impl holds `exclude` are left out."""
    out: dict = {}
    for r in rows:
        if not re.search(pattern, r["group"] or "") or not r["impl"].startswith("fused") or r.get(key) is None:
            continue
        if exclude and exclude in r["impl"]:
            continue
        if path and r.get("ms_loss_path") != path:
            continue
        dev, dtype = r.get("device_cc") or cc, _dtype(r["group"])
        if not dev or not dtype:
            continue
        slot = out.setdefault((dev, dtype), {}).setdefault(r["group"], {})
        v = str(r[key])
        if v not in slot or r["impl"] != "fused":
            slot[v] = r
    return out


def _ratio(r, base) -> float | None:
    mine, theirs = best_time(r, base), best_time(base, r)
    return mine[1] / theirs[1] if mine and theirs and theirs[1] else None


def _decide(groups: dict, default: str, candidates, margin: float) -> tuple[str, list[dict]]:
    """The winning value (default when none wins) and a line a candidate: its geomean and worst ratio."""
    lines, best, best_g = [], default, 1.0 - margin
    base_groups = [g for g in groups.values() if default in g]
    for v in candidates:
        if v == default:
            continue
        ratios = [_ratio(g[v], g[default]) if v in g else None for g in base_groups]
        if not ratios or None in ratios:
            lines.append(dict(value=v, shapes=sum(r is not None for r in ratios), note="not measured at every shape"))
            continue
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines.append(dict(value=v, shapes=len(ratios), geomean=gm, worst=max(ratios)))
        if gm <= best_g and max(ratios) <= 1 + margin:
            best, best_g = v, gm
    return best, lines


def tests_gate(tests: dict | None, failing: str, what: str, passed_key: str, variant: str,
               ignore: str | None = None) -> str | None:
    """Why the run's CUDA tests do not allow a variant by default (None: they do): tests whose name holds `failing`
    (and not `ignore`) failed, or none of the variant's own tests (counts[passed_key]) passed."""
    if not tests:
        return "no junit.xml: the CUDA tests did not run"
    failed = [f["test"] for f in tests["failed"] if failing in f["test"] and not (ignore and ignore in f["test"])]
    if failed:
        return f"{len(failed)} {what} CUDA tests failed ({failed[0]})"
    if not tests.get("counts", {}).get(passed_key):
        return f"no {variant} CUDA test passed"
    return None


def flash_gate(tests: dict | None) -> str | None:
    """Why the run does not allow flash by default (None: it does). The 3xTF32 accuracy test (fp32 without TF32)
    does not gate: no table entry turns that mode on (recogfast.dispatch.ms_loss_path), so its result is for the
    person who sets MS_FLASH_BY_DEFAULT to read, not a reason to keep bf16's winner off."""
    return tests_gate(tests, "ms_loss", "MS-loss", "flash_passed", "flash", ignore="fp32_without_tf32")


def pick(rows: list[dict], tests: dict | None, margin: float = 0.03, cc: str | None = None):
    """(decisions {(knob, cc, dtype): value or None (the default)}, report lines)."""
    decisions, report = {}, []
    for knob, (pattern, key, path) in SWEPT.items():
        k = KNOBS[knob]
        base, candidates = ("split", ("fused",)) if knob in ONE_CTA else (k.default, k.allowed)
        for (dev, dtype), groups in sorted(_times(rows, pattern, key, path, cc, EXCLUDE.get(knob)).items()):
            if not any(base in g for g in groups.values()):
                # Nothing to compare against: the headline row ran the table's value, no row the baseline's. No
                # decision, so --write keeps the table's entry (deciding "default" here would drop a winner).
                report.append(dict(knob=knob, cc=dev, dtype=dtype, decision="kept",
                                   candidates=[dict(value=base, note="not measured: the table's entry stays")]))
                continue
            win, lines = _decide(groups, base, candidates, margin)
            if knob in ONE_CTA and win == "fused":
                passed_key, failing = ONE_CTA[knob]
                gate = tests_gate(tests, failing, failing, passed_key, knob.replace("_variant", " one-CTA"))
                if gate:
                    win, lines = base, lines + [dict(value="fused", note=f"faster, but {gate}")]
            decisions[(knob, dev, dtype)] = None if win in (k.default, base) else win
            report.append(dict(knob=knob, cc=dev, dtype=dtype, decision=win, candidates=lines))
    # the MS loss's path: tiles against flash at its chosen tile, on the flash tile sweep's groups
    gate = flash_gate(tests)
    pattern, key, path = SWEPT["ms_flash_tile"]
    flash = _times(rows, pattern, key, path, cc, EXCLUDE["ms_flash_tile"])
    for (dev, dtype), groups in sorted(_times(rows, pattern, "ms_loss_path", None, cc, EXCLUDE["ms_loss_path"]).items()):
        tkey = ("ms_flash_tile", dev, dtype)  # this pick's tile, else (kept) the table's, else the default
        tile = (decisions[tkey] if tkey in decisions else TUNED.get(tkey)) or KNOBS["ms_flash_tile"].default
        flash_rows = flash.get((dev, dtype), {})
        merged = {g: {"tiles": v["tiles"], "flash": flash_rows[g][tile]}
                  for g, v in groups.items() if "tiles" in v and tile in flash_rows.get(g, {})}
        win, lines = _decide(merged, "tiles", ("flash",), margin)
        if win == "flash" and gate:
            win, lines = "tiles", lines + [dict(value="flash", note=f"faster, but {gate}")]
        decisions[("ms_loss_path", dev, dtype)] = "flash" if win == "flash" else None
        report.append(dict(knob="ms_loss_path", cc=dev, dtype=dtype, decision="flash" if win == "flash" else "auto",
                           candidates=lines))
    return decisions, report


def render_header(table: dict) -> str:
    rows = [f'    {{"{knob}", {int(cc.replace(".", ""))}, {CPP_DTYPES[dtype]}, "{value}"}},'
            for (knob, cc, dtype), value in sorted(table.items())]
    return "\n".join([
        "// Generated by tools/tuned_table.py from recogfast/tuned.py's TUNED (the winners of a GPU sweep); do not edit:",
        "// change the table with `python tools/tuned_table.py pick OUT --write`. tests/test_tuned_table.py checks that",
        "// this file matches. Included by common.cuh (TunedEntry, tuned_value): knob, compute capability (10 major +",
        "// minor), dtype, value; the last entry, without a knob, ends the table.",
        "#pragma once",
        "",
        "namespace recogfast {",
        "namespace gpu {",
        "",
        "inline constexpr TunedEntry kTuned[] = {",
        *rows,
        "    {nullptr, 0, kFloat, nullptr},",
        "};",
        "",
        "}  // namespace gpu",
        "}  // namespace recogfast",
        "",
    ])


def render_py(text: str, table: dict) -> str:
    """recogfast/tuned.py's text with TUNED replaced by `table`."""
    body = "".join(f"    {key!r}: {value!r},\n" for key, value in sorted(table.items()))
    new = "TUNED: dict[tuple[str, str, str], str] = {" + (f"\n{body}" if body else "") + "}\n"
    out, n = re.subn(r"^TUNED: dict\[tuple\[str, str, str\], str\] = \{.*?\}\n", lambda _: new, text, count=1,
                     flags=re.S | re.M)
    if n != 1:
        raise SystemExit(f"tuned_table.py: no TUNED table found in {PY_TABLE}")
    return out


def load(src: Path) -> tuple[list[dict], dict | None]:
    """The benchmark rows and the CUDA tests' outcome (with flash_passed) of a gpu_check folder or summary.json."""
    if src.is_file():
        s = json.loads(src.read_text())
        return s.get("bench", []), s.get("tests")
    return _bench(src), _junit(src)


def _fmt(report) -> str:
    out = []
    for r in report:
        cands = "; ".join(f"{c['value']}: " + (f"{c['geomean']:.3f}x (worst {c['worst']:.3f}x, {c['shapes']} shapes)"
                                                if "geomean" in c else c.get("note", "")) for c in r["candidates"])
        out.append(f"{r['knob']:<22} sm {r['cc']:<5} {r['dtype']:<9} -> {r['decision']:<6} {cands}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pick")
    p.add_argument("src", type=Path)
    p.add_argument("--margin", type=float, default=0.03)
    p.add_argument("--cc", help="compute capability of records without device_cc, e.g. 9.0")
    p.add_argument("--write", action="store_true")
    r = sub.add_parser("render")
    r.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    import recogfast.tuned as tuned

    if args.cmd == "render":
        text = render_header(tuned.TUNED)
        if args.check:
            same = HEADER.exists() and HEADER.read_text() == text
            print("tuned_table.h matches recogfast/tuned.py" if same else "tuned_table.h differs: run render")
            return 0 if same else 1
        HEADER.write_text(text)
        return 0
    if not args.src.exists():
        print(f"tuned_table.py: {args.src} does not exist", file=sys.stderr)
        return 2
    rows, tests = load(args.src)
    decisions, report = pick(rows, tests, args.margin, args.cc)
    print(_fmt(report) if report else "no swept variant in these records")
    if args.write:
        table = dict(tuned.TUNED)
        for key, value in decisions.items():
            table.pop(key, None)
            if value is not None:
                table[key] = value
        PY_TABLE.write_text(render_py(PY_TABLE.read_text(), table))
        HEADER.write_text(render_header(table))
        print(f"wrote {len(table)} entries to {PY_TABLE.relative_to(ROOT)} and {HEADER.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
