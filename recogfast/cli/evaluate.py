"""``recogfast eval``: a checkpoint on its test (or val) split."""

from __future__ import annotations

import json
import sys

from recogfast.cli.checks import check_checkpoint, check_dataset_args
from recogfast.cli.errors import UsageError, check_device, positive_int


def add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint on its test (or val) split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", choices=("test", "val"), default="test",
                    help="test (default) or the run's validation split")
    ev.add_argument("--baselines", action="store_true", help="also score raw pixels and the untrained network")
    ev.add_argument("--dataset", default=None, help="override the checkpoint's dataset")
    ev.add_argument("--data", default=None, help="override the checkpoint's data folder")
    ev.add_argument("--features", action="store_true",
                    help="Recall@K of the pooled features (e.g. a classifier's) on the retrieval split")
    ev.add_argument("--device", default=None)
    ev.add_argument("--batch-size", type=positive_int, default=256)
    ev.add_argument("--backend", choices=("auto", "dali", "torchvision"), default="auto")
    ev.add_argument("--workers", dest="num_workers", type=int, default=None)
    ev.set_defaults(handler=cmd_eval)


def _round(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    return obj


def cmd_eval(args) -> int:
    from recogfast.engine.evaluate import evaluate_checkpoint

    check_device(args.device)
    ckpt = check_checkpoint(args.checkpoint)
    saved = ckpt.get("config") or {}
    dataset = args.dataset or saved.get("dataset", "shapes196")
    check_dataset_args(dataset, args.data if args.data is not None else saved.get("data"))
    try:
        result, path = evaluate_checkpoint(ckpt, args.checkpoint, split=args.split, features=args.features,
                                           baselines=args.baselines, dataset=args.dataset, data=args.data,
                                           device=args.device, batch_size=args.batch_size, backend=args.backend,
                                           num_workers=args.num_workers)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    print(json.dumps(_round(result), indent=2))
    print(f"written to {path}", file=sys.stderr)
    return 0


def register(parser, sub) -> None:
    add_eval_parser(sub)
