"""The real pipeline (Shapes196 JPEGs → loader → model → loss) resumes exactly: a retrieval run with
M-per-class batches and a cross-batch memory, killed mid-epoch and resumed, repeats the same losses."""

import pytest
import torch

from recogfast.engine import RunConfig, load_checkpoint, run_train


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _cfg(out, cache):
    return RunConfig(task="retrieval", dataset="shapes196", data=cache, images_per_class=4, model="tinynet",
                     image_size=16, batch_size=32, m_per_class=4, embedding_dim=32, xbm_size=48, epochs=2,
                     steps_per_epoch=3, optimizer="adamw", lr=1e-3, num_workers=0, device="cpu",
                     backend="torchvision", out=str(out), progress=False)


def test_retrieval_run_resumes_exactly(tmp_path, shapes_cache):
    _, full = run_train(_cfg(tmp_path / "full", shapes_cache))

    def kill(trainer, event, **info):
        if event == "step" and trainer.epoch == 1 and info["step"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_train(_cfg(tmp_path / "run", shapes_cache), callbacks=[kill])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1 and int(ckpt["loss"]["num_filled"]) == 48  # the memory is in the checkpoint
    torch.manual_seed(777)  # another process state entirely
    summary, resumed = run_train(_cfg(tmp_path / "run", shapes_cache), resume=True)
    assert resumed.step_losses == full.step_losses[3:]
    assert summary["epochs_run"] == 2
    assert [r["val_recall@1"] for r in resumed.history] == [r["val_recall@1"] for r in full.history]


@pytest.mark.parametrize("backend, workers, steps", [("torchvision", 0, 2), ("torchvision", 2, 2), ("dali", 2, 2),
                                                      ("dali", 2, None)])
def test_classify_resume_with_dropout_and_workers_gives_the_same_log(tmp_path, shapes_cache, backend, workers, steps):
    """tinynet has dropout: its masks come from the global torch RNG, which creating the (persistent-
    worker) DataLoader iterator must not draw from, or a resumed run's masks shift. DALI's crop/flip
    draws are seeded per (seed, epoch), with and without --steps-per-epoch."""
    import csv

    from recogfast.data import dali_available

    if backend == "dali" and not dali_available():
        pytest.skip("DALI is not installed")

    def cfg(out):
        return RunConfig(dataset="shapes196", data=shapes_cache, images_per_class=4, model="tinynet", image_size=16,
                         batch_size=32, epochs=3, steps_per_epoch=steps, optimizer="adamw", lr=1e-3, num_workers=workers,
                         device="cpu", backend=backend, out=str(out), progress=False)

    def log(out):
        rows = csv.DictReader(open(out / "log.csv"))
        return [{k: v for k, v in r.items() if k not in ("epoch_s", "train_img_per_s")} for r in rows]

    _, full = run_train(cfg(tmp_path / "full"))

    def kill(trainer, event, **info):
        if event == "epoch" and trainer.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run_train(cfg(tmp_path / "run"), callbacks=[kill])
    torch.manual_seed(777)
    _, resumed = run_train(cfg(tmp_path / "run"), resume=True)
    assert resumed.step_losses == full.step_losses[len(full.step_losses) // 3:]
    assert log(tmp_path / "run") == log(tmp_path / "full")
