"""The report written after ``train``, ``demo`` and ``verify``: never fails the command (a note on
stderr instead)."""

from __future__ import annotations

import sys
import time


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
