"""``recogfast predict``: the argument parser and the command (the work: recogfast.predict)."""

from __future__ import annotations

import json
import os
import sys

from recogfast.cli.errors import UsageError, check_device, positive_int


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="a trained model on new images: top-k classes, or embeddings")
    p.add_argument("model", help="a run folder (its best.pt) or a checkpoint")
    p.add_argument("images", nargs="+", help="image files, folders (recursively) or globs")
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown for each image (default 5)")
    p.add_argument("--out", default=None,
                   help="write the result: FILE.json (classifiers), or FILE.npy + FILE.json (embeddings; default "
                        "embeddings.npy in the current folder)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None)
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args) -> int:
    import numpy as np

    from recogfast.predict import predict

    check_device(args.device)
    try:
        result = predict(args.model, args.images, args.topk, args.batch_size, args.device, progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    if "embeddings" in result:
        base = os.path.splitext(args.out or "embeddings.npy")[0]
        np.save(base + ".npy", result.pop("embeddings"))
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=1)
        print(f"{len(result['files'])} embeddings written to {base}.npy (files in order: {base}.json)")
        return 0
    for file, top in zip(result["files"], result["predictions"]):
        print(f"{file}: " + "  ".join(f"{t['class']} {t['probability']:.4f}" for t in top))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"written to {args.out}", file=sys.stderr)
    return 0



def register(parser, sub) -> None:
    add_predict_parser(sub)
