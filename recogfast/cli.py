"""``recogfast`` (or ``python -m recogfast``): train, evaluate, benchmark, inspect, demo.

    recogfast train classify  --dataset tiny-imagenet --data DIR --model tinynet --epochs 30 --patience 5
    recogfast train retrieval --dataset cars196 --data DIR --model resnet18 --weights resnet18.pth
    recogfast eval --checkpoint runs/x/best.pt [--features]
    recogfast compare runs/cubs-parallel runs/cubs-serial12 runs/cubs-serial21
    recogfast info | recogfast bench | recogfast demo

Bad input (unknown model or dataset, a missing folder, an unreadable checkpoint) prints one line
``recogfast: error: ...`` and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from recogfast.engine.schedule import OPTIMIZERS, SCHEDULES
    from recogfast.engine.tasks import DATASETS

    p.add_argument("--dataset", default="shapes196", help=f"one of: {', '.join(DATASETS)} (default shapes196)")
    p.add_argument("--data", default=None, help="dataset folder (Shapes196: cache folder, optional)")
    p.add_argument("--model", default=None, help="model name (see `recogfast info`); default resnet18")
    p.add_argument("--out", default=None, help="run folder (default runs/<task>-<dataset>-<model>)")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--image-size", type=_positive_int, default=None, help="default 64 (224 for cars196)")
    p.add_argument("--stem", choices=("imagenet", "small"), default=None, help="default small for <= 64 px")
    p.add_argument("--attn-impl", choices=("auto", "fused", "reference"), default="auto")
    p.add_argument("--weights", default=None, help="torchvision/recogfast checkpoint to start from")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=None, help="default 0.1·batch/256 (sgd), 1e-3 (adamw)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--step-size", type=_positive_int, default=30, help="step schedule: epochs per decay")
    p.add_argument("--gamma", type=float, default=0.1, help="step/plateau decay factor")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--crop-scale", type=float, default=0.08,
                   help="smallest area fraction of the random resized crop (default 0.08, as torchvision)")
    p.add_argument("--patience", type=_positive_int, default=None, help="early stopping: epochs without improvement")
    p.add_argument("--min-delta", type=float, default=0.0, help="early stopping: smallest improvement that counts")
    p.add_argument("--plateau-patience", type=int, default=3, help="plateau schedule: epochs before a decay")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when visible)")
    p.add_argument("--backend", choices=("auto", "dali", "torchvision"), default="auto")
    p.add_argument("--workers", dest="num_workers", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=_positive_int, default=None)
    p.add_argument("--embedding-dim", type=_positive_int, default=512)
    p.add_argument("--m-per-class", type=_positive_int, default=4)
    p.add_argument("--mining", choices=("ms", "all", "hardest"), default="ms")
    p.add_argument("--ms-alpha", type=float, default=2.0)
    p.add_argument("--ms-beta", type=float, default=50.0)
    p.add_argument("--ms-base", type=float, default=0.5)
    p.add_argument("--ms-epsilon", type=float, default=0.1)
    p.add_argument("--xbm", dest="xbm_size", type=int, default=0, help="cross-batch memory size (0: off)")
    p.add_argument("--images-per-class", type=_positive_int, default=40, help="Shapes196 only")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from <out>/last.pt (or from the given checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recogfast", description="Fused attention blocks, losses and a training engine.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    train = sub.add_parser("train", help="train a model")
    train.add_argument("task", choices=("classify", "retrieval"))
    _add_train_args(train)
    ev = sub.add_parser("eval", help="evaluate a checkpoint on its test split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", default=None, help="override the checkpoint's dataset")
    ev.add_argument("--data", default=None, help="override the checkpoint's data folder")
    ev.add_argument("--features", action="store_true",
                    help="Recall@K of the pooled features (e.g. a classifier's) on the retrieval split")
    ev.add_argument("--device", default=None)
    ev.add_argument("--batch-size", type=_positive_int, default=256)
    ev.add_argument("--backend", choices=("auto", "dali", "torchvision"), default="auto")
    ev.add_argument("--workers", dest="num_workers", type=int, default=None)
    cmp = sub.add_parser("compare", help="one table of several runs' summaries (e.g. the three CUBS placements)")
    cmp.add_argument("runs", nargs="+", help="run folders (holding summary.json)")
    sub.add_parser("info", help="build, devices, kernels, models")
    bench = sub.add_parser("bench", help="run the benchmark suites and print one table")
    bench.add_argument("filter", nargs="?", default=None, help="pytest -k expression")
    _add_export_parser(sub)
    demo = sub.add_parser("demo", help="the Shapes196 end-to-end demo")
    from recogfast.demo import add_demo_args

    add_demo_args(demo)
    return parser


def _check_dataset_args(dataset: str, data: str | None) -> None:
    from recogfast.engine.tasks import DATASETS

    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if data is not None and dataset != "shapes196" and not os.path.isdir(data):
        raise UsageError(f"data folder not found: {data}")
    if data is None and dataset != "shapes196":
        raise UsageError(f"--data DIR is required for {dataset}")


def _check_device(device: str | None) -> None:
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


def _check_checkpoint(path: str) -> dict:
    from recogfast.engine.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None


def cmd_train(args) -> int:
    from recogfast.engine.tasks import RunConfig, build_trainer
    from recogfast.models import list_models

    model = args.model or "resnet18"
    if model not in list_models():
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    _check_dataset_args(args.dataset, args.data)
    _check_device(args.device)
    if args.task == "retrieval" and args.dataset == "tiny-imagenet":
        raise UsageError("retrieval needs disjoint train/test classes: use --dataset cars196 or shapes196")
    if args.weights is not None:
        from recogfast.models.weights import read_state_dict

        try:
            read_state_dict(args.weights)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
    out = args.out or os.path.join("runs", f"{args.task}-{args.dataset}-{model}")
    if isinstance(args.resume, str):
        _check_checkpoint(args.resume)
    elif args.resume and os.path.exists(os.path.join(out, "last.pt")):
        _check_checkpoint(os.path.join(out, "last.pt"))
    fields = {k: v for k, v in vars(args).items() if k not in ("command", "task", "resume", "quiet", "model", "out")}
    cfg = RunConfig(task=args.task, model=model, out=out, progress=not args.quiet, **fields)
    try:
        trainer = build_trainer(cfg)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    summary = trainer.fit(resume=args.resume)
    print(f"run folder: {out}  best {summary['monitor']} {summary['best_value']}"
          f" at epoch {summary['best_epoch']}" + ("  (stopped early)" if summary["stopped_early"] else ""))
    return 0


def cmd_eval(args) -> int:
    import dataclasses

    import torch

    from recogfast.engine import tasks
    from recogfast.metrics import retrieval_metrics

    _check_device(args.device)
    ckpt = _check_checkpoint(args.checkpoint)
    saved = ckpt.get("config") or {}
    known = {f.name for f in dataclasses.fields(tasks.RunConfig)}
    cfg = tasks.RunConfig(**{k: v for k, v in saved.items() if k in known})
    cfg.dataset = args.dataset or cfg.dataset
    cfg.data = args.data if args.data is not None else cfg.data
    cfg.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.batch_size, cfg.backend, cfg.num_workers, cfg.weights = args.batch_size, args.backend, args.num_workers, None
    cfg.amp = "auto"
    _check_dataset_args(cfg.dataset, cfg.data)
    cfg = cfg.resolved()
    try:
        model = tasks.build_model(cfg, saved.get("num_classes"))
        model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"checkpoint {args.checkpoint} does not match its model: {str(err).splitlines()[0]}") from None
    model = model.to(cfg.device).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.features:
        cfg.task = "retrieval"  # the disjoint-class split, whatever the checkpoint was trained for
    try:
        train_ds, test_ds = tasks.build_datasets(cfg)
        _, test_loader = tasks.build_loaders(dataclasses.replace(cfg, task="classify"), train_ds, test_ds)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    with torch.no_grad(), torch.autocast(torch.device(cfg.device).type, dtype=amp, enabled=amp is not None):
        if cfg.task == "classify":
            result = tasks.classification_eval(test_loader)(model)
        else:
            e, y = tasks.embed(model, test_loader, features=args.features or getattr(model, "embedding_dim", None) is None)
            result = retrieval_metrics(e, y)
    result = {"checkpoint": args.checkpoint, "model": cfg.model, "dataset": cfg.dataset, "task": cfg.task,
              "features": bool(args.features), "test_images": len(test_ds), **result}
    print(json.dumps(result, indent=2))
    return 0


def cmd_compare(args) -> int:
    rows = []
    for folder in args.runs:
        path = os.path.join(folder, "summary.json")
        try:
            with open(path) as f:
                s = json.load(f)
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read {path}: {err}") from None
        final = s.get("final") or {}
        metrics = {k[4:]: v for k, v in final.items() if k.startswith("val_") and k != "val_loss"}
        rows.append((folder, s.get("config", {}).get("model", "?"), s.get("monitor"), s.get("best_value"),
                     s.get("best_epoch"), s.get("epochs_run"), final.get("train_img_per_s"), metrics))
    name_w = max(len(r[0]) for r in rows)
    print(f"{'run':<{name_w}}  {'model':<24} {'best':>14} {'epoch':>6} {'epochs':>6} {'img/s':>8}")
    for folder, model, monitor, best, epoch, epochs, speed, _ in rows:
        shown = f"{monitor} {best:.4f}" if isinstance(best, float) else "-"
        speed = f"{speed:.0f}" if isinstance(speed, float) else "-"
        print(f"{folder:<{name_w}}  {model:<24} {shown:>14} {str(epoch):>6} {str(epochs):>6} {speed:>8}")
    return 0


def cmd_info(args) -> int:
    from recogfast.info import report
    from recogfast.models import list_models, model_info

    print(report())
    print("\nmodels:")
    for name in list_models():
        print(f"  {name:<24} {model_info(name)['description']}")
    return 0


def cmd_bench(args) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, "benchmarks")
    if not os.path.isdir(folder):
        raise UsageError(f"benchmarks folder not found next to the package ({folder}); run from a source checkout")
    cmd = [sys.executable, "-m", "pytest", folder, "--benchmark-only", "-q",
           "--benchmark-columns=min,median,mean,ops,rounds", "--benchmark-sort=fullname"]
    if args.filter:
        cmd += ["-k", args.filter]
    return subprocess.call(cmd, cwd=root)


def _batch_arg(text: str):
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {text!r}")
    return int(text)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX or an AOTInductor package (.pt2)")
    p.add_argument("checkpoint")
    p.add_argument("--format", choices=("onnx", "pt2"), required=True)
    p.add_argument("--out", default=None, help="output file (default: the checkpoint's path with .onnx / .pt2)")
    p.add_argument("--batch", type=_batch_arg, default=None, help="dynamic (default) or a fixed batch size")
    p.add_argument("--image-size", type=_positive_int, default=None, help="default: the checkpoint's")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    """recogfast export CHECKPOINT --format onnx|pt2 [--out FILE] [--batch dynamic|N] (recogfast/export/)."""
    from recogfast.export import check_onnx_installed
    from recogfast.export._checkpoint import export_checkpoint

    _check_checkpoint(args.checkpoint)
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


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    try:
        import recogfast  # noqa: F401  (the extension: its load error is the message)
    except ImportError as err:
        print(f"recogfast: error: {err}", file=sys.stderr)
        return 1
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "bench": cmd_bench,
                   "compare": cmd_compare}.get(args.command, getattr(args, "handler", None))
        if args.command == "demo":
            from recogfast.demo import run_demo

            return run_demo(args)
        return handler(args)
    except UsageError as err:
        print(f"recogfast: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # data problems (missing/corrupt files) anywhere, also mid-training
        from recogfast.data import DataError

        if not isinstance(err, DataError):
            raise
        print(f"recogfast: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recogfast: interrupted (the last finished epoch is in last.pt; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
