"""``recogfast export``: a checkpoint's model as ONNX or an AOTInductor package (.pt2)."""

from __future__ import annotations

import argparse
import json
import os

from recogfast.cli.checks import check_checkpoint
from recogfast.cli.errors import UsageError, positive_int


def _batch_arg(text: str):
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {text!r}")
    return int(text)


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX or an AOTInductor package (.pt2)")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("onnx", "pt2"), required=True)
    p.add_argument("--out", default=None, help="output file (default: the checkpoint's path with .onnx / .pt2)")
    p.add_argument("--batch", type=_batch_arg, default=None, help="dynamic (default) or a fixed batch size")
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the checkpoint's")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    """recogfast export CHECKPOINT --format onnx|pt2 [--out FILE] [--batch dynamic|N] (recogfast/export/)."""
    from recogfast.export import check_onnx_installed
    from recogfast.export._checkpoint import export_checkpoint

    check_checkpoint(args.checkpoint)
    if args.format == "onnx":
        try:
            check_onnx_installed()
        except ImportError as err:
            raise UsageError(str(err)) from None
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UsageError(f"output folder not found: {os.path.dirname(os.path.abspath(args.out))}")
    try:
        result = export_checkpoint(args.checkpoint, args.format, out=args.out, batch=args.batch,
                                   image_size=args.image_size)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(json.dumps(result))
    return 0


def register(parser, sub) -> None:
    add_export_parser(sub)
