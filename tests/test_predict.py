"""`recogfast predict`: a trained model on new images (top-k classes, or embeddings); the preprocessing
travels with the model, so an exported ONNX file run with only its own metadata gives predict's answer."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from recogfast.cli import main


def _images(root, classes=6, per_class=5, size=20):
    for k in range(classes):
        os.makedirs(os.path.join(root, f"kind-{k}"), exist_ok=True)
        for i in range(per_class):
            g = np.random.default_rng(100 * k + i)
            pixels = (g.random((size, size, 3)) * 60 + 30 * k).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, f"kind-{k}", f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    data = _images(tmp / "data")
    base = ["--dataset", "folder", "--data", data, "--model", "tinynet", "--image-size", "16", "--epochs", "1",
            "--workers", "0", "--device", "cpu", "--quiet", "--no-report", "--backend", "torchvision", "--val-fraction", "0"]
    assert main(["train", "classify", *base, "--batch-size", "8", "--out", str(tmp / "cls")]) == 0
    assert main(["train", "retrieval", *base, "--batch-size", "4", "--m-per-class", "2", "--embedding-dim", "8",
                 "--out", str(tmp / "ret")]) == 0
    return tmp, data


def test_predict_classifier_top_k_with_class_names(runs, capsys):
    tmp, data = runs
    capsys.readouterr()
    out = tmp / "pred.json"
    assert main(["predict", str(tmp / "cls"), os.path.join(data, "kind-0"), os.path.join(data, "kind-1", "*.png"),
                 "--topk", "3", "--out", str(out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.load(open(out))
    assert len(lines) == len(result["files"]) == 10 and all("kind-" in line for line in lines)
    names = [f"kind-{k}" for k in range(6)]
    assert result["preprocessing"]["class_names"] == names and result["preprocessing"]["size"] == 16
    for top in result["predictions"]:
        p = [t["probability"] for t in top]
        assert len(top) == 3 and p == sorted(p, reverse=True) and 0 < sum(p) <= 1 + 1e-6
        assert all(t["class"] == names[t["index"]] for t in top)


def test_onnx_with_only_its_metadata_gives_predicts_answer(runs, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx
    import onnxruntime as ort
    import torchvision.transforms.v2.functional as F

    tmp, data = runs
    assert main(["export", str(tmp / "cls" / "best.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    meta = json.loads({p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}["recogfast.preprocessing"])
    files = sorted(os.path.join(data, "kind-2", n) for n in os.listdir(os.path.join(data, "kind-2")))
    batch = []
    for f in files:  # only the metadata: resize the shorter side, centre crop, mean / std
        x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
        x = F.resize(x, [meta["resize_shorter"]] * 2, antialias=True)  # square images
        o = (meta["resize_shorter"] - meta["size"] + 1) // 2
        x = x[:, o:o + meta["size"], o:o + meta["size"]].float() / 255
        batch.append((x - torch.tensor(meta["mean"]).view(3, 1, 1)) / torch.tensor(meta["std"]).view(3, 1, 1))
    logits = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": torch.stack(batch).numpy()})[0]
    probs = torch.from_numpy(logits).softmax(1)
    capsys.readouterr()
    assert main(["predict", str(tmp / "cls" / "best.pt"), *files, "--topk", "6", "--out", str(tmp_path / "p.json"),
                 "--device", "cpu"]) == 0
    for row, top in zip(probs, json.load(open(tmp_path / "p.json"))["predictions"]):
        assert meta["class_names"][int(row.argmax())] == top[0]["class"]
        for t in top:
            assert abs(row[t["index"]].item() - t["probability"]) < 1e-5


def test_predict_embeddings_of_a_retrieval_model(runs, capsys, tmp_path):
    tmp, data = runs
    assert main(["predict", str(tmp / "ret"), data, "--out", str(tmp_path / "emb.npy"), "--device", "cpu"]) == 0
    e = np.load(tmp_path / "emb.npy")
    info = json.load(open(tmp_path / "emb.json"))
    assert e.shape == (30, 8) and len(info["files"]) == 30 and info["preprocessing"]["l2_normalised"]
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert "class_names" not in info["preprocessing"]


@pytest.mark.parametrize("args, pattern", [
    (["/nonexistent/run", "x.png"], "no image found at 'x.png'"),
    (["RUN", "/nonexistent/*.jpg"], "no image found at '/nonexistent/*.jpg'"),
    (["EMPTY", "IMAGE"], "holds no best.pt"),
    (["RUN", "IMAGE", "--topk", "0"], "argument --topk: expected a positive integer, got '0'"),
])
def test_predict_errors_are_one_line(runs, capsys, tmp_path, args, pattern):
    tmp, data = runs
    swap = {"RUN": str(tmp / "cls"), "EMPTY": str(tmp_path), "IMAGE": os.path.join(data, "kind-0", "0.png")}
    capsys.readouterr()
    assert main(["predict", *[swap.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0], err


def test_search_returns_the_nearest_gallery_images(runs, capsys, tmp_path):
    tmp, data = runs
    queries = [os.path.join(data, "kind-3", "0.png"), os.path.join(data, "kind-5", "4.png")]
    out = tmp_path / "s"
    assert main(["search", str(tmp / "ret"), "--gallery", data, "--query", *queries, "--k", "5", "--out", str(out),
                 "--device", "cpu"]) == 0
    result = json.load(open(out / "search.json"))
    page = (out / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2 * 6  # self-contained: each query and its 5 neighbours
    # the same neighbours from predict's embeddings, a query never its own neighbour
    assert main(["predict", str(tmp / "ret"), data, "--out", str(tmp_path / "e.npy"), "--device", "cpu"]) == 0
    e, files = np.load(tmp_path / "e.npy"), json.load(open(tmp_path / "e.json"))["files"]
    for entry in result["queries"]:
        qi = files.index(entry["query"])
        sims = e @ e[qi]
        sims[qi] = -np.inf
        want = np.argsort(-sims, kind="stable")[:5]
        got = [n["similarity"] for n in entry["neighbours"]]
        np.testing.assert_allclose(got, sims[want], atol=1e-5)
        assert entry["query"] not in [n["file"] for n in entry["neighbours"]] and got == sorted(got, reverse=True)
    capsys.readouterr()
    assert main(["search", str(tmp / "ret"), "--gallery", data, "--query", queries[0], "--out", str(out)]) == 2
    assert "already holds search results" in capsys.readouterr().err
    # a classifier searches with its pooled features
    assert main(["search", str(tmp / "cls"), "--gallery", data, "--query", queries[0], "--out", str(tmp_path / "c"),
                 "--device", "cpu"]) == 0
    assert json.load(open(tmp_path / "c" / "search.json"))["embedding"] == "pooled features"
