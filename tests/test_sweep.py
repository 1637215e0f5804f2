"""recogfast sweep on a tiny Shapes196 config: four trials with the median pruner (a trial pruned when
forced), the best trial's config.json reproducing its val metric, the compare table of a sweep folder,
spec refusals; a sweep killed mid-trial and resumed by two worker processes sharing its SQLite study
(the killed trial failed, retried with its parameters and its run folder continued)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("yaml")

from recogfast.cli import main  # noqa: E402
from recogfast.engine.sweep import SpecError, load_spec, run_sweep  # noqa: E402

BASE = ("{task: classify, dataset: shapes196, data: %s, images_per_class: 4, model: tinynet, image_size: 16, "
        "batch_size: 16, steps_per_epoch: 1, epochs: 2, optimizer: adamw, num_workers: 0, device: cpu, "
        "backend: torchvision, channels_last: false}")


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _spec(tmp_path, cache, body):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body).replace("BASE", BASE % cache))
    return str(path)


def test_sweep_prunes_and_its_best_config_reproduces(tmp_path, shapes_cache, capsys, monkeypatch):
    monkeypatch.setattr("recogfast.report.after.report_after_training", lambda *a, **k: None)  # not under test here
    # val loss at epoch 1: trial 0 (lr 3e-3) learns, trial 1 (lr 1e-6) barely moves: the median pruner
    # (one startup trial, no warm-up) stops it
    spec = load_spec(_spec(tmp_path, shapes_cache, f"""
        out: {tmp_path / 'sweep'}
        metric: val loss
        seed: 0
        trials: 4
        pruner: {{startup_trials: 1, warmup_epochs: 0}}
        enqueue: [{{lr: 0.003, weight_decay: 0.0}}, {{lr: 1.0e-6, weight_decay: 0.0}}]
        base: BASE
        space:
          lr: {{type: float, low: 1e-6, high: 1e-2, log: true}}
          weight_decay: [0.0, 0.0005]
        """))
    assert spec["direction"] == "minimize" and spec["space"]["lr"]["low"] == 1e-6
    tick = time.perf_counter()
    result = run_sweep(spec)
    print(f"4-trial sweep: {time.perf_counter() - tick:.1f} s")
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert len(trials) == 4 and states[1] == "PRUNED" and states[0] == "COMPLETE"
    assert list(trials[1].intermediate_values) == [1]  # stopped after its first epoch
    pruned = json.load(open(tmp_path / "sweep" / "trial-001" / "summary.json"))
    assert pruned["sweep"]["state"] == "pruned" and pruned["test"] is None and pruned["epochs_run"] == 1
    best = study.best_trial
    assert result["best"]["trial"] == best.number and result["best"]["value"] == best.value
    assert sorted(os.listdir(tmp_path / "sweep" / f"trial-{best.number:03d}")) >= ["best.pt", "config.json", "last.pt"]
    for name in ("history.png", "importance.png", "trials.md", "best-config.json"):
        assert (tmp_path / "sweep" / name).stat().st_size > 100, name
    # the best trial's config.json, trained again, gives the trial's val metric
    capsys.readouterr()
    rc = main(["train", "classify", "--config", str(tmp_path / "sweep" / "best-config.json"), "--out",
               str(tmp_path / "again"), "--quiet"])
    assert rc == 0
    again = json.load(open(tmp_path / "again" / "summary.json"))
    assert again["val"]["loss"] == best.value
    # `recogfast compare SWEEP` lists the trials with their state and parameters
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "sweep")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "state" in lines[0] and "weight_decay" in lines[0] and "pruned" in lines[2]


def test_spec_refusals(tmp_path, shapes_cache, capsys):
    def refused(body, match):
        with pytest.raises(SpecError, match=match):
            load_spec(_spec(tmp_path, shapes_cache, body))

    space = "space: {lr: {type: float, low: 1e-4, high: 1e-2, log: true}}"
    refused(f"metric: test top1\nbase: BASE\n{space}", "never on test")
    refused(f"metric: recall@1\nbase: BASE\n{space}", "not a val metric of classify")
    refused("base: BASE\nspace: {lrate: [1, 2]}", "'lrate' is not a RunConfig field")
    refused("base: BASE\nspace: {lr: {type: float, low: 0.1, high: 0.01}}", "expected low < high")
    refused("base: BASE\nspace: {weight_decay: [-1.0, 0.0]}", "--weight-decay: expected a number >= 0")
    path = _spec(tmp_path, shapes_cache, f"metric: test_top1\nbase: BASE\n{space}")
    capsys.readouterr()
    assert main(["sweep", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never on test" in err[0]


KILLER = """
import os, signal, sys
from recogfast.engine.sweep import load_spec, run_sweep

def kill(trainer, event, **info):  # SIGKILL after the first epoch's checkpoint: no cleanup at all
    if event == "epoch" and trainer.epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)

run_sweep(load_spec(sys.argv[1]), callbacks=[kill])
"""

# A sweep worker that imports torch, optuna and the engine first and starts only once the file argv[2] exists: on a
# loaded machine its imports alone took longer than the first worker needed for every remaining trial.
WAITING_WORKER = """
import os, sys, time
import recogfast.engine.sweep  # noqa: F401
from recogfast.cli import main
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
sys.exit(main(["sweep", sys.argv[1]]))
"""


def test_sweep_resumes_after_a_kill_with_two_workers_on_one_sqlite_study(tmp_path, shapes_cache):
    path = _spec(tmp_path, shapes_cache, f"""
        out: {tmp_path / 'sweep'}
        metric: top1
        trials: 4
        heartbeat: 4
        pruner: {{startup_trials: 10}}
        base: BASE
        space:
          lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    killed = subprocess.run([sys.executable, "-c", KILLER, path], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    time.sleep(8.5)  # the grace period (2 heartbeats) passes: the killed trial is stale
    # The second worker starts once the first runs the retried trial: two workers starting together can both pop
    # the one waiting trial from SQLite (it has no SELECT ... FOR UPDATE; Optuna advises against SQLite for
    # simultaneous workers) and run it twice in one folder -- CI saw "Cannot tell a COMPLETE trial" and a
    # vanished log.csv.tmp, exit 2. A server database (--storage) does not have this race.
    cmd = [sys.executable, "-m", "recogfast", "sweep", path]
    env1 = {**env, "OMP_NUM_THREADS": "1"}
    go = tmp_path / "second-worker-go"
    workers = [subprocess.Popen(cmd, env=env1, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
               subprocess.Popen([sys.executable, "-c", WAITING_WORKER, path, str(go)], env=env1,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    storage = f"sqlite:///{tmp_path / 'sweep' / 'study.db'}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            t.state.name != "WAITING" and t.system_attrs.get("failed_trial") == 0
            for t in optuna.load_study(study_name="sweep", storage=storage).get_trials()):
        time.sleep(0.2)
    go.touch()
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    codes = [w.returncode for w in workers]
    if codes != [0, 0]:  # the whole of both outputs (an assert message would be cut short)
        pytest.fail(f"worker exit codes {codes}\n" + "\n----- next worker -----\n".join(outputs), pytrace=False)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"  # killed mid-way: failed once its heartbeat was stale ...
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params  # ... and retried with its parameters,
    assert retry[0].user_attrs["run_dir"].endswith("trial-000")  # continuing its run folder (resumed)
    log = (tmp_path / "sweep" / "trial-000" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + epochs 1 (before the kill) and 2 (after)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(done) <= 5  # two workers may both start the last trial (as with optuna's MaxTrialsCallback)
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in done}
    assert pids == {str(w.pid) for w in workers}, outputs  # both processes worked on the one study
