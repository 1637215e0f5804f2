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

import argparse
import json
import os
import subprocess
import sys

from recogfast.cli_train import add_train_args, with_config, with_run_folder

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recogfast", description="Fused attention blocks, losses and a training engine.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    from recogfast.cli_train import HelpFormatter

    train = sub.add_parser("train", help="train a model", epilog=EPILOG, formatter_class=HelpFormatter)
    parser.train_parser = train
    train.add_argument("task", choices=("classify", "retrieval", "multilabel"))
    add_train_args(train)
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
    ev.add_argument("--batch-size", type=_positive_int, default=256)
    ev.add_argument("--backend", choices=("auto", "dali", "torchvision"), default="auto")
    ev.add_argument("--workers", dest="num_workers", type=int, default=None)
    cmp = sub.add_parser("compare", help="one table of several runs' summaries (e.g. the three CUBS placements)")
    cmp.add_argument("runs", nargs="+", help="run folders (holding summary.json), or sweep folders (their trials)")
    cmp.add_argument("--format", choices=("table", "md", "csv"), default="table")
    sub.add_parser("info", help="build, devices, kernels, models")
    bench = sub.add_parser("bench", help="run the benchmark suites and print one table")
    bench.add_argument("filter", nargs="?", default=None, help="pytest -k expression")
    _add_export_parser(sub)
    from recogfast.predict import add_predict_parser

    add_predict_parser(sub)
    from recogfast.search import add_search_parser

    add_search_parser(sub)
    from recogfast.report.cli import add_report_parser

    add_report_parser(sub)
    from recogfast.engine.sweep import add_sweep_parser

    add_sweep_parser(sub)
    from recogfast.engine.verify_cli import add_verify_parser

    add_verify_parser(sub)
    demo = sub.add_parser("demo", help="the Shapes196 end-to-end demo")
    from recogfast.demo import add_demo_args

    add_demo_args(demo)
    return parser


def _check_dataset_args(dataset: str, data: str | None) -> None:
    from recogfast.engine.tasks import DATASETS, EMBEDDED

    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}")
    if data is not None and dataset not in EMBEDDED and not os.path.isdir(data):
        raise UsageError(f"data folder not found: {data}")
    if data is None and dataset not in EMBEDDED:
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


def _run_folder(args, model: str) -> str:
    """The run folder: --out (refused when it holds a run, unless --resume or --overwrite), else
    runs/<task>-<dataset>-<model>, numbered when taken (the unnumbered one with --resume)."""
    from recogfast.engine.runs import holds_run, new_run_folder

    if args.out is None:
        base = os.path.join("runs", f"{args.task}-{args.dataset}-{model}")
        return base if args.resume else new_run_folder(base)
    if holds_run(args.out) and not (args.resume or args.overwrite):
        raise UsageError(f"{args.out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                         f"or another --out")
    return args.out


def cmd_train(args) -> int:
    import dataclasses

    from recogfast.engine.tasks import RunConfig, build_trainer
    from recogfast.engine.trainer import ResumeError
    from recogfast.models import list_models

    model = args.model or "resnet18"
    args.dataset = args.dataset or ("shapes-multi" if args.task == "multilabel" else "shapes196")
    if model not in list_models():
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    _check_device(args.device)
    skip = ("command", "task", "resume", "quiet", "model", "out", "config", "overwrite", "extra", "debug", "no_report")
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    cfg = RunConfig(task=args.task, model=model, progress=not args.quiet, **fields, **getattr(args, "extra", {}))
    try:
        cfg.resolved()  # ranges and option conflicts (RunConfig's checks), before any file is looked at
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_dataset_args(args.dataset, args.data)
    if args.weights is not None:
        from recogfast.models.weights import read_state_dict, resolve_weights

        try:
            read_state_dict(resolve_weights(args.weights, model))
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
    out = _run_folder(args, model)
    if isinstance(args.resume, str):
        _check_checkpoint(args.resume)
    elif args.resume:
        last = os.path.join(out, "last.pt")
        if not os.path.exists(last):
            raise UsageError(f"--resume: nothing to resume: {last} not found (drop --resume to start a new run)")
        _check_checkpoint(last)
    cfg = dataclasses.replace(cfg, out=out)
    try:
        trainer = build_trainer(cfg)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise UsageError(str(err)) from None
    if args.overwrite and not args.resume and int(os.environ.get("RANK", "0")) == 0:
        from recogfast.engine.runs import clear_run

        clear_run(out)
    try:
        summary = trainer.fit(resume=args.resume)
    except ResumeError as err:
        raise UsageError(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        _print_result(out, summary)
        if not getattr(args, "no_report", False):
            from recogfast.report.cli import report_after_training

            report_after_training(out)
    return 0


def _metric_text(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and k != "loss")


def _print_result(out: str, summary: dict) -> None:
    val, test = summary.get("val"), summary.get("test")
    if val:
        print(f"best val {summary['monitor']} {summary['best_value']:.4f} at epoch {val['epoch']}"
              + ("  (stopped early)" if summary["stopped_early"] else ""))
    else:
        print(f"no validation split: the result is the last epoch ({summary['epochs_run']})")
    if test:
        print(f"TEST (epoch {test['epoch']}, {test['chosen_by']}): {_metric_text(test)}")
    print(f"run folder: {out}")


def _round(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    return obj


def cmd_eval(args) -> int:
    from recogfast.engine.evaluate import evaluate_checkpoint

    _check_device(args.device)
    ckpt = _check_checkpoint(args.checkpoint)
    saved = ckpt.get("config") or {}
    dataset = args.dataset or saved.get("dataset", "shapes196")
    _check_dataset_args(dataset, args.data if args.data is not None else saved.get("data"))
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


def cmd_compare(args) -> int:
    from recogfast.engine.runs import compare_rows, format_table

    try:
        header, rows = compare_rows(args.runs, raw=args.format == "csv")
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(format_table(header, rows, args.format))
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
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if args.command == "train" and args.config:
            args = with_config(parser, argv, args)
        if args.command == "train" and args.resume:
            args = with_run_folder(parser, argv, args)
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
        if debug:
            raise
        print(f"recogfast: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # data problems (missing/corrupt files) anywhere, also mid-training
        from recogfast.data import DataError
        from recogfast.engine.trainer import Diverged

        if debug or not isinstance(err, (DataError, Diverged)):
            raise
        print(f"recogfast: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(err, Diverged) else EXIT_USAGE
    except KeyboardInterrupt:
        print("recogfast: interrupted (the last finished epoch is in last.pt; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
