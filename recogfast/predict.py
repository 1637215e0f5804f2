"""``recogfast predict RUN_OR_CHECKPOINT IMAGES…``: a trained model on new images.

Classifiers print and write the top-k classes with their probabilities; retrieval models write the
L2-normalised embeddings (``.npy``, rows in the order of the JSON's ``files``). The preprocessing is the
run's own evaluation transform (``preprocessing``: resize the shorter side to size·8/7, centre crop,
ImageNet mean/std), the same that ``recogfast export`` writes into the ONNX file's metadata.
"""

from __future__ import annotations

import glob
import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
__all__ = ["predict", "preprocessing", "collect_images", "run_model"]


def preprocessing(config: dict) -> dict:
    """recogfast.tasks.preprocessing, imported when called: `recogfast --help` builds this command's
    parser and must not import recogfast.data (tests/test_cli.py)."""
    from recogfast.tasks import preprocessing as of_config

    return of_config(config)


def collect_images(inputs: list[str]) -> list[str]:
    """Files, folders (recursively: their JPEG / PNG files) and globs, in the order given, each once;
    ValueError naming an input that matches no image."""
    found: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files = sorted(os.path.join(top, n) for top, _, names in os.walk(item) for n in names
                           if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
        elif os.path.isfile(item):
            files = [item]
        else:
            files = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
        if not files:
            raise ValueError(f"no image found at {item!r} (a file, a folder of JPEG/PNG images, or a glob)")
        found += [os.path.abspath(f) for f in files]
    return list(dict.fromkeys(found))


def _load(source: str, device: str):
    from recogfast.export._checkpoint import model_from_checkpoint

    path = os.path.join(source, "best.pt") if os.path.isdir(source) else source
    if os.path.isdir(source) and not os.path.isfile(path):
        raise ValueError(f"{source} holds no best.pt: give a run folder or a checkpoint file")
    model, cfg, config = model_from_checkpoint(path)
    return model.to(device), cfg, config, path


def run_model(model, files: list[str], image_size: int, batch_size: int, device: str, features: bool = False,
              progress: bool = True, what: str = "predict"):
    """float32 [N, ...] outputs (or pooled features) of `model` on `files`, eval-transformed, in batches;
    DataError naming an unreadable image, ValueError on a non-finite output."""
    import torch

    from recogfast.data.base import decode_rgb
    from recogfast.data.errors import read_encoded
    from recogfast.data.transforms import eval_transform, normalize_batch
    from recogfast.engine.logs import Progress

    outputs = []
    bar = Progress(-(-len(files) // batch_size), what, enabled=progress and len(files) > batch_size)
    with torch.no_grad():
        for i in range(0, len(files), batch_size):
            chunk = files[i:i + batch_size]
            images = torch.stack([eval_transform(decode_rgb(read_encoded(f), f), image_size) for f in chunk])
            x = normalize_batch(images.to(device), torch.float32, channels_last=False)
            outputs.append((model.forward_features(x) if features else model(x)).float().cpu())
            bar.update(len(chunk))
    bar.close()
    out = torch.cat(outputs)
    if not torch.isfinite(out).all():
        raise ValueError("the model gave non-finite outputs on these images (a diverged checkpoint?)")
    return out


def predict(source: str, inputs: list[str], topk: int = 5, batch_size: int = 64, device: str | None = None,
            progress: bool = True) -> dict:
    """The model of `source` (a run folder: its best.pt; or a checkpoint) on the images of `inputs`.
    Returns {"checkpoint", "preprocessing", "files", and "predictions" (classifiers: top-k names and
    probabilities a file) or "embeddings" (a float32 array)}. Unreadable images are DataError naming them."""
    import numpy as np
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    files = collect_images(inputs)
    model, cfg, config, path = _load(source, device)
    meta = preprocessing(config)
    out = run_model(model, files, cfg.image_size, batch_size, device, progress=progress, what="predict")
    result = {"checkpoint": os.path.abspath(path), "preprocessing": meta, "files": files}
    if meta["output"] == "embedding":
        result["embeddings"] = out.numpy().astype(np.float32)
        return result
    from recogfast.tasks import get_task

    probs = get_task(cfg.task).probabilities(out)
    names = meta.get("class_names") or [str(c) for c in range(out.shape[1])]
    k = min(topk, out.shape[1])
    p, idx = probs.topk(k, dim=1)
    result["predictions"] = [[{"class": names[j], "index": int(j), "probability": float(q)}
                              for q, j in zip(row_p.tolist(), row_i.tolist())] for row_p, row_i in zip(p, idx)]
    return result
