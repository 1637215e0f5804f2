"""``recogfast report RUN``: the argument parser and the command; also called at the end of train / demo."""

from __future__ import annotations

import os
import sys
import time


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
    from recogfast.cli import UsageError

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


def add_verification_after(run: str) -> str | None:
    """After ``recogfast verify``: its ROC and numbers into the run's report page, when there is one;
    never fails the command (a note on stderr instead)."""
    try:
        from recogfast.report.tasks import update_page

        path = update_page(run)
        if path:
            print(f"report: {path} (verification section)", flush=True)
        return path
    except Exception as err:  # noqa: BLE001 - the verification result is written already
        print(f"note: the report page was not updated: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        return None


def report_after_training(run: str, split: str | None = None) -> str | None:
    """The report at the end of ``train`` / ``demo``; never fails the run (a note on stderr instead)."""
    try:
        from recogfast.report import make_report

        t0 = time.perf_counter()
        path = make_report(run, split=split)
        print(f"report: {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
        return str(path)
    except Exception as err:  # noqa: BLE001 - the run itself has finished and is saved
        print(f"note: no report for {run}: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        return None
