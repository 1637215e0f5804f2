"""The results of tools/gpu_check.sh: its summary, and the GPU tables of benchmarks/RESULTS.md.

    python tools/gpu_results.py summarize OUT --mode gpu --budget 540 --seconds 412
        reads OUT/logs/steps.tsv, OUT/junit.xml, OUT/crosscheck.json, OUT/bench.jsonl (one JSON line a finished
        benchmark; else OUT/bench.json), OUT/profile.json and OUT/ncu.csv and writes OUT/summary.json and
        OUT/summary.md (exit 1 when a step failed or a test / comparison failed)
    python tools/gpu_results.py results-md SUMMARY.json [--results benchmarks/RESULTS.md] [--command ...]
        renders the GPU tables from a summary into RESULTS.md between the gpu-results markers
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from gpu_ncu import ncu_table, parse_ncu  # noqa: F401  (tools/: beside this file)

BEGIN, END = "<!-- gpu-results:begin -->", "<!-- gpu-results:end -->"
# The goals issues 3, 4, 7 and 25 set, checked from the benchmark records. GPU times: the fairest timing a
# record has (CUDA-graph replay, else CUDA events back to back, else the synced wall clock), named beside it.
SE_FLOOR_RATIO = {56: 1.3, 28: 1.3, 14: 2.0, 7: 2.0}
CUBS2_MS = 0.8
TRAIN_RATIO = {64: 0.8, 224: 0.75}
TRAIN_GRAPH_RATIO = 0.85
PLACEMENT_IMPLS = {"fused": "serial12", "fused_parallel": "parallel", "fused_serial21": "serial21"}
# benchmarks/test_train_graphs_bench.py: the engine's step under `recogfast train --cuda-graphs`
GRAPHS_IMPLS = {f"{impl}_graphs": placement for impl, placement in PLACEMENT_IMPLS.items()}
COMPILED_SPEEDUP = 1.5
MS_SPEEDUP, MS_EXTRA_MB, MS_BF16_MS = 20.0, 64.0, 5.0
TIMINGS = (("graph_ms", "graph"), ("events_ms", "events"), ("mean_ms", "wall"))


def _steps(out: Path) -> list[dict]:
    path = out / "logs" / "steps.tsv"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, seconds, note = (line.split("\t") + ["", "", "", ""])[:4]
            rows.append(dict(step=name, status=status, seconds=int(seconds or 0), note=note))
    return rows


# The CUDA tests whose passing lets tools/tuned_table.py make a variant the default: counts key -> the words a passed
# test's name holds (the flash MS-loss kernels; the one-CTA SE and CUBS Block 1 variants).
GATED_TESTS = {"flash_passed": ("flash", "cuda"),
               "se_variant_passed": ("test_se_gate", "cuda", "variant"),
               "cubs_channel_variant_passed": ("test_cubs", "cuda", "one_cta")}


def _junit(out: Path) -> dict | None:
    path = out / "junit.xml"
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    counts = dict(tests=0, failures=0, errors=0, skipped=0, **{k: 0 for k in GATED_TESTS})
    failed = []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                counts["failures" if kind == "failure" else "errors"] += 1
                failed.append(dict(test=name, message=(el.get("message") or "")[:300]))
        if case.find("skipped") is not None:
            counts["skipped"] += 1
        elif case.find("failure") is None and case.find("error") is None:
            for key, words in GATED_TESTS.items():
                counts[key] += all(w in name for w in words)
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return dict(counts=counts, failed=failed)


def _crosscheck(out: Path) -> dict | None:
    path = out / "crosscheck.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    bad = [r for r in data["records"] if not r["ok"]]
    return dict(summary=data["summary"], failed=bad[:50])


def _bench_row(b: dict) -> dict:
    info, stats = b.get("extra_info", {}), b.get("stats", {})
    row = dict(group=b.get("group") or b.get("name"), impl=info.get("impl", ""), name=b.get("name"),
               mean_ms=stats.get("mean", 0) * 1e3, min_ms=stats.get("min", 0) * 1e3)
    for k in ("events_ms", "graph_ms", "graph_note", "first_call_s", "floor_ms", "floor", "ratio_to_floor",
              "images_per_s", "extra_peak_mb", "peak_memory_gib", "device_cc", "cubs_spatial_tile",
              "cubs_channel_threads", "flash_tile", "ms_loss_path", "se_variant", "cubs_channel_variant"):
        row[k] = info.get(k)
    return row


def _bench_key(b: dict) -> tuple[str, str]:
    """A record's identity: its test and its impl label (a kernel variant run under an environment variable, such
    as CUBS Block 2's fused_tileN, is the same test under another label and must not replace the default's row)."""
    return b.get("fullname") or b.get("name"), b.get("extra_info", {}).get("impl", "")


def _bench(out: Path) -> list[dict]:
    """The benchmark records: bench.jsonl (a line each, appended as each finished; the last of a test and impl
    wins), else pytest-benchmark's bench.json."""
    records: dict[tuple[str, str], dict] = {}
    jsonl = out / "bench.jsonl"
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            try:
                b = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill at the deadline
                continue
            records[_bench_key(b)] = b
    elif (out / "bench.json").exists():
        records = {_bench_key(b): b for b in json.loads((out / "bench.json").read_text()).get("benchmarks", [])}
    return [_bench_row(b) for b in records.values()]


def best_time(r: dict, other: dict | None = None) -> tuple[str, float] | None:
    """(timing, ms): the fairest timing r has (and `other` too, when given)."""
    for key, tag in TIMINGS:
        if r.get(key) and (other is None or other.get(key)):
            return tag, r[key]
    return None


def _find(rows, pattern: str, impl: str):
    for r in rows:
        if re.search(pattern, r["group"]) and r["impl"] == impl:
            return r
    return None


def _ratio_goal(goal, fast, slow, bound, timing=None):
    """slow / fast >= bound, on the timing both share (or the one named)."""
    if not (fast and slow):
        return dict(goal=goal, measured="not measured", met=None)
    if timing:
        key = dict((t, k) for k, t in TIMINGS)[timing]
        if not (fast.get(key) and slow.get(key)):
            return dict(goal=goal, measured="not measured", met=None)
        tag, f, sl = timing, fast[key], slow[key]
    else:
        tag, f = best_time(fast, slow)
        sl = best_time(slow, fast)[1]
    return dict(goal=goal, measured=f"{sl / f:.2f}x ({tag})", met=sl / f >= bound)


def goals(rows: list[dict]) -> list[dict]:
    """Each goal: what, measured, bound, met (None when not measured)."""
    out = []
    for r in rows:
        m = re.match(r"^se_gate fwd\+bwd cuda .* (\d+)x\d+$", r["group"])
        if m and r["impl"] == "fused" and r.get("floor_ms"):
            tag, ms = best_time(r)
            bound = SE_FLOOR_RATIO.get(int(m.group(1)), 2.0)
            out.append(dict(goal=f"SE fwd+bwd <= {bound}x its DRAM floor ({r['group'][21:]})",
                            measured=f"{ms / r['floor_ms']:.2f}x ({tag})", met=ms / r["floor_ms"] <= bound))
    r = _find(rows, r"^cubs2 fwd\+bwd cuda .* B=64 C=64 56x56", "fused")
    t = best_time(r) if r else None
    out.append(dict(goal=f"CUBS Block 2 fwd+bwd at 56x56x64, B=64 <= {CUBS2_MS} ms",
                    measured=f"{t[1]:.3f} ms ({t[0]})" if t else "not measured", met=(t[1] <= CUBS2_MS) if t else None))
    for size, bound in TRAIN_RATIO.items():
        p = _find(rows, rf"^resnet18 train step cuda .* {size}x{size}", "plain")
        for impl, placement in PLACEMENT_IMPLS.items():
            f = _find(rows, rf"^resnet18 train step cuda .* {size}x{size}", impl)
            if f is None and impl != "fused":
                continue
            out.append(_ratio_goal(f"CUBS-ResNet-18 ({placement}) throughput >= {bound}x plain ResNet-18 at "
                                   f"{size}x{size}", f, p, bound, timing="wall"))
            out.append(_ratio_goal(f"same ({placement}), both captured in a CUDA graph, >= {TRAIN_GRAPH_RATIO}x at "
                                   f"{size}x{size}", f, p, TRAIN_GRAPH_RATIO, timing="graph"))
    for size in TRAIN_RATIO:  # the engine's captured step: goals only where the run measured them
        p = _find(rows, rf"^engine train step cuda .* {size}x{size}", "plain_graphs")
        for impl, placement in GRAPHS_IMPLS.items():
            f = _find(rows, rf"^engine train step cuda .* {size}x{size}", impl)
            if f is not None:
                out.append(_ratio_goal(f"recogfast train --cuda-graphs: CUBS-ResNet-18 ({placement}) throughput >= "
                                       f"{TRAIN_GRAPH_RATIO}x plain ResNet-18, both captured, at {size}x{size}", f, p,
                                       TRAIN_GRAPH_RATIO, timing="events"))
    for r in sorted(rows, key=lambda r: (r["group"], r["impl"])):
        if r["impl"].startswith("compiled") and " cuda " in r["group"]:
            f = next((x for x in rows if x["group"] == r["group"] and x["impl"] == "fused"), None)
            out.append(_ratio_goal(f"fused >= {COMPILED_SPEEDUP}x faster than torch.compile ({r['impl']}): {r['group']}",
                                   f, r, COMPILED_SPEEDUP))
    f = _find(rows, r"^ms_loss fwd\+bwd cuda fp32 B=16384 R=0", "fused")
    p = _find(rows, r"^ms_loss fwd\+bwd cuda fp32 B=16384 R=0", "pml")
    sp = p["mean_ms"] / f["mean_ms"] if f and p else None
    out.append(dict(goal=f"MS loss B=16384 fp32 >= {MS_SPEEDUP}x faster than pytorch-metric-learning",
                    measured=f"{sp:.1f}x" if sp else "not measured (PML absent?)", met=(sp >= MS_SPEEDUP) if sp else None))
    extra = f and f.get("extra_peak_mb")
    out.append(dict(goal=f"MS loss B=16384 fp32 extra peak memory <= {MS_EXTRA_MB} MB",
                    measured=f"{extra:.1f} MB" if extra is not None and f else "not measured",
                    met=(extra <= MS_EXTRA_MB) if extra is not None and f else None))
    b = _find(rows, r"^ms_loss fwd\+bwd cuda bf16 B=16384 R=0", "fused")
    out.append(dict(goal=f"MS loss B=16384 bf16 fwd+bwd <= {MS_BF16_MS} ms",
                    measured=f"{b['mean_ms']:.3f} ms" if b else "not measured", met=(b["mean_ms"] <= MS_BF16_MS) if b else None))
    return out


def _profile(out: Path) -> dict:
    """tools/gpu_profile.py's profile.json: per case eager / graph ms, launches, kernels, ops, its top rows."""
    path = out / "profile.json"
    if not path.exists():
        return dict(lines=[], cases=[])
    data = json.loads(path.read_text())
    lines = list(data.get("finite_check", []))
    for c in data.get("cases", []):
        graph = "-" if c.get("graph_ms") is None else f"{c['graph_ms']:.3f}"
        lines.append(f"{c['case']} [{c['impl']}]: eager {c['eager_ms']:.3f} ms, CUDA-graph replay {graph} ms, "
                     f"{c.get('launches', 0)} launches, {c.get('kernels', 0)} GPU activities, {c.get('ops', 0)} ops a "
                     f"fwd+bwd{' (' + c['graph_note'] + ')' if c.get('graph_note') else ''}")
    return dict(lines=lines, cases=data.get("cases", []), device=data.get("device", ""))


def _ncu(out: Path) -> list[dict]:
    path = out / "ncu.csv"
    return parse_ncu(path.read_text(errors="replace")) if path.exists() else []


def _safe(load, out: Path, empty):
    """A reader that fails (a file cut at the deadline, a format not foreseen) leaves its part empty and says
    why on stderr: the summary is always written."""
    try:
        return load(out)
    except Exception as exc:  # noqa: BLE001
        print(f"gpu_results: {load.__name__} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return empty


def _env(out: Path) -> str:
    path = out / "logs" / "env.log"
    return path.read_text()[:4000] if path.exists() else ""


def summarize(out: Path, mode: str, budget: int, seconds: int) -> int:
    steps = _steps(out)
    junit = _safe(_junit, out, None)
    cross = _safe(_crosscheck, out, None)
    bench = _safe(_bench, out, [])
    summary = dict(date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), mode=mode, budget_s=budget,
                   seconds=seconds, steps=steps, tests=junit, crosscheck=cross, bench=bench, goals=goals(bench),
                   profile=_safe(_profile, out, {}), ncu=_safe(_ncu, out, []), env=_env(out))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(render_md(summary, full=True))
    print(render_md(summary, full=False))
    bad = any(s["status"] == "failed" for s in steps)
    bad |= bool(junit and (junit["counts"]["failures"] or junit["counts"]["errors"]))
    bad |= bool(cross and cross["summary"]["failed"])
    return 1 if bad else 0


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def bench_tables(rows: list[dict]) -> str:
    """One table a benchmark group: each implementation's three times (wall: synced wall clock, events: CUDA
    events back to back, graph: CUDA-graph replay), its ratio to the fused one on the fairest timing both have
    (g/e/w), that timing's ratio to the floor, and the first call's seconds (a torch.compile peer's compile)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    lines = ["| group | impl | wall ms | events ms | graph ms | x fused | floor ms | x floor | first call s | other |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in sorted(groups):
        rs = sorted(groups[g], key=lambda r: (r["impl"] != "fused", r["impl"]))
        fused = next((r for r in rs if r["impl"] == "fused"), None)
        for r in rs:
            other = []
            if r.get("images_per_s"):
                other.append(f"{r['images_per_s']:,.0f} img/s")
            if r.get("extra_peak_mb") is not None:
                other.append(f"extra {r['extra_peak_mb']:.1f} MB")
            if r.get("peak_memory_gib") is not None:
                other.append(f"peak {r['peak_memory_gib']:.2f} GiB")
            if r.get("graph_note"):
                other.append(f"graph: {r['graph_note'][:90]}")
            mine, theirs = (best_time(r, fused), best_time(fused, r)) if fused else (None, None)
            rel = f"{mine[1] / theirs[1]:.2f} ({mine[0][0]})" if mine and theirs and theirs[1] else "-"
            best = best_time(r)
            xfloor = _fmt(best[1] / r["floor_ms"], ".2f") if best and r.get("floor_ms") else "-"
            first = _fmt(r.get("first_call_s"), ".1f") if r["impl"].startswith("compiled") else "-"
            lines.append(f"| {g} | {r['impl']} | {r['mean_ms']:.3f} | {_fmt(r.get('events_ms'))} | "
                         f"{_fmt(r.get('graph_ms'))} | {rel} | {_fmt(r.get('floor_ms'))} | {xfloor} | {first} | "
                         f"{', '.join(other)} |")
    return "\n".join(lines)


def profile_tables(profile: dict, rows_per_case: int = 8) -> list[str]:
    """Each profiled case's top rows (name, calls, GPU µs, CPU µs) for one forward+backward."""
    out = []
    for c in profile.get("cases", []):
        out += ["", f"{c['case']} [{c['impl']}]: {c.get('launches', 0)} launches, {c.get('kernels', 0)} GPU "
                    f"activities, {c.get('ops', 0)} ops a fwd+bwd", "",
                "| name | calls | GPU µs | CPU µs | self CPU µs |", "|---|---|---|---|---|"]
        out += [f"| {r['name'][:90]} | {r['calls']} | {r['gpu_us']:.1f} | {r['cpu_us']:.1f} | {r['self_cpu_us']:.1f} |"
                for r in c.get("rows", [])[:rows_per_case]]
    return out


def render_md(s: dict, full: bool) -> str:
    out = [f"# gpu_check {s['mode']} — {s['date']} — {s['seconds']} s of a {s['budget_s']} s budget", "",
           "| step | status | s | note |", "|---|---|---|---|"]
    out += [f"| {r['step']} | {r['status']} | {r['seconds']} | {r['note']} |" for r in s["steps"]]
    if s["tests"]:
        c = s["tests"]["counts"]
        out += ["", f"Tests: {c['passed']} passed, {c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped"]
        out += [f"- FAILED {f['test']}: {' '.join(f['message'].split())[:200]}" for f in s["tests"]["failed"][:30]]
    if s["crosscheck"]:
        cs = s["crosscheck"]["summary"]
        out += ["", f"Cross-check ({cs['device']}): {cs['comparisons']} comparisons, {cs['failed']} failed, "
                    f"worst error/bound {cs['worst']:.3f}"]
        out += [f"- {r['case']} {r['dtype']} output {r['output']}: error {r.get('err_device', 0):.3g} vs the CPU "
                f"kernel's {r.get('err_cpu', 0):.3g} (bound {r.get('bound', 0):.3g}, scale {r.get('scale', 0):.3g})"
                + (f" {r['error']}" if r.get("error") else "") for r in s["crosscheck"]["failed"][:20]]
    if s["goals"] and s["bench"]:
        out += ["", "| goal | measured | met |", "|---|---|---|"]
        out += [f"| {g['goal']} | {g['measured']} | {'-' if g['met'] is None else 'yes' if g['met'] else 'NO'} |"
                for g in s["goals"]]
    profile = s.get("profile") or {}
    lines = profile if isinstance(profile, list) else profile.get("lines", [])  # a list: summaries before issue 25
    if lines:
        out += ["", "Profile (tools/gpu_profile.py, per forward+backward call):"] + [f"- {p}" for p in lines]
    if s.get("ncu"):
        out += ncu_table(s["ncu"])
    if full and s["bench"]:
        out += ["", bench_tables(s["bench"])]
    if full and isinstance(profile, dict):
        out += profile_tables(profile)
    if full and s.get("env"):
        out += ["", "```", s["env"].strip(), "```"]
    return "\n".join(out) + "\n"


def results_md(summary_path: Path, results: Path, command: str) -> None:
    s = json.loads(summary_path.read_text())
    device = next((line for line in s.get("env", "").splitlines() if line.startswith("torch ")), "unknown device")
    block = [BEGIN, f"### {s['date'][:10]}: `{command}` ({s['seconds']} s)", "", f"Device and versions: {device}", ""]
    block += render_md(dict(s, env=""), full=False).splitlines()[2:]
    block += ["", bench_tables(s["bench"]) if s["bench"] else "(no benchmark ran)", END]
    text = results.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + "\n".join(block) + text[text.index(END) + len(END):]
    else:
        text = text.replace("## GPU\n", "## GPU\n\n" + "\n".join(block) + "\n", 1)
    results.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("summarize")
    a.add_argument("out", type=Path)
    a.add_argument("--mode", default="gpu")
    a.add_argument("--budget", type=int, default=0)
    a.add_argument("--seconds", type=int, default=0)
    b = sub.add_parser("results-md")
    b.add_argument("summary", type=Path)
    b.add_argument("--results", type=Path, default=Path("benchmarks/RESULTS.md"))
    b.add_argument("--command", default="BUDGET=540 tools/gpu_check.sh $OUT")
    args = ap.parse_args(argv)
    if args.cmd == "summarize":
        return summarize(args.out, args.mode, args.budget, args.seconds)
    results_md(args.summary, args.results, args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
