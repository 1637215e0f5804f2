"""The bottom of the command line: the user-error type, the exit codes and the argument helpers every
subcommand shares. Imports nothing of recogfast (tests/test_imports.py holds it to that)."""

from __future__ import annotations

import argparse

EPILOG = """exit status: 0 done; 2 bad input (one line `recogfast: error: ...`, nothing trained); 3 training
diverged (a non-finite loss, weight or validation output: the run stops at that step, last.pt/best.pt keep
the last finished epoch; try a lower --lr); 130 interrupted. --debug shows the traceback of an error."""

EXIT_USAGE = 2
EXIT_DIVERGED = 3


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_device(device: str | None) -> None:
    """A --device the machine has, else UsageError (one line)."""
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for, but no CUDA GPU is visible")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu or cuda[:N], got {device!r}")
