"""What ``recogfast export CHECKPOINT`` does: rebuild the checkpoint's model, export it, check the file."""

from __future__ import annotations

import dataclasses
import os
import time

import torch

FORMATS = ("onnx", "pt2")


def model_from_checkpoint(path: str):
    """(model in eval mode on the CPU, resolved RunConfig, the checkpoint's saved config dict) of a checkpoint
    written by the trainer (read once: the saved dict also holds what RunConfig does not, e.g. class names).
    Raises FileNotFoundError / ValueError with a one-line message for a missing or foreign file."""
    from recogfast.engine import build
    from recogfast.engine.checkpoint import load_checkpoint
    from recogfast.engine.finetune import scored_weights

    ckpt = load_checkpoint(path)
    saved = ckpt.get("config") or {}
    known = {f.name for f in dataclasses.fields(build.RunConfig)}
    cfg = build.RunConfig(**{k: v for k, v in saved.items() if k in known})
    cfg.device, cfg.weights = "cpu", None
    cfg = cfg.resolved()
    try:
        model = build.build_model(cfg, saved.get("num_classes"))
        model.load_state_dict(scored_weights(ckpt))  # the EMA weights when the run kept them
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} does not match its model: {str(err).splitlines()[0]}") from None
    return model.eval(), cfg, saved


def _max_rel_err(got, want) -> float:
    got, want = torch.as_tensor(got).float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def export_checkpoint(path: str, fmt: str, out: str | None = None, batch: int | None = None,
                      image_size: int | None = None) -> dict:
    """Export the checkpoint's model to `out` (default: the checkpoint's path with .onnx / .pt2).

    `batch` None: dynamic batch; an integer fixes it. The input is [batch, 3, S, S] with S the
    checkpoint's image size unless `image_size` is given. After writing, the file is run once (ONNX
    Runtime, or the AOTInductor package) on a random batch and compared with eager PyTorch; the result
    says the largest error relative to the output's largest magnitude."""
    from recogfast.export import load_pt2, output_name, to_onnx, to_pt2

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    model, cfg, saved = model_from_checkpoint(path)
    size = image_size or cfg.image_size
    out = out or os.path.splitext(path)[0] + "." + fmt
    example = torch.randn(batch or 2, 3, size, size)
    t = time.perf_counter()
    if fmt == "onnx":
        to_onnx(model, example, out, dynamic_batch=batch is None)
    else:
        to_pt2(model, example, out, dynamic_batch=batch is None)
    seconds = time.perf_counter() - t
    meta = attach_preprocessing(out, fmt, saved, size)
    check = torch.randn(batch or 3, 3, size, size)
    with torch.no_grad():
        want = model(check)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": check.numpy()})[0]
    else:
        got = load_pt2(out)(check)
    return {"file": out, "format": fmt, "model": cfg.model, "input": ["batch" if batch is None else batch, 3, size, size],
            "output": output_name(model), "export_s": round(seconds, 1), "max_rel_err": _max_rel_err(got, want),
            "preprocessing": meta}


PREPROCESSING_KEY = "recogfast.preprocessing"  # ONNX metadata_props key; in a .pt2 package: recogfast/preprocessing.json


def attach_preprocessing(out: str, fmt: str, config: dict, size: int) -> dict:
    """Write the preprocessing of a checkpoint's saved `config` (recogfast.tasks.preprocessing:
    input size, resize and crop, mean/std, class names, whether the output is an L2-normalised embedding)
    into the exported file, so a deployment needs nothing else: ONNX ``metadata_props`` as JSON, a JSON entry in the .pt2 archive."""
    import json
    import zipfile

    from recogfast.tasks import preprocessing

    meta = preprocessing({**config, "image_size": size})
    text = json.dumps(meta)
    if fmt == "onnx":
        import onnx

        proto = onnx.load(out)
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, PREPROCESSING_KEY: text})
        onnx.save(proto, out)
    else:
        with zipfile.ZipFile(out, "a") as archive:
            archive.writestr("recogfast/preprocessing.json", text)
    return meta
