"""Nsight Compute's raw CSV page (`ncu --import REP --csv --page raw`, tools/gpu_check.sh's ncu step) read into
one record a profiled kernel, and rendered as summary.md's table (tools/gpu_results.py)."""

from __future__ import annotations

import csv
import re


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


NCU_METRICS = {  # column of `ncu --csv --page raw` -> the summary's name
    "gpu__time_duration.sum": "duration", "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_sol_pct",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "mem_sol_pct",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy_pct",
    "sm__maximum_warps_per_active_cycle_pct": "theoretical_occupancy_pct",
    "launch__registers_per_thread": "registers",
    # gpu_check's extra metrics, where this ncu knows them: tensor pipe, shared-memory pipe, bank conflicts
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": "tensor_pct",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed": "smem_pct",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum": "bank_conflicts"}
STALL = re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$")


def _num(v: str):
    try:
        return float(v.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def parse_ncu(text: str) -> list[dict]:
    """One record a profiled kernel from `ncu --csv --page raw` (a header row, a units row, a row a kernel):
    duration, SM and memory speed of light, DRAM throughput, occupancy, registers, the top warp stall reasons
    (cycles a warp spends stalled per issued instruction)."""
    rows = list(csv.reader(text.splitlines()))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        return []
    head, units = rows[start], rows[start + 1] if start + 1 < len(rows) else []
    out = []
    for r in rows[start + 2:]:
        if len(r) != len(head):
            continue
        rec = dict(kernel=r[head.index("Kernel Name")], grid=r[head.index("Grid Size")] if "Grid Size" in head else "",
                   block=r[head.index("Block Size")] if "Block Size" in head else "")
        stalls = {}
        for i, col in enumerate(head):
            if col in NCU_METRICS:
                rec[NCU_METRICS[col]] = _num(r[i])
                if col == "gpu__time_duration.sum" and i < len(units):
                    rec["duration_unit"] = units[i]
            m = STALL.match(col)
            if m and _num(r[i]) is not None:
                stalls[m.group(1)] = _num(r[i])
        rec["stalls"] = sorted(stalls.items(), key=lambda kv: -kv[1])[:3]
        out.append(rec)
    return out


def short_kernel_name(name: str, width: int = 100) -> str:
    """A demangled kernel name without its return type, namespaces and parameter list, so the template arguments
    (tile, operand kind, pass) fit the table: "void recogfast::(anonymous namespace)::k<recogfast::(anonymous
    namespace)::T<64, 64>, c10::BFloat16, 1>(int, float*)" -> "k<T<64, 64>, BFloat16, 1>"."""
    s = name.strip()
    s = s[5:] if s.startswith("void ") else s
    for ns in ("(anonymous namespace)::", "recogfast::", "c10::", "at::"):
        s = s.replace(ns, "")
    if s.endswith(")"):  # the parameter list: the parenthesis that closes last, matched backwards
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    return s if len(s) <= width else s[:width - 3] + "..."


def ncu_table(recs: list[dict]) -> list[str]:
    out = ["", "Nsight Compute (ncu.csv): speed of light, DRAM, occupancy, tensor pipe and shared-memory pipe "
               "utilisation, shared-memory bank conflicts, top warp stalls (cycles per issued instruction)", "",
           "| kernel | grid | block | duration | SM % | memory % | DRAM % | occupancy % (theoretical) | regs | tensor % | "
           "smem % | bank conflicts | top stalls |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        stalls = ", ".join(f"{k} {v:.1f}" for k, v in r.get("stalls", []))
        out.append(f"| {short_kernel_name(r['kernel'])} | {r['grid']} | {r['block']} | {_fmt(r.get('duration'), '.0f')} "
                   f"{r.get('duration_unit', '')} | {_fmt(r.get('sm_sol_pct'), '.1f')} | "
                   f"{_fmt(r.get('mem_sol_pct'), '.1f')} | "
                   f"{_fmt(r.get('dram_pct'), '.1f')} | {_fmt(r.get('occupancy_pct'), '.1f')} "
                   f"({_fmt(r.get('theoretical_occupancy_pct'), '.0f')}) | {_fmt(r.get('registers'), '.0f')} | "
                   f"{_fmt(r.get('tensor_pct'), '.1f')} | {_fmt(r.get('smem_pct'), '.1f')} | "
                   f"{_fmt(r.get('bank_conflicts'), '.0f')} | {stalls} |")
    return out
