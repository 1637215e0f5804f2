"""``recogfast verify``: the argument parser and the command (the work: recogfast.tasks.verify). Imports
nothing heavy at parse time, so ``recogfast --help`` stays fast."""

from __future__ import annotations

import os

from recogfast.cli.errors import UsageError, check_device


def add_verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="pair verification with a checkpoint: ROC AUC, EER, TAR@FAR, accuracy")
    p.add_argument("run", help="run folder (its best.pt) or a checkpoint file")
    p.add_argument("--pairs", default=None,
                   help="test pair list: 'PATH_A PATH_B 0|1' a line, or LFW's pairs.txt (default: seeded balanced "
                        "pairs of the test split)")
    p.add_argument("--val-pairs", default=None,
                   help="pair list that chooses the threshold (default: pairs of the run's val split)")
    p.add_argument("--root", default=None, help="folder of relative paths in the pair lists (default: the list's)")
    p.add_argument("--num-pairs", type=int, default=6000, help="drawn pairs per split (default 6000, LFW's size)")
    p.add_argument("--folds", type=int, default=None,
                   help="also LFW's k-fold accuracy on the test pairs (10: LFW; a list's folds are consecutive blocks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn pairs")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", dest="num_workers", type=int, default=None)
    p.add_argument("--backend", choices=("auto", "dali", "torchvision"), default="auto")
    p.set_defaults(handler=cmd_verify)


def _line(m: dict) -> str:
    keys = ["auc", "eer", "tar@far=0.001", "tar@far=0.01"] + (["accuracy"] if "accuracy" in m else [])
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys)


def cmd_verify(args) -> int:
    from recogfast.data.errors import DataError
    from recogfast.tasks.verify import run_verify

    path = os.path.join(args.run, "best.pt") if os.path.isdir(args.run) else args.run
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    if args.num_pairs < 2:
        raise UsageError(f"--num-pairs: expected an integer >= 2, got {args.num_pairs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    if args.folds is not None and args.folds < 2:
        raise UsageError(f"--folds: expected an integer >= 2, got {args.folds}")
    check_device(args.device)
    try:
        result, out = run_verify(path, pairs=args.pairs, val_pairs=args.val_pairs, root=args.root,
                                 num_pairs=args.num_pairs, folds=args.folds, seed=args.seed, device=args.device,
                                 batch_size=args.batch_size, num_workers=args.num_workers, backend=args.backend)
    except (ValueError, OSError, DataError, FloatingPointError) as err:  # NaN embeddings: FloatingPointError
        raise UsageError(str(err)) from None
    test = result["test"]
    if result.get("note"):
        print(f"note: {result['note']}")
    if "val" in result:
        print(f"val ({result['val']['source']}): {_line(result['val'])}; threshold {test['threshold']:.4f}")
    print(f"VERIFY {result['name']} ({test['source']}; {result['embedding']} of {os.path.basename(path)}, epoch "
          f"{result['epoch']}): {_line(test)}" + ("" if "accuracy" in test else
                                                  "  (no val pairs: accuracy needs --val-pairs or --folds)"))
    if "kfold" in test:
        k = test["kfold"]
        print(f"{k['folds']}-fold accuracy {k['accuracy']:.4f} ± {k['accuracy_std']:.4f}")
    print(f"written: {out}" + (f", {result['roc_png']}" if result.get("roc_png") else ""))
    from recogfast.report.after import add_verification_after

    add_verification_after(os.path.dirname(os.path.abspath(path)))
    return 0


def register(parser, sub) -> None:
    add_verify_parser(sub)
