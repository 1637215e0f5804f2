"""``recogfast train``: its flags (every RunConfig field; defaults come from RunConfig), ``--config``,
``--resume`` from a run folder, and the command."""

from __future__ import annotations

import argparse
import os

from recogfast.cli.checks import check_checkpoint, check_dataset_args
from recogfast.cli.errors import EPILOG, UsageError, check_device


def add_train_args(p: argparse.ArgumentParser) -> None:
    from recogfast.engine.schedule import OPTIMIZERS, SCHEDULES
    from recogfast.engine.build import DATASETS

    p.add_argument("--dataset", default=None,
                   help=f"one of: {', '.join(DATASETS)} (default shapes196; shapes-multi for multilabel)")
    p.add_argument("--data", default=None,
                   help="dataset folder (voc2007: VOCdevkit/VOC2007; shapes196 / shapes-multi: cache folder, optional; "
                        "folder: your class folders, DIR/<class>/ or DIR/train|val|test/<class>/)")
    p.add_argument("--model", default=None, help="model name (see `recogfast info`); default resnet18")
    p.add_argument("--out", default=None,
                   help="run folder (default runs/<task>-<dataset>-<model>, numbered -2, -3... when it holds a run)")
    p.add_argument("--config", default=None, help="a run's config.json to start from (flags given here override it)")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out already holds")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="held out for validation: of each class's images (classify, default 0.1) or of the training "
                        "classes (retrieval, default 0.15); 0 = no validation, the last epoch is the result")
    p.add_argument("--split-seed", type=int, help="seed of the validation split")
    p.add_argument("--protocol", choices=("classification", "retrieval"), default=None,
                   help="classify on the dataset's own test images (classification, default) or on the "
                        "disjoint-class split (retrieval: test = Recall@K of the pooled features; Task 4)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="images per step (per rank under torchrun)")
    p.add_argument("--image-size", type=int, default=None, help="default 64 (224 for cars196)")
    p.add_argument("--stem", choices=("imagenet", "small"), default=None, help="default small for <= 64 px")
    p.add_argument("--attn-impl", choices=("auto", "fused", "reference"),
                   help="CUBS/SE attention: the fused kernels, the pure-PyTorch reference, or auto (fused when built)")
    p.add_argument("--weights", default=None,
                   help="checkpoint to start from: a torchvision .pth, a recogfast run's best.pt (its classifier is "
                        "cropped for retrieval), or 'imagenet' (torchvision's, via $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--weights-partial", action="store_true",
                   help="accept --weights that keep less than half of the backbone's checkpoint tensors")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer")
    p.add_argument("--lr", type=float, default=None, help="default 0.1·batch/256 (sgd), 1e-3 (adamw)")
    p.add_argument("--weight-decay", type=float, help="weight decay (not on norms and biases)")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=float, help="linear warm-up, in epochs (fractions allowed)")
    p.add_argument("--step-size", type=int, help="step schedule: epochs per decay")
    p.add_argument("--gamma", type=float, help="step/plateau decay factor")
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    p.add_argument("--crop-scale", type=float,
                   help="smallest area fraction of the random resized crop (default 0.08, as torchvision)")
    aug = p.add_argument_group("augmentation (train only; in this order, after the crop; README: Augmentation)")
    aug.add_argument("--hflip", type=float, help="horizontal flip probability; 0 for orientation-sensitive data "
                                                  "(digits, text, signs, documents)")
    aug.add_argument("--vflip", type=float, help="vertical flip probability")
    aug.add_argument("--auto-augment", choices=("none", "randaugment", "trivialaugment", "autoaugment"),
                     help="an auto-augment policy (ImageNet's for autoaugment)")
    aug.add_argument("--aa-magnitude", type=int, help="RandAugment magnitude, 0-30 (when not given: 9)")
    aug.add_argument("--aa-num-ops", type=int, help="RandAugment ops per image (when not given: 2)")
    aug.add_argument("--color-jitter", type=float,
                     help="brightness, contrast and saturation strength S: factors in [1-S, 1+S] (0: off)")
    aug.add_argument("--reprob", type=float, help="random erasing probability")
    p.add_argument("--patience", type=int, default=None, help="early stopping: epochs without improvement")
    p.add_argument("--min-delta", type=float, help="early stopping: smallest improvement that counts")
    p.add_argument("--plateau-patience", type=int, help="plateau schedule: epochs before a decay")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), help="auto: bf16 on CUDA")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=("none", "default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the model in this mode (a bare --compile: default; reduce-overhead and "
                        "max-autotune replay CUDA graphs of the model; README: Training at full speed)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the whole training step (forward, loss, backward, optimizer step, EMA) in CUDA "
                        "graphs and replay it; CUDA only, what cannot be captured is refused in one line")
    p.add_argument("--seed", type=int, help="seed of initialisation, sampling and augmentation")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when visible)")
    p.add_argument("--backend", choices=("auto", "dali", "torchvision"),
                   help="data loading: NVIDIA DALI, torchvision, or auto (DALI when installed and usable)")
    p.add_argument("--workers", dest="num_workers", type=int, default=None,
                   help="loader worker processes / DALI threads (default: from the CPU count)")
    p.add_argument("--on-error", choices=("raise", "skip"),
                   help="unreadable image files (all checked before the first step): raise = stop with the file "
                        "named (default), skip = train without them (counted each epoch)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap the steps of an epoch (default: the whole split)")
    p.add_argument("--embedding-dim", type=int, help="retrieval: embedding size")
    p.add_argument("--m-per-class", type=int, help="retrieval: images of each class in a batch")
    p.add_argument("--mining", choices=("ms", "all", "hardest"),
                   help="retrieval: pair mining (ms = Multi-Similarity's hard-pair rule, docs/SPEC.md)")
    p.add_argument("--ms-alpha", type=float, help="MS loss: positive scale alpha")
    p.add_argument("--ms-beta", type=float, help="MS loss: negative scale beta")
    p.add_argument("--ms-base", type=float, help="MS loss: similarity margin lambda")
    p.add_argument("--ms-epsilon", type=float, help="MS loss: mining margin epsilon")
    p.add_argument("--xbm", dest="xbm_size", type=int, help="cross-batch memory size (0: off)")
    p.add_argument("--images-per-class", type=int,
                   help="Shapes196: images per class; shapes-multi: 20× this trainval and 5× this test images")
    from recogfast.engine.finetune import add_finetune_args

    add_finetune_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue from <out>/last.pt (or from the given checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="no report page after training (`recogfast report RUN` later)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    config_defaults(p)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every train flag's help shows its default (from RunConfig), unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        # `is` tests: a default of 0 or 0.0 (== False) is shown too
        if ("default" not in text and action.default is not None and action.default is not False
                and action.default is not argparse.SUPPRESS and action.option_strings):
            text += " (default: %(default)s)"
        return text


# Train flags whose None means "decided later" (from the task, the dataset or the run folder), not RunConfig's default.
DECIDED_LATER = ("dataset", "model", "out")


def config_defaults(p: argparse.ArgumentParser) -> None:
    """Every train flag that sets a RunConfig field takes its default from RunConfig, the one place where
    defaults are written (tests/test_cli.py checks that no flag carries another)."""
    import dataclasses

    from recogfast.engine.build import RunConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    for action in p._actions:
        if action.dest in defaults and action.default is None and action.dest not in DECIDED_LATER:
            action.default = defaults[action.dest]


def _read_run_config(path: str) -> dict:
    """A saved config.json's RunConfig fields; UsageError (one line) when it cannot be read."""
    import dataclasses

    from recogfast.engine.runs import read_config
    from recogfast.engine.build import RunConfig

    try:
        values = read_config(path, {f.name for f in dataclasses.fields(RunConfig)})
    except ValueError as err:
        raise UsageError(str(err)) from None
    if isinstance(values.get("compile"), bool):  # a run from before --compile MODE
        values["compile"] = "default" if values["compile"] else "none"
    return values


def _reparse_with(parser, argv, values: dict):
    """Parse again with a saved config's values as the train defaults (flags given override them); its
    fields that are no flag go to ``args.extra``. Never taken from it: out, task, progress."""
    values = {k: v for k, v in values.items() if k not in ("out", "task", "progress")}
    dests = {a.dest for a in parser.train_parser._actions}
    parser.train_parser.set_defaults(**{k: v for k, v in values.items() if k in dests})
    args = parser.parse_args(argv)
    args.extra = {k: v for k, v in values.items() if k not in dests}
    return args


def with_config(parser, argv, args):
    """Parse again with the saved config's values as the train defaults: flags given override them (a new
    run: --out, or a new numbered folder)."""
    values = _read_run_config(args.config)
    if values.get("task", args.task) != args.task:
        raise UsageError(f"config file {args.config} is for `train {values['task']}`, not `train {args.task}`")
    return _reparse_with(parser, argv, values)


# What `--resume` may change beside a run's own config.json: where and how long it runs, not what it is.
RESUME_MAY_CHANGE = ("epochs", "device", "num_workers", "on_error", "compile", "cuda_graphs")


def _given(parser, argv) -> set[str]:
    """The train flags written on the command line (dests), whatever their values."""
    import copy
    import sys

    argv = sys.argv[1:] if argv is None else argv
    quiet = copy.deepcopy(parser.train_parser)
    for action in quiet._actions:
        if action.dest not in ("task", "help"):
            action.default = argparse.SUPPRESS
    words = list(argv)
    words = words[words.index("train") + 1:] if "train" in words else words
    return set(vars(quiet.parse_args(words)))


def _same(a, b) -> bool:
    norm = (lambda v: tuple(v) if isinstance(v, list) else v)
    return norm(a) == norm(b)


def with_run_folder(parser, argv, args):
    """``--resume RUN`` / ``--out RUN --resume``: RUN/config.json is the configuration; a flag given beside
    it must agree with it (except ``RESUME_MAY_CHANGE``), else one line names the difference."""
    if isinstance(args.resume, str) and os.path.isdir(args.resume):
        if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise UsageError(f"--resume {args.resume} and --out {args.out} name two different run folders")
        args.out, args.resume = args.resume, True
    if args.resume is not True or args.out is None:
        return args
    path = os.path.join(args.out, "config.json")
    if not os.path.isfile(path):
        return args  # an older run folder: the flags as given (the checkpoint's own check still applies)
    values = _read_run_config(path)
    if values.get("task", args.task) != args.task:
        raise UsageError(f"--resume: {args.out} is a `train {values['task']}` run, not `train {args.task}`")
    given = _given(parser, argv) - {"task", "resume", "out", "quiet", "debug", "config", "overwrite", "no_report"}
    for dest in sorted(given):
        if dest in values and dest not in RESUME_MAY_CHANGE and not _same(getattr(args, dest), values[dest]):
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"--resume: {flag} is {getattr(args, dest)!r} here but {values[dest]!r} in {path} "
                             f"(drop the flag to continue that run, or start a new one with --config {path})")
    out = args.out
    args = _reparse_with(parser, argv, values)  # the flags given (those that may change) still win
    args.out, args.resume = out, True
    return args


def register(parser, sub) -> None:
    train = sub.add_parser("train", help="train a model", epilog=EPILOG, formatter_class=HelpFormatter)
    parser.train_parser = train
    train.add_argument("task", choices=("classify", "retrieval", "multilabel"))
    add_train_args(train)
    train.set_defaults(handler=cmd_train)


def resolve_train_args(parser, argv, args):
    """The parsed train flags with ``--config`` and ``--resume RUN`` applied."""
    if args.config:
        args = with_config(parser, argv, args)
    if args.resume:
        args = with_run_folder(parser, argv, args)
    return args


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

    from recogfast.engine.build import RunConfig, build_trainer
    from recogfast.engine.trainer import ResumeError
    from recogfast.models import list_models
    from recogfast.tasks import get_task

    model = args.model or "resnet18"
    args.dataset = args.dataset or get_task(args.task).default_dataset
    if model not in list_models():
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    check_device(args.device)
    skip = ("command", "task", "resume", "quiet", "model", "out", "config", "overwrite", "extra", "debug", "no_report",
            "handler")
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    cfg = RunConfig(task=args.task, model=model, progress=not args.quiet, **fields, **getattr(args, "extra", {}))
    try:
        cfg.resolved()  # ranges and option conflicts (RunConfig's checks), before any file is looked at
    except ValueError as err:
        raise UsageError(str(err)) from None
    check_dataset_args(args.dataset, args.data)
    if args.weights is not None:
        from recogfast.models.weights import read_state_dict, resolve_weights

        try:
            read_state_dict(resolve_weights(args.weights, model))
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from None
    out = _run_folder(args, model)
    if isinstance(args.resume, str):
        check_checkpoint(args.resume)
    elif args.resume:
        last = os.path.join(out, "last.pt")
        if not os.path.exists(last):
            raise UsageError(f"--resume: nothing to resume: {last} not found (drop --resume to start a new run)")
        check_checkpoint(last)
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
            from recogfast.report.after import report_after_training

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
