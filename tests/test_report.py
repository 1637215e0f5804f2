"""``recogfast report``: the page of a tiny Shapes196 classification run and a tiny retrieval run."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")

from recogfast.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


def _train(out: Path, task: str, cache: str, model: str, extra=()) -> Path:
    argv = ["train", task, "--dataset", "shapes196", "--data", cache, "--images-per-class", "4", "--model", model,
            "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2", "--epochs", "2", "--device", "cpu",
            "--out", str(out), "--quiet", *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, shapes_cache):
    return _train(tmp_path_factory.mktemp("runs") / "cls", "classify", shapes_cache, "tinynet")


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory, shapes_cache):
    return _train(tmp_path_factory.mktemp("runs") / "ret", "retrieval", shapes_cache, "cubs_resnet18_serial12",
                  ["--embedding-dim", "32"])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _check_page(run: Path, folder: str = "report") -> str:
    page = (run / folder / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs
    for src in srcs:
        assert "/" not in src and not src.startswith("http"), src
        w, h = _png_size(run / folder / src)
        assert 50 <= w <= 4000 and 50 <= h <= 6000, (src, w, h)
        assert (run / folder / src).stat().st_size > 500
    assert "http://" not in page and "https://" not in page  # no external assets
    summary = json.loads((run / "summary.json").read_text())
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]+)<', page))
    for split in ("val", "test"):
        for k, v in (summary[split] or {}).items():
            if isinstance(v, float):
                assert shown[f"{split}.{k}"] == f"{v:.4f}", (split, k)
    return page


def test_train_writes_classification_report(classify_run):
    page = _check_page(classify_run)
    for name in ("loss.png", "metrics.png", "lr.png", "per_class_accuracy.png", "confusion.png"):
        assert f'src="{name}"' in page
    assert "Most confused pairs" in page
    # what the model sees: the run's first training batch through its augmentation (the defaults here)
    assert 'src="augmented.png"' in page and "random resized crop (scale 0.08-1), hflip 0.5." in page
    try:
        import captum  # noqa: F401
        assert 'src="why.png"' in page  # Grad-CAM / guided backprop through Captum
    except ImportError:
        assert "needs Captum" in page
    # the report scores best.pt on val: the same top-1 as the summary's val result
    summary = json.loads((classify_run / "summary.json").read_text())
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]+)<', page))
    assert abs(float(shown["report.top1"]) - summary["val"]["top1"]) < 1e-3


def test_retrieval_report_grid_matches_metrics(retrieval_run, capsys):
    assert main(["report", str(retrieval_run), "--n", "5", "--split", "test", "--device", "cpu"]) == 0
    assert "report-test" in capsys.readouterr().out  # the val report (report/) is kept
    page = _check_page(retrieval_run, "report-test")
    for name in ("retrieval_grid.png", "recall_at_k.png", "embedding_map.png", "gates_spatial.png", "gates_channel.png"):
        assert f'src="{name}"' in page
    grid = json.loads((retrieval_run / "report-test" / "retrieval_grid.json").read_text())
    assert len(grid) == 5
    for row in grid:
        assert row["same"] == [lab == row["label"] for lab in row["labels"]]
        assert len(row["neighbours"]) == 8 and row["query"] not in row["neighbours"]
    # the summary's test Recall@1 is what the page shows for best.pt on test
    summary = json.loads((retrieval_run / "summary.json").read_text())
    shown = dict(re.findall(r'data-key="([^"]+)">([^<]+)<', page))
    assert abs(float(shown["report.recall@1"]) - summary["test"]["recall@1"]) < 1e-3


def test_neighbours_follow_metrics_order():
    from recogfast.metrics import recall_at_k
    from recogfast.report.build import nearest

    g = torch.Generator().manual_seed(0)
    e = torch.randn(60, 8, generator=g)
    e[5] = e[6]  # a tie
    y = torch.randint(0, 6, (60,), generator=g)
    idx, _ = nearest(e, 8)
    for k in (1, 4, 8):
        hits = int((y[idx[:, :k]] == y[:, None]).any(1).sum()) / len(y)
        assert abs(hits - recall_at_k(e, y, (k,))[k]) < 1e-9


@pytest.mark.parametrize("argv, pattern", [
    (["report", "/nonexistent/run"], "does not exist"),
    (["report", ".", "--n", "0"], "--n must be a positive integer"),
    (["report", "."], "not a finished run"),
])
def test_report_errors(capsys, argv, pattern):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and pattern in err[0], err


def test_page_renders_in_headless_chromium(classify_run, tmp_path):
    import shutil
    import subprocess

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1100,2000", (classify_run / "report" / "index.html").resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    from PIL import Image

    with Image.open(shot) as im:
        lo, hi = im.convert("L").getextrema()
    assert hi - lo > 50  # not a blank page


def test_viz_retrieval_grid_from_model_and_dataset(shapes_cache):
    """The notebook API: a model and a dataset in, a Figure out, with a row of k + 1 images per query whose
    frames are green exactly where the neighbour (in recogfast.metrics' order) shares the query's class."""
    from recogfast import viz
    from recogfast.data import Shapes196, build_loader
    from recogfast.models import create_model
    from recogfast.report.build import _outputs, neighbour_grid

    torch.manual_seed(0)
    ds = Shapes196(cache_dir=shapes_cache, split="test", images_per_class=4)
    model = create_model("tinynet", num_classes=10)
    fig = viz.retrieval_grid(model, ds, n=3, k=4, image_size=16)
    assert len(fig.axes) == 3 * 5
    loader = build_loader(ds, train=False, batch_size=128, image_size=16, backend="torchvision", num_workers=0)
    e, y = _outputs(model.eval(), loader, False)
    _, grid, _ = neighbour_grid(e, y, ds, 3, 0, 16, k=4)
    green = [[ax.spines["top"].get_edgecolor() for ax in fig.axes[r * 5 + 1:(r + 1) * 5]] for r in range(3)]
    for row, colors in zip(grid, green):
        assert [c[1] > c[0] for c in colors] == row["same"]  # green frame (more G than R) iff same class


def test_report_goes_to_tensorboard(classify_run):
    """The report's pictures as TensorBoard images and the run's hyperparameters with its val/test results."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(classify_run / "tb")).Reload()
    tags = scalars.Tags()
    assert {"report/confusion", "report/per_class_accuracy", "report/loss"} <= set(tags["images"])
    assert not {"epoch", "steps", "best"} & set(tags["scalars"])  # per-epoch curves only
    hp_dir = next(p for p in (classify_run / "tb").rglob("*") if p.is_dir() and p.name == "hparams")
    hp = EventAccumulator(str(hp_dir)).Reload()
    summary = json.loads((classify_run / "summary.json").read_text())
    logged = {t: hp.Scalars(t)[-1].value for t in hp.Tags()["scalars"]}
    assert abs(logged["hparam/test_top1"] - summary["test"]["top1"]) < 1e-6
    assert abs(logged["hparam/val_top1"] - summary["val"]["top1"]) < 1e-6


def test_embedding_map_prefers_umap_when_installed(monkeypatch):
    import sys
    import types

    from recogfast.report.build import _pca2

    calls = []

    class FakeUMAP:
        def __init__(self, **kw):
            calls.append(kw)

        def fit_transform(self, x):
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    e = torch.randn(20, 8)
    pts, method = _pca2(e)
    assert method == "UMAP" and pts.shape == (20, 2) and calls[0]["n_components"] == 2
    torch.testing.assert_close(pts, torch.nn.functional.normalize(e, dim=1)[:, :2] * 2)
    monkeypatch.setitem(sys.modules, "umap", None)  # not installed: t-SNE (scikit-learn) or PCA
    assert _pca2(e)[1] in ("t-SNE", "PCA")


def test_long_class_names_are_wrapped_not_cut():
    from recogfast.report.figures import wrap

    name = "AM General Hummer SUV 2000 extended-cab"
    text = wrap(name, 16, 3)
    assert text.replace("\n", " ") == name  # every character kept, on three lines
    assert all(len(line) <= 16 for line in text.splitlines()) and len(text.splitlines()) == 3
    assert wrap("x" * 60, 16, 2).endswith("…") and wrap("cat", 16, 2) == "cat"
    assert wrap("diamond_blue_stripes", 10, 3) == "diamond_\nblue_\nstripes"
    assert wrap("diamond_blue_stripes", 10, 2) == "diamond_\nblue_…"
