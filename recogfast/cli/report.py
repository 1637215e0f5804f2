"""``recogfast report RUN``: the argument parser and the command (the work: recogfast.report)."""

from __future__ import annotations

import os
import time

from recogfast.cli.errors import UsageError


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="pictures of a run: RUN/report/index.html (other checkpoints / splits: report-test/, report-last/...)")
    p.add_argument("run", help="run folder (holding summary.json and best.pt / last.pt)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--split", choices=("val", "test"), default=None,
                   help="val (default when the run has one) or test (read only when asked)")
    p.add_argument("--n", type=int, default=16, help="retrieval queries in the grid (default 16)")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    if args.n < 1:
        raise UsageError(f"--n must be a positive integer, got {args.n}")
    if not os.path.isdir(args.run):
        raise UsageError(f"run folder {args.run} does not exist")
    try:
        from recogfast.report import make_report

        t0 = time.perf_counter()
        path = make_report(args.run, checkpoint=args.checkpoint, split=args.split, n=args.n, device=args.device)
    except ImportError as err:
        raise UsageError(f"recogfast report needs matplotlib and Pillow (pip install recogfast[viz]): {err}") from None
    except (ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    print(f"report: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def register(parser, sub) -> None:
    add_report_parser(sub)
