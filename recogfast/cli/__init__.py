"""``recogfast`` (or ``python -m recogfast``): train, evaluate, benchmark, inspect, demo.

    recogfast train classify  --dataset tiny-imagenet --data DIR --model tinynet --epochs 30 --patience 5
    recogfast train classify  --dataset cars196 --data DIR --protocol retrieval --out runs/cars-cls
    recogfast train retrieval --dataset cars196 --data DIR --model resnet18 --weights runs/cars-cls/best.pt
    recogfast train multilabel --dataset voc2007 --data VOCdevkit/VOC2007 --model resnet18 --weights imagenet
    recogfast verify runs/cars-ms [--pairs pairs.txt] [--folds 10]          # ROC AUC, EER, TAR@FAR, accuracy
    recogfast train classify --config runs/x/config.json --out runs/y      # a saved run again (flags override)
    recogfast eval --checkpoint runs/x/best.pt [--split val|test] [--features] [--baselines]
    recogfast compare runs/cubs-parallel runs/cubs-serial12 runs/cubs-serial21 [--format table|md|csv]
    recogfast sweep examples/sweep-shapes.yaml [--trials N] [--storage URL]   # an Optuna sweep (README: Sweeps)
    recogfast info | recogfast bench | recogfast demo

Every run has train / val / test splits: only val steers training (best.pt, --patience, the plateau
schedule); the chosen checkpoint is scored on test once, at the end (``--val-fraction 0``: no val, the
last epoch is the result). Bad input (unknown model or dataset, a missing folder, an unreadable
checkpoint, a training split smaller than one batch, a run folder that already holds a run) prints one
line ``recogfast: error: ...`` and exits with status 2, without a traceback.
"""


from __future__ import annotations

import sys

from recogfast.cli.errors import EXIT_DIVERGED, EXIT_USAGE, EPILOG, UsageError, _Parser, one_line

__all__ = ["main", "build_parser", "UsageError", "EXIT_USAGE", "EXIT_DIVERGED"]

# One module per subcommand (each: add_<name>_parser(sub) and its cmd_<name>), registered in this order.
SUBCOMMANDS = ("train", "evaluate", "compare", "info", "export", "predict", "search", "report", "sweep", "verify", "demo")


def build_parser():
    import argparse
    import importlib

    parser = _Parser(prog="recogfast", description="Fused attention blocks, losses and a training engine.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"recogfast.cli.{name}")
        register = getattr(module, "register")
        register(parser, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        import recogfast  # noqa: F401  (the extension: its load error is the message)
    except ImportError as err:
        print(f"recogfast: error: {err}", file=sys.stderr)
        return 1
    parser = build_parser()
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.command == "train":
            from recogfast.cli.train import resolve_train_args

            args = resolve_train_args(parser, argv, args)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return args.handler(args)
    except UsageError as err:
        if debug:
            raise
        print(f"recogfast: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # data problems (missing/corrupt files) anywhere, also mid-training
        from recogfast.data import DataError
        from recogfast.engine.trainer import Diverged

        if debug or not isinstance(err, (DataError, Diverged)):
            raise
        print(f"recogfast: error: {one_line(err)}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(err, Diverged) else EXIT_USAGE
    except KeyboardInterrupt:
        print("recogfast: interrupted (the last finished epoch is in last.pt; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
