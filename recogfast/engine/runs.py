"""Run folders: never overwritten silently, reproducible from their ``config.json``, compared in one
table. Imports no torch: ``recogfast compare`` stays fast."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

# What makes a folder a run (any of them): a new run refuses to write over these.
RUN_FILES = ("last.pt", "best.pt", "summary.json", "log.csv", "config.json")
_OUTPUTS = RUN_FILES + ("loss.png", "metrics.png", "log.csv.tmp", "summary.json.tmp", "config.json.tmp")


def holds_run(folder: str) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in RUN_FILES)


def clear_run(folder: str) -> None:
    """Remove a run's outputs from `folder` (``--overwrite``); other files are left alone."""
    for name in _OUTPUTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            os.remove(path)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(("eval-", "verify-")) and name.endswith(".json") or (
                    name.startswith("roc-") and name.endswith(".png")):  # recogfast eval / verify results
                os.remove(os.path.join(folder, name))
    shutil.rmtree(os.path.join(folder, "tb"), ignore_errors=True)
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name == "report" or name.startswith("report-"):  # recogfast report's folders
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def new_run_folder(base: str) -> str:
    """`base` when it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none."""
    if not holds_run(base):
        return base
    k = 2
    while holds_run(f"{base}-{k}"):
        k += 1
    return f"{base}-{k}"


def read_config(path: str, known: set[str]) -> dict:
    """A saved ``config.json`` as a dict of RunConfig fields; ValueError names the problem."""
    try:
        with open(path) as f:
            values = json.load(f)
    except OSError as err:
        raise ValueError(f"cannot read config file {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ValueError(f"config file {path} is not JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} does not hold a JSON object")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return values


# ------------------------------------------------------------------------------------------ compare
_METRIC_ORDER = ("top1", "top5", "recall@1", "recall@2", "recall@4", "recall@8", "map@r", "map", "map_voc07")


def _metrics(d: dict | None) -> dict:
    return {k: v for k, v in (d or {}).items() if k in _METRIC_ORDER}


def _fmt_params(n) -> str:
    return f"{n / 1e6:.2f}M" if isinstance(n, (int, float)) else "-"


def _fmt_time(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def expand_sweeps(folders: list[str]) -> list[str]:
    """A sweep folder (``recogfast sweep``: sweep.json, trial-NNN/) stands for its trials' run folders
    (those with a summary: finished or pruned)."""
    out = []
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "sweep.json")) and not os.path.exists(os.path.join(folder, "summary.json")):
            out += sorted(os.path.join(folder, name) for name in os.listdir(folder)
                          if name.startswith("trial-") and os.path.isfile(os.path.join(folder, name, "summary.json")))
        else:
            out.append(folder)
    return out


def compare_rows(folders: list[str], raw: bool = False) -> tuple[list[str], list[list]]:
    """Header and one row per run folder (its summary.json): model, params, best val epoch, val and
    test metrics, median training img/s, wall time; sweep trials also their state and parameters.
    ``raw``: numbers as numbers (params as a count, wall time in seconds, metrics unrounded), for CSV.
    ValueError names an unreadable summary."""
    plain = (lambda v: "" if v is None else v)
    fmt, fmt_params, fmt_time, fmt_param = (plain,) * 4 if raw else (_fmt, _fmt_params, _fmt_time, _fmt_param)
    folders = expand_sweeps(folders)
    summaries = []
    for folder in folders:
        path = os.path.join(folder, "summary.json")
        try:
            with open(path) as f:
                summaries.append(json.load(f))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path}: {err}") from None
    keys = [k for k in _METRIC_ORDER if any(k in _metrics(s.get(part)) for s in summaries for part in ("val", "test"))]
    swept = sorted({k for s in summaries for k in ((s.get("sweep") or {}).get("params") or {})})
    header = ["run", "model", "params", "val epoch"] + [f"val {k}" for k in keys] + [f"test {k}" for k in keys]
    header += ["img/s", "wall s" if raw else "wall"] + (["state", "value"] + swept if swept else [])
    rows = []
    for folder, s in zip(folders, summaries):
        cfg = s.get("config") or {}
        val, test = s.get("val") or {}, s.get("test") or {}
        speed = s.get("median_img_per_s")
        row = [folder, str(cfg.get("model", "?")), fmt_params(cfg.get("params")), fmt(val.get("epoch"))]
        row += [fmt(val.get(k)) for k in keys] + [fmt(test.get(k)) for k in keys]
        if raw:
            row += [plain(speed), plain(s.get("seconds"))]
        else:
            row += [f"{speed:.0f}" if isinstance(speed, (int, float)) else "-", fmt_time(s.get("seconds"))]
        if swept:
            sweep = s.get("sweep") or {}
            value = f"{sweep.get('metric', '')} {fmt(sweep.get('value'))}"
            row += [str(sweep.get("state", "-")), value] + [fmt_param((sweep.get("params") or {}).get(k)) for k in swept]
        rows.append(row)
    return header, rows


def _fmt_param(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _fmt(v)


def format_table(header: list[str], rows: list[list[str]], fmt: str = "table") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(header)] + [line(r) for r in rows])
