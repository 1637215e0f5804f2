"""`recogfast verify`: pair lists (parsing, errors naming file and line: one line, exit 2), seeded
balanced pairs, the scores against a direct computation, threshold from val pairs, k-fold, the ROC in
the run folder and in the report page."""

import json

import numpy as np
import pytest
import torch

from recogfast.cli import main
from recogfast.data import DataError
from recogfast.tasks.verify import balanced_pairs, pair_scores, read_pairs


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
    from recogfast.data import Shapes196

    folder = tmp_path_factory.mktemp("shapes")
    Shapes196(cache_dir=folder, images_per_class=4)
    return str(folder)


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory, shapes_cache):
    out = tmp_path_factory.mktemp("runs") / "ret"
    argv = ["train", "retrieval", "--dataset", "shapes196", "--data", shapes_cache, "--images-per-class", "4",
            "--model", "tinynet", "--image-size", "16", "--batch-size", "32", "--steps-per-epoch", "2", "--epochs", "1",
            "--embedding-dim", "32", "--workers", "0", "--device", "cpu", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out


def _one_line_error(capsys, argv, pattern):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recogfast: error: ") and pattern in err[0], err


def _images(tmp_path, n=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img {i}.jpg" if i == 0 else tmp_path / f"img{i}.jpg"  # one name with a space
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_read_pairs_formats_and_errors(tmp_path):
    p = _images(tmp_path)
    good = tmp_path / "pairs.txt"
    good.write_text(f"# a comment\n\nimg1.jpg img2.jpg 1\n{p[3]}\timg 0.jpg\t0\n  img2.jpg   img3.jpg 0  \n")
    a, b, same = read_pairs(str(good))
    assert a == [str(p[1]), str(p[3]), str(p[2])] and b == [str(p[2]), str(p[0]), str(p[3])]
    assert same.tolist() == [True, False, False]
    cases = {"img1.jpg img2.jpg 2\n": r"bad\.txt:1: expected two image paths and 0 or 1",
             "img1.jpg img2.jpg 1\nimg1.jpg 1\n": r"bad\.txt:2: expected two image paths",
             "img1.jpg img2.jpg 1\n\nimg1.jpg gone.jpg 0\n": r"bad\.txt:3: image not found: .*gone\.jpg",
             "img1.jpg img2.jpg 1\n": r"needs both same \(1\) and different \(0\) pairs",
             "# nothing\n": "holds no pairs"}
    for text, pattern in cases.items():
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(DataError, match=pattern):
            read_pairs(str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match="not found"):
        read_pairs(str(tmp_path / "missing.txt"))


def test_balanced_pairs_are_seeded_and_balanced():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    ia, ib, same = balanced_pairs(labels, 1001, seed=3)
    assert same.sum() == 500 and len(same) == 1001
    assert (labels[ia[same]] == labels[ib[same]]).all() and (ia[same] != ib[same]).all()
    assert (labels[ia[~same]] != labels[ib[~same]]).all()
    again = balanced_pairs(labels, 1001, seed=3)
    assert all((x == y).all() for x, y in zip((ia, ib, same), again))
    assert not (balanced_pairs(labels, 1001, seed=4)[0] == ia).all()
    with pytest.raises(ValueError, match="at least 2 classes"):
        balanced_pairs(np.arange(5), 10)
    with pytest.raises(ValueError, match="the val split is too small .* give --val-pairs FILE"):
        balanced_pairs(np.arange(5), 10, split="val")


def test_pairs_that_must_repeat_are_said():
    from itertools import combinations

    from recogfast.tasks.verify import distinct_pairs, repeats_note

    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    pairs = list(combinations(range(len(labels)), 2))
    same = sum(labels[a] == labels[b] for a, b in pairs)
    assert distinct_pairs(labels) == (same, len(pairs) - same) == (40, 395)
    note = repeats_note(labels, 1001, "test")
    assert "only 40 distinct same-class pairs (30 images)" in note and "--num-pairs 80 or less" in note
    assert repeats_note(labels, 80, "test") is None
    ia, ib, s = balanced_pairs(labels, 80, seed=0)
    assert len(s) == 80  # (a draw with replacement may still repeat; the note speaks of what must)


def test_pair_scores_are_cosines_without_a_full_matrix():
    e = torch.randn(50, 8, dtype=torch.float64)
    ia, ib = np.arange(50), np.arange(50)[::-1].copy()
    s = pair_scores(e, ia, ib, chunk=7)
    expect = torch.nn.functional.cosine_similarity(e[ia], e[ib]).numpy()
    np.testing.assert_allclose(s, expect, atol=1e-12)


def test_verify_on_drawn_pairs_writes_roc_and_report(retrieval_run, capsys):
    assert main(["verify", str(retrieval_run), "--num-pairs", "400", "--folds", "10", "--workers", "0",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    r = json.load(open(retrieval_run / "verify-test.json"))
    test, val = r["test"], r["val"]
    assert test["pairs"] == 400 and test["same"] == 200 and val["pairs"] == 400 and r["embedding"] == "embedding"
    assert test["threshold"] == val["threshold"] and test["threshold_from"] == "val pairs"
    for m in (test, val):
        assert 0 <= m["eer"] <= 1 and 0 <= m["tar@far=0.001"] <= m["tar@far=0.01"] <= 1 and 0 <= m["auc"] <= 1
    assert len(test["kfold"]["fold_accuracy"]) == 10
    assert f"auc {test['auc']:.4f}  eer {test['eer']:.4f}" in text and "10-fold accuracy" in text
    assert (retrieval_run / "roc-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (retrieval_run / "report" / "index.html").read_text()  # the page train wrote, with the section added
    assert page.count("<!-- verification -->") == 1 and "roc-test.png" in page
    assert f'data-key="verify.test.test.auc">{test["auc"]:.4f}<' in page
    assert (retrieval_run / "report" / "roc-test.png").is_file()
    # a second run replaces the section; a full report rebuild keeps it
    assert main(["verify", str(retrieval_run), "--num-pairs", "400", "--workers", "0", "--device", "cpu"]) == 0
    assert (retrieval_run / "report" / "index.html").read_text().count("<!-- verification -->") == 1
    assert main(["report", str(retrieval_run), "--device", "cpu"]) == 0
    assert "verify.test.test.auc" in (retrieval_run / "report" / "index.html").read_text()


def test_verify_on_a_pair_list_matches_direct_scores(retrieval_run, shapes_cache, tmp_path, capsys):
    from recogfast.data import Shapes196
    from recogfast.metrics import verification_metrics

    ds = Shapes196(cache_dir=shapes_cache, split="test", images_per_class=4)
    ia, ib, same = balanced_pairs(ds.labels, 60, seed=1)
    lines = [f"{ds.files[a]} {ds.files[b]} {int(s)}" for a, b, s in zip(ia, ib, same)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    assert main(["verify", str(retrieval_run / "best.pt"), "--pairs", str(tmp_path / "list.txt"), "--val-pairs",
                 str(tmp_path / "list.txt"), "--workers", "0", "--device", "cpu"]) == 0
    r = json.load(open(retrieval_run / "verify-pairs-list.json"))
    # the same numbers from the embeddings computed here
    from recogfast.engine import build, load_checkpoint
    from recogfast.engine.evaluate import _config

    ckpt = load_checkpoint(retrieval_run / "best.pt")
    cfg = _config(ckpt["config"], device="cpu", num_workers=0).resolved()
    model = build.build_model(cfg, None)
    model.load_state_dict(ckpt["model"])
    e, _ = build.embed(model.eval(), build.build_eval_loader(cfg, ds))
    m = verification_metrics(pair_scores(e, ia, ib), same, threshold=r["test"]["threshold"])
    for k in ("auc", "eer", "tar@far=0.01", "accuracy"):
        assert r["test"][k] == pytest.approx(m[k], abs=1e-6), k
    assert r["val"]["accuracy"] == r["test"]["accuracy"]  # the same list: the threshold's own accuracy


def test_verify_errors_are_one_line(retrieval_run, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a.jpg b.jpg 1\n")
    _one_line_error(capsys, ["verify", str(retrieval_run), "--pairs", str(tmp_path / "p.txt"), "--device", "cpu"],
                    "p.txt:1: image not found")
    (tmp_path / "q.txt").write_text("a.jpg b.jpg yes\n")
    _one_line_error(capsys, ["verify", str(retrieval_run), "--pairs", str(tmp_path / "q.txt"), "--device", "cpu"],
                    "q.txt:1: expected two image paths and 0 or 1")
    _one_line_error(capsys, ["verify", str(tmp_path / "nothing")], "checkpoint not found")
    _one_line_error(capsys, ["verify", str(retrieval_run), "--folds", "1"], "--folds: expected an integer >= 2")
    _one_line_error(capsys, ["verify", str(retrieval_run), "--num-pairs", "1"], "--num-pairs")


def test_pair_list_without_the_runs_data_says_why_there_is_no_accuracy(retrieval_run, shapes_cache, tmp_path,
                                                                      capsys, monkeypatch):
    from recogfast.data import Shapes196
    from recogfast.engine import build

    ds = Shapes196(cache_dir=shapes_cache, split="test", images_per_class=4)
    (tmp_path / "l.txt").write_text(f"{ds.files[0]} {ds.files[1]} 1\n{ds.files[0]} {ds.files[9]} 0\n")

    def gone(cfg):
        raise FileNotFoundError("data folder not found: /gone")

    monkeypatch.setattr(build, "build_datasets", gone)
    assert main(["verify", str(retrieval_run), "--pairs", str(tmp_path / "l.txt"), "--workers", "0",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "note: no val pairs: the run's data cannot be read (data folder not found: /gone)" in out
    assert "accuracy needs --val-pairs or --folds" in out
    r = json.load(open(retrieval_run / "verify-pairs-l.json"))
    assert "accuracy" not in r["test"] and "val" not in r and r["test"]["pairs"] == 2


def test_read_lfw_pairs_txt(tmp_path):
    from PIL import Image

    for name, n in (("Ann_Lee", 1), ("Ann_Lee", 3), ("Bob_Roe", 2)):
        (tmp_path / "lfw" / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "lfw" / name / f"{name}_{n:04d}.jpg")
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn_Lee\t1\t3\nAnn_Lee\t1\tBob_Roe\t2\n")
    a, b, same = read_pairs(str(tmp_path / "pairs.txt"), root=str(tmp_path / "lfw"))
    assert a[0].endswith("Ann_Lee/Ann_Lee_0001.jpg") and b[0].endswith("Ann_Lee/Ann_Lee_0003.jpg")
    assert b[1].endswith("Bob_Roe/Bob_Roe_0002.jpg") and same.tolist() == [True, False]
    (tmp_path / "bad.txt").write_text("1\t1\nAnn_Lee\t1\t3\nAnn_Lee\tx\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: expected LFW's"):
        read_pairs(str(tmp_path / "bad.txt"), root=str(tmp_path / "lfw"))
    (tmp_path / "miss.txt").write_text("1\t1\nAnn_Lee\t1\t2\nAnn_Lee\t1\tBob_Roe\t2\n")
    with pytest.raises(DataError, match=r"miss\.txt:2: image not found: .*Ann_Lee_0002\.jpg"):
        read_pairs(str(tmp_path / "miss.txt"), root=str(tmp_path / "lfw"))
