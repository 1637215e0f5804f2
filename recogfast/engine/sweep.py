"""``recogfast sweep SPEC.yaml``: an Optuna study over RunConfig fields, each trial a normal run folder.

The spec (YAML) names a base configuration, a search space, the validation metric to optimise and the
sweep folder::

    out: runs/sweep-shapes          # the sweep folder: trial-000/, ... (run folders), study.db, tables, plots
    metric: top1                    # a val metric (top1, top5, loss; recall@1 ... map@r): never test
    direction: maximize             # default: minimize for loss, maximize otherwise
    trials: 20                      # trials in all (complete + pruned + running), over every worker
    seed: 0                         # TPE seed: a reproducible single-worker sweep (leave out with several)
    pruner: {startup_trials: 2, warmup_epochs: 1}    # optuna's MedianPruner (never after the last epoch)
    heartbeat: 10                   # seconds; a trial silent for 2x is failed and retried (resumed)
    enqueue: [{lr: 0.003}]          # trials to run first (optuna's enqueue_trial)
    base: {task: classify, dataset: shapes196, model: tinynet, epochs: 6}
    space:
      lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
      batch_size: {type: categorical, choices: [32, 64, 128]}
      epochs: {type: int, low: 2, high: 6}

Optuna's TPE sampler proposes, its median pruner stops a trial whose per-epoch val metric is below the
median of the earlier trials at that epoch (the trial's run folder keeps what it trained; it is not
tested). The study lives in ``<out>/study.db`` (SQLite) or ``--storage URL`` (any RDB: several
processes or machines working on one sweep is Optuna's own mode: start ``recogfast sweep`` again with
the same spec and storage). Running it again resumes the sweep: a trial killed mid-way is failed once
its heartbeat is stale and retried with the same parameters, continuing its run folder exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from recogfast.engine.runs import compare_rows, format_table, holds_run

VAL_METRICS = {"classify": ("top1", "top5", "loss"),
               "retrieval": ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")}
SPEC_KEYS = {"out", "study", "metric", "direction", "trials", "seed", "pruner", "heartbeat", "enqueue", "base", "space"}
_NOT_SWEPT = {"out", "progress", "task"}


class SpecError(ValueError):
    """A sweep spec that cannot run (one line)."""


def _number(value, where: str) -> float:
    try:  # YAML 1.1 reads 1e-4 (no dot) as a string
        out = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise SpecError(f"{where}: expected a finite number, got {value!r}")
    return out


def load_spec(path: str, trials: int | None = None, out: str | None = None) -> dict[str, Any]:
    """The spec, checked: every swept field is a RunConfig field, the metric is a val metric of the
    task, the base config and the space's corner values pass ``RunConfig.resolved()``."""
    try:
        import yaml
    except ImportError:
        raise SpecError("recogfast sweep needs optuna and pyyaml: pip install 'recogfast[sweep]'") from None
    from recogfast.engine.build import RunConfig

    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except OSError as err:
        raise SpecError(f"cannot read sweep spec {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"sweep spec {path} is not YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"sweep spec {path} does not hold a mapping")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"sweep spec {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SPEC_KEYS))})")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    base, space = spec.get("base") or {}, spec.get("space") or {}
    if not isinstance(base, dict) or not isinstance(space, dict) or not space:
        raise SpecError("sweep spec: 'base' must be a mapping of RunConfig fields and 'space' a non-empty one")
    for name in list(base) + list(space):
        if name not in fields:
            raise SpecError(f"sweep spec: {name!r} is not a RunConfig field (`recogfast train --help` lists them)")
    for name in space:
        if name in _NOT_SWEPT:
            raise SpecError(f"sweep spec: {name!r} cannot be swept")
    task = base.get("task", "classify")
    metric = str(spec.get("metric", {"classify": "top1", "multilabel": "map"}.get(task, "map@r")))
    for prefix in ("val_", "val "):
        metric = metric[len(prefix):] if metric.startswith(prefix) else metric
    if metric.startswith("test"):
        raise SpecError(f"sweep spec: metric {spec['metric']!r}: a sweep chooses on validation, never on test")
    if metric not in VAL_METRICS.get(task, ()):
        raise SpecError(f"sweep spec: metric {metric!r} is not a val metric of {task} "
                        f"(one of {', '.join(VAL_METRICS.get(task, ()))})")
    direction = spec.get("direction", "minimize" if metric == "loss" else "maximize")
    if direction not in ("maximize", "minimize"):
        raise SpecError(f"sweep spec: direction must be maximize or minimize, got {direction!r}")
    params = {name: _param(name, entry) for name, entry in space.items()}
    pruner = spec.get("pruner") or {}
    if not isinstance(pruner, dict) or set(pruner) - {"startup_trials", "warmup_epochs"}:
        raise SpecError("sweep spec: pruner takes startup_trials and warmup_epochs (optuna's MedianPruner)")
    total = trials if trials is not None else spec.get("trials", 20)
    if not isinstance(total, int) or total < 1:
        raise SpecError(f"--trials: expected an integer >= 1, got {total!r}")
    heartbeat = spec.get("heartbeat", 10)
    if not isinstance(heartbeat, int) or heartbeat < 1:
        raise SpecError(f"sweep spec: heartbeat: expected whole seconds >= 1, got {heartbeat!r}")
    enqueue = spec.get("enqueue") or []
    if not isinstance(enqueue, list) or any(not isinstance(e, dict) or set(e) - set(space) for e in enqueue):
        raise SpecError("sweep spec: enqueue must be a list of mappings of swept fields")
    folder = out or spec.get("out") or os.path.join("runs", "sweep-" + Path(path).stem)
    for corner in _corners(params):  # the base config with the space's extremes: refused values show now
        try:
            RunConfig(**{**base, **corner, "out": folder}).resolved()
        except (ValueError, TypeError) as err:
            raise SpecError(f"sweep spec: {err} (with {corner})") from None
    return {"out": str(folder), "study": spec.get("study") or Path(folder).name, "metric": metric,
            "direction": direction, "trials": total, "seed": spec.get("seed"), "heartbeat": heartbeat,
            "pruner": {"startup_trials": int(pruner.get("startup_trials", 2)),
                       "warmup_epochs": int(pruner.get("warmup_epochs", 1))},
            "enqueue": enqueue, "base": base, "space": params, "spec_file": str(path)}


def _param(name: str, entry) -> dict[str, Any]:
    if isinstance(entry, list):
        entry = {"type": "categorical", "choices": entry}
    if not isinstance(entry, dict) or entry.get("type") not in ("categorical", "int", "float"):
        raise SpecError(f"sweep spec: space.{name}: expected {{type: categorical|int|float, ...}}, got {entry!r}")
    if entry["type"] == "categorical":
        if not isinstance(entry.get("choices"), list) or not entry["choices"]:
            raise SpecError(f"sweep spec: space.{name}: a categorical needs a non-empty list of choices")
        return {"type": "categorical", "choices": entry["choices"]}
    low, high = _number(entry.get("low"), f"space.{name}.low"), _number(entry.get("high"), f"space.{name}.high")
    if entry["type"] == "int":
        if low != int(low) or high != int(high):
            raise SpecError(f"sweep spec: space.{name}: an int range needs whole low and high")
        low, high = int(low), int(high)
    log = bool(entry.get("log", False))
    if not low < high or (log and low <= 0):
        raise SpecError(f"sweep spec: space.{name}: expected low < high" + (" and low > 0 (log scale)" if log else "")
                        + f", got {low}, {high}")
    return {"type": entry["type"], "low": low, "high": high, "log": log}


def _corners(params: dict) -> list[dict]:
    lows = {n: p["choices"][0] if p["type"] == "categorical" else p["low"] for n, p in params.items()}
    highs = {n: p["choices"][-1] if p["type"] == "categorical" else p["high"] for n, p in params.items()}
    return [lows, highs]


def _suggest(trial, params: dict) -> dict[str, Any]:
    out = {}
    for name, p in params.items():
        if p["type"] == "categorical":
            out[name] = trial.suggest_categorical(name, p["choices"])
        elif p["type"] == "int":
            out[name] = trial.suggest_int(name, p["low"], p["high"], log=p["log"])
        else:
            out[name] = trial.suggest_float(name, p["low"], p["high"], log=p["log"])
    return out


# ------------------------------------------------------------------------------------------ the study
def open_study(spec: dict, storage: str | None = None):
    """The study (created, or loaded when it exists: a resumed or shared sweep)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    os.makedirs(spec["out"], exist_ok=True)
    url = storage or "sqlite:///" + os.path.abspath(os.path.join(spec["out"], "study.db"))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        rdb = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=spec["heartbeat"],
                         grace_period=2 * spec["heartbeat"],
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as err:  # a bad URL, a missing driver, an unreachable server: one line
        raise SpecError(f"--storage {url}: {str(err).strip().splitlines()[0]}") from None
    sampler = optuna.samplers.TPESampler(seed=spec["seed"])
    pruner = optuna.pruners.MedianPruner(n_startup_trials=spec["pruner"]["startup_trials"],
                                         n_warmup_steps=spec["pruner"]["warmup_epochs"] + 1)  # steps are 1-based epochs
    study = optuna.create_study(study_name=spec["study"], storage=rdb, sampler=sampler, pruner=pruner,
                                direction=spec["direction"], load_if_exists=True)
    for params in spec["enqueue"]:
        study.enqueue_trial(params, skip_if_exists=True)
    return study, url


def trials_counted(study) -> int:
    """Trials that use up the budget: complete, pruned, running or queued, and diverged (a stale
    trial's failure does not count: its retry does)."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.state in counted or (t.state == TrialState.FAIL and "diverged" in t.user_attrs)
               for t in study.get_trials(deepcopy=False))


def _objective(spec: dict, callbacks: list):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from recogfast.engine.build import RunConfig, build_trainer
    from recogfast.engine.trainer import Diverged, StopTraining, _write_json

    metric = spec["metric"]

    def objective(trial) -> float:
        params = _suggest(trial, spec["space"])
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        out = Path(spec["out"]) / f"trial-{trial.number if original is None else original:03d}"
        resume = original is not None and (out / "last.pt").exists()  # a killed trial continues exactly
        if not resume and holds_run(str(out)):
            from recogfast.engine.runs import clear_run

            clear_run(str(out))
        trial.set_user_attr("run_dir", str(out))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        reported: set[int] = set()

        def report(trainer, event, **info):
            if event != "epoch":
                return
            for row in trainer.history:  # after a resume, the epochs before it too
                value = row.get(f"val_{metric}")
                if row["epoch"] not in reported and value is not None:
                    trial.report(float(value), row["epoch"])
                reported.add(row["epoch"])
            if trainer.epoch < trainer.opt.epochs and not trainer.stopped_early and trial.should_prune():
                trainer.pruned_at, trainer.test_evaluate_fn = trainer.epoch, None  # a pruned trial is not tested
                raise StopTraining

        cfg = RunConfig(**{**spec["base"], **params, "out": str(out), "progress": False})
        tick = time.perf_counter()
        trainer = build_trainer(cfg, callbacks=[report, *callbacks])
        try:
            summary = trainer.fit(resume=resume)
        except Diverged as err:
            trial.set_user_attr("diverged", str(err).splitlines()[0])
            print(f"trial {trial.number}: {_params_text(params)}: diverged ({out})", flush=True)
            raise
        pruned = getattr(trainer, "pruned_at", None)
        value = (summary.get("val") or {}).get(metric)
        state = "pruned" if pruned is not None else "complete"
        summary["sweep"] = {"study": spec["study"], "trial": trial.number, "state": state, "metric": metric,
                            "value": value, "params": params}
        _write_json(out / "summary.json", summary)
        print(f"trial {trial.number}: {_params_text(params)}: val {metric} {_fmt(value)} "
              + (f"(pruned at epoch {pruned}) " if pruned is not None else "")
              + f"in {time.perf_counter() - tick:.0f} s, {out}", flush=True)
        if pruned is not None:
            raise optuna.TrialPruned(f"pruned at epoch {pruned}")
        if value is None or not math.isfinite(value):
            raise Diverged(f"trial {trial.number}: val {metric} is {value}")  # NaN is an error, never a value
        return float(value)

    return objective


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_sweep(spec: dict, storage: str | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Work on the study until it holds ``spec["trials"]`` trials (this process's share when others
    work on it too), then write the table, the best trial's config.json and the plots. Returns
    ``{"study", "best", "table", ...}``."""
    import optuna
    from optuna.storages import fail_stale_trials

    from recogfast.engine.trainer import Diverged

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study, url = open_study(spec, storage)
    folder = Path(spec["out"])
    _write(folder / "sweep.json", json.dumps({**spec, "storage": url}, indent=2, default=str))
    print(f"sweep {spec['study']}: {trials_counted(study)} of {spec['trials']} trials so far; storage {url}", flush=True)
    objective = _objective(spec, list(callbacks or []))
    while True:
        fail_stale_trials(study)  # killed workers' trials: failed, and queued again with their parameters
        if trials_counted(study) >= spec["trials"]:
            break
        study.optimize(objective, n_trials=1, catch=(Diverged,))
    return finish(study, spec)


def finish(study, spec: dict) -> dict[str, Any]:
    """The table of trials (as ``recogfast compare SWEEP``), ``best-config.json`` (the best trial's
    run config: ``recogfast train TASK --config``), ``history.png`` and ``importance.png``."""
    from optuna.trial import TrialState

    folder = Path(spec["out"])
    header, rows = compare_rows([str(folder)])
    table = format_table(header, rows)
    _write(folder / "trials.md", format_table(header, rows, "md") + "\n")
    result: dict[str, Any] = {"study": spec["study"], "table": table, "best": None, "plots": []}
    states = [t.state for t in study.get_trials(deepcopy=False)]
    result["states"] = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
    if TrialState.COMPLETE in states:
        best = study.best_trial
        run_dir = Path(best.user_attrs["run_dir"])
        shutil.copyfile(run_dir / "config.json", folder / "best-config.json")
        result["best"] = {"trial": best.number, "value": best.value, "params": best.params, "run_dir": str(run_dir)}
    result["plots"] = _plots(study, folder)
    print(table)
    print("trials: " + ", ".join(f"{n} {k}" for k, n in result["states"].items()))
    if result["best"]:
        b = result["best"]
        print(f"best trial {b['trial']} (val {spec['metric']} {b['value']:.4f}): {_params_text(b['params'])}; "
              f"its config: {folder / 'best-config.json'}")
    return result


def _plots(study, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ImportError:
        return []
    written = []
    for name, plot in (("history.png", ovm.plot_optimization_history), ("importance.png", ovm.plot_param_importances)):
        try:
            ax = plot(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances need two complete trials
            print(f"note: {name} not drawn: {str(err).splitlines()[0]}", flush=True)
            continue
        fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        written.append(str(folder / name))
    return written


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ CLI
