"""``recogfast sweep SPEC``: the argument parser and the command (the work: recogfast.engine.sweep)."""

from __future__ import annotations

from recogfast.cli.errors import UsageError


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="an Optuna sweep over RunConfig fields (TPE + median pruning)")
    p.add_argument("spec", help="the sweep spec (YAML): base, space, metric, trials, out")
    p.add_argument("--trials", type=int, default=None, help="trials in all, over every worker (default: the spec's)")
    p.add_argument("--storage", default=None,
                   help="Optuna RDB URL shared by several workers (default: sqlite:///<out>/study.db)")
    p.add_argument("--out", default=None, help="the sweep folder (default: the spec's out)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    try:
        import optuna  # noqa: F401  (installed?)
    except ImportError:
        raise UsageError("recogfast sweep needs optuna and pyyaml: pip install 'recogfast[sweep]'") from None
    from recogfast.engine.sweep import load_spec, run_sweep

    try:
        spec = load_spec(args.spec, trials=args.trials, out=args.out)
        run_sweep(spec, storage=args.storage)
    except (ValueError, OSError) as err:  # the spec, or a trial's configuration refused when it is built
        raise UsageError(str(err)) from None
    return 0


def register(parser, sub) -> None:
    add_sweep_parser(sub)
