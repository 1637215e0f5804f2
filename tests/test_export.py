"""Deployment: every registry model (classifier and embedding head) exports to ONNX with the fused
modules as they are and runs in ONNX Runtime within 1e-4 of eager at batch 1 and 7; the Block 2
translation never builds the HW×HW matrix and stays exact where the softmax saturates; an AOTInductor
package of a small model runs in a fresh process that imported recogfast."""

import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from recogfast.models import create_model, list_models
from recogfast.nn import CUBSBlock, CUBSBlock1, CUBSBlock2, SEBlock
from recogfast.ops import cubs_spatial_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if __import__("importlib").util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} (pip install 'recogfast[onnx]')")
RTOL = 1e-4


def _max_rel(got, want) -> float:
    got = torch.as_tensor(got).double()
    want = want.detach().double()
    return float((got - want).abs().max() / want.abs().max())


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@needs_onnx
@pytest.mark.parametrize("head", ["classifier", "embedding"])
@pytest.mark.parametrize("name", list_models())
def test_registry_model_onnx_matches_eager(tmp_path, name, head):
    from recogfast.export import to_onnx

    kw = {"num_classes": 10} if head == "classifier" else {"embedding_dim": 16}
    stem = "imagenet" if name == "se_resnext50_32x4d" else "small"  # the 2048-wide net stays small this way
    model = create_model(name, stem=stem, **kw)  # train mode: to_onnx exports eval mode and restores it
    path = tmp_path / f"{name}.onnx"
    to_onnx(model, torch.randn(2, 3, 32, 32), path)
    assert model.training
    model.eval()
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_outputs()[0].name == ("logits" if head == "classifier" else "embeddings")
    import onnx

    domains = {n.domain for n in onnx.load(str(path)).graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # standard operators only: no recogfast needed to run it
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            want = model(x)
        assert got.shape == tuple(want.shape)
        assert _max_rel(got, want) < RTOL, (name, head, batch, _max_rel(got, want))
        if head == "embedding":  # the L2-normalised embedding
            torch.testing.assert_close(torch.from_numpy(got).norm(dim=1), torch.ones(batch), rtol=1e-5, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize("hw", [(9, 11), (1, 1), (16, 16)])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_block2_onnx_row_blocks_exact(tmp_path, hw, scale):
    """HW = 99 is one full block of 64 rows and a partial one; at scale 30 every softmax row saturates."""
    from recogfast.export import to_onnx

    block = CUBSBlock2(8).eval()
    to_onnx(block, torch.randn(2, 8, *hw), tmp_path / "b2.onnx")
    x = torch.randn(3, 8, *hw) * scale
    got = _session(tmp_path / "b2.onnx").run(None, {"images": x.numpy()})[0]
    p = [t.double() for conv in (block.q, block.k, block.v) for t in (conv.weight.reshape(-1), conv.bias)]
    want = cubs_spatial_reference(x.double(), *p)
    assert _max_rel(got, want) < RTOL


@needs_onnx
def test_block2_onnx_never_builds_the_hw_matrix(tmp_path):
    """Every value in the exported Block 2 graph, the Loop body included, has at most ROWS·HW elements
    per sample (checked on ONNX's inferred shapes with the batch set to 1)."""
    import onnx

    from recogfast.export import to_onnx
    from recogfast.export._onnx_ops import ROWS

    h = w = 20  # HW = 400 > ROWS = 64
    to_onnx(CUBSBlock2(4), torch.randn(2, 4, h, w), tmp_path / "b2.onnx", dynamic_batch=False)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "b2.onnx")), data_prop=True)
    graphs = [model.graph] + [a.g for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    assert len(graphs) == 2  # the row-block Loop
    sizes = []
    for g in graphs:
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            if dims and all(d is not None for d in dims):
                sizes.append((vi.name, dims))
    assert max(torch.Size(d).numel() for _, d in sizes) <= max(ROWS * h * w, 2 * 4 * h * w)
    assert not any(torch.Size(d).numel() >= (h * w) ** 2 for _, d in sizes)


@needs_onnx
def test_onnx_fixed_batch_and_bad_example(tmp_path):
    from recogfast.export import to_onnx

    model = nn.Sequential(SEBlock(8), CUBSBlock1(8), CUBSBlock(8, "parallel")).eval()
    to_onnx(model, torch.randn(3, 8, 5, 5), tmp_path / "m.onnx", dynamic_batch=False)
    session = _session(tmp_path / "m.onnx")
    assert session.get_inputs()[0].shape == [3, 8, 5, 5]
    x = torch.randn(3, 8, 5, 5)
    with torch.no_grad():
        assert _max_rel(session.run(None, {"images": x.numpy()})[0], model(x)) < RTOL
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        to_onnx(model, torch.randn(8, 5, 5), tmp_path / "bad.onnx")


_RUN_PACKAGE = """
import sys, torch
{imports}
runner = torch._inductor.aoti_load_package(sys.argv[1])
io = torch.load(sys.argv[2])
for x, want in zip(io["x"], io["y"]):
    torch.testing.assert_close(runner(x), want, rtol=1e-5, atol=1e-6)
print("ok", len(io["x"]))
"""


def test_pt2_package_runs_in_a_fresh_process(tmp_path):
    """torch.export + AOTInductor: the package keeps recogfast::* calls (the fused kernels run through
    the dispatcher), so the loading process imports recogfast; without it the package cannot run."""
    from recogfast.export import to_pt2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SEBlock.timm(16), CUBSBlock(16, "parallel"),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    t = time.perf_counter()
    path = to_pt2(model, torch.randn(2, 3, 12, 12), tmp_path / "small.pt2")
    compile_s = time.perf_counter() - t
    assert os.path.isfile(path) and model.training
    xs = [torch.randn(b, 3, 12, 12) for b in (1, 7)]
    with torch.no_grad():
        ys = [model.eval()(x) for x in xs]
    torch.save({"x": xs, "y": ys}, tmp_path / "io.pt")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    ok = subprocess.run([sys.executable, "-c", _RUN_PACKAGE.format(imports="import recogfast"), path,
                         str(tmp_path / "io.pt")], capture_output=True, text=True, env=env, timeout=300)
    run_s = time.perf_counter() - t
    assert ok.returncode == 0 and "ok 2" in ok.stdout, ok.stderr[-2000:]
    bare = subprocess.run([sys.executable, "-c", _RUN_PACKAGE.format(imports=""), path, str(tmp_path / "io.pt")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert bare.returncode != 0 and "recogfast" in bare.stderr, bare.stderr[-2000:]
    print(f"pt2: compile {compile_s:.1f} s, load + run in a fresh process {run_s:.1f} s")


# --- recogfast export CHECKPOINT --------------------------------------------------------------------
@pytest.fixture(scope="module")
def retrieval_checkpoint(tmp_path_factory):
    """A checkpoint as the trainer writes it (model + config), for a CUBS embedding model at 32×32."""
    model = create_model("cubs_resnet18_parallel", embedding_dim=16, stem="small")
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    config = {"task": "retrieval", "model": "cubs_resnet18_parallel", "image_size": 32, "embedding_dim": 16}
    torch.save({"model": model.state_dict(), "config": config}, path)
    return str(path), model.eval()


def _one_line_error(capsys, argv, pattern):
    from recogfast.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recogfast: error: ") and pattern in err[0], err


@needs_onnx
def test_cli_export_onnx(capsys, tmp_path, retrieval_checkpoint):
    import json

    from recogfast.cli import main

    ckpt, model = retrieval_checkpoint
    assert main(["export", ckpt, "--format", "onnx"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["file"] == ckpt[:-3] + ".onnx" and result["output"] == "embeddings"
    assert result["input"] == ["batch", 3, 32, 32] and result["max_rel_err"] < RTOL
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert _max_rel(_session(result["file"]).run(None, {"images": x.numpy()})[0], model(x)) < RTOL
    out = tmp_path / "fixed.onnx"
    assert main(["export", ckpt, "--format", "onnx", "--batch", "4", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["input"] == [4, 3, 32, 32]
    assert _session(out).get_inputs()[0].shape == [4, 3, 32, 32]


def test_cli_export_pt2(capsys, retrieval_checkpoint):
    import json

    from recogfast.cli import main

    ckpt, model = retrieval_checkpoint
    assert main(["export", ckpt, "--format", "pt2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["file"] == ckpt[:-3] + ".pt2" and result["max_rel_err"] < 1e-5  # the CLI's own check
    from recogfast.export import load_pt2

    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert _max_rel(load_pt2(result["file"])(x), model(x)) < 1e-5  # the package still loads with its metadata
    import zipfile

    with zipfile.ZipFile(result["file"]) as archive:  # the preprocessing travels inside the package
        meta = json.loads(archive.read("recogfast/preprocessing.json"))
    assert meta == result["preprocessing"] and meta["size"] == 32 and meta["output"] == "embedding" and meta["l2_normalised"]


def test_cli_export_errors_are_one_line(capsys, tmp_path, retrieval_checkpoint, monkeypatch):
    ckpt, _ = retrieval_checkpoint
    _one_line_error(capsys, ["export", str(tmp_path / "none.pt"), "--format", "onnx"], "checkpoint not found")
    _one_line_error(capsys, ["export", ckpt, "--format", "tflite"], "invalid choice: 'tflite'")
    _one_line_error(capsys, ["export", ckpt], "--format")
    _one_line_error(capsys, ["export", ckpt, "--format", "pt2", "--batch", "0"], "expected 'dynamic' or a positive integer")
    _one_line_error(capsys, ["export", ckpt, "--format", "pt2", "--out", str(tmp_path / "no" / "m.pt2")], "output folder not found")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    _one_line_error(capsys, ["export", str(junk), "--format", "pt2"], "cannot read checkpoint")
    text = tmp_path / "notes.pt"  # a text file: the unpickler's "KeyError: 105" is not what the user reads
    text.write_text("image classification notes\n")
    _one_line_error(capsys, ["export", str(text), "--format", "onnx"], "not a file written by torch.save, or damaged")
    state_dict = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), state_dict)
    _one_line_error(capsys, ["export", str(state_dict), "--format", "onnx"], "is not a recogfast checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": {"task": "classify", "model": "resnet18", "num_classes": 3}}, foreign)
    _one_line_error(capsys, ["export", str(foreign), "--format", "pt2"], "does not match its model")

    import recogfast.export

    def no_onnx():
        raise ImportError("ONNX export needs onnxscript: pip install 'recogfast[onnx]'")

    monkeypatch.setattr(recogfast.export, "check_onnx_installed", no_onnx)
    _one_line_error(capsys, ["export", ckpt, "--format", "onnx"], "pip install 'recogfast[onnx]'")
