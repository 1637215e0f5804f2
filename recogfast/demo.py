"""``recogfast demo`` / ``python -m recogfast.demo`` / ``make demo``: the course's tasks end to end on the
embedded Shapes196 (no download).

1. Classification: a CUBS-ResNet-18 on the 196 classes (30 train / 10 test images per class).
2. Retrieval: the same network with a 512-d embedding head, trained with the Multi-Similarity loss on
   M-per-class batches of the 98 train classes; Recall@1/2/4/8 and MAP@R on the 98 unseen classes,
   against raw pixels and against the untrained network.
3. Multi-label classification (``--tasks ...,multilabel``): the same network with a BCE-with-logits
   head on the embedded ShapesMulti (20 labels, 1-4 objects an image); mAP (area under the PR curve and
   VOC07 11-point) on its test images, against the label-frequency baseline.
4. Verification (``--tasks ...,verify``): 6000 seeded balanced pairs of the retrieval run's test
   classes (or, without it, of the classification run's test images), scored by the cosine of their
   embeddings: ROC AUC, EER, TAR@FAR=1e-3 / 1e-2 and LFW's 10-fold accuracy; ROC in the run folder.
It prints one table (accuracy, Recall@K, mAP, verification, throughput, which kernels ran) and leaves the
run folders (checkpoints, log.csv, summary.json, loss/metric plots) under ``--out``.

Both runs train without a validation split (``val_fraction=0``): the result is the last epoch's model,
scored on the test split once, at the end; nothing is ever chosen on the test split. (The training
data are the same as before validation splits existed, so the reported numbers are too.)

On a CPU the defaults are sized so that ``make demo`` (set-up included) ends within about six minutes on
two cores (32×32 images, ImageNet stem, 3 / 4 / 6 epochs); on a GPU, and on any device with ``--full``,
they are the longer recipe (64×64, small stem, 30 epochs a task). Every default can be overridden.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the two runs and demo.json")
    p.add_argument("--data", default=None, help="Shapes196 cache folder (default $RECOGFAST_CACHE or ~/.cache/recogfast)")
    p.add_argument("--model", default="cubs_resnet18_parallel")
    p.add_argument("--device", default=None)
    p.add_argument("--image-size", type=int, default=None, help="default 32 on CPU, 64 on GPU")
    p.add_argument("--stem", choices=("imagenet", "small"), default=None,
                   help="default: small on GPU; imagenet on CPU (4× smaller maps, so a 2-core machine finishes)")
    p.add_argument("--classify-epochs", type=int, default=None)
    p.add_argument("--retrieval-epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap (for smoke tests)")
    p.add_argument("--images-per-class", type=int, default=40)
    p.add_argument("--crop-scale", type=float, default=0.35,
                   help="smallest crop area (0.35: at 0.08 most crops miss the shape, SPEC's default for photos)")
    p.add_argument("--workers", dest="num_workers", type=int, default=None)
    p.add_argument("--tasks", default="classify,retrieval,multilabel,verify",
                   help="comma-separated: classify, retrieval, multilabel, verify (default: all four)")
    p.add_argument("--multilabel-epochs", type=int, default=None)
    p.add_argument("--skip-classify", action="store_true")
    p.add_argument("--skip-retrieval", action="store_true")
    p.add_argument("--full", action="store_true",
                   help="the longer recipe on any device (64×64, small stem, 30 epochs a task: the GPU defaults; "
                        "hours on a CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


class KernelRecorder:
    """Records, per op, which implementation ``recogfast.dispatch.use_fused`` chose during the demo."""

    def __enter__(self):
        from recogfast import dispatch

        self._ctx = dispatch.record()
        self.calls = self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def table(self) -> dict[str, str]:
        from recogfast.ops import FUSED_OPS

        return {op: ", ".join(sorted(self.calls[op])) if op in self.calls else "not called by this model"
                for op in FUSED_OPS}


def _defaults(args, device: str) -> dict:
    gpu = device.startswith("cuda") or getattr(args, "full", False)
    return {
        "image_size": args.image_size or (64 if gpu else 32),
        "stem": args.stem or ("small" if gpu else "imagenet"),
        # 3 on a CPU: a fourth epoch adds 0.016 top-1 (0.2515 -> 0.2673) for 25 s of a six-minute budget
        "classify_epochs": args.classify_epochs or (30 if gpu else 3),
        "retrieval_epochs": args.retrieval_epochs or (30 if gpu else 4),
        "multilabel_epochs": args.multilabel_epochs or (30 if gpu else 6),
        "batch_size": args.batch_size or (128 if gpu else 64),
        "num_workers": args.num_workers if args.num_workers is not None else (None if gpu else 0),
    }


DEMO_TASKS = ("classify", "retrieval", "multilabel", "verify")


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def run_demo(args) -> int:
    from recogfast.engine.build import RunConfig, build_trainer, raw_pixels
    from recogfast.metrics import retrieval_metrics
    from recogfast.models import list_models

    if args.model not in list_models():
        print(f"recogfast: error: unknown model {args.model!r}; choose one of: {', '.join(list_models())}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"recogfast: error: device {device!r} asked for, but no CUDA GPU is visible", file=sys.stderr)
        return 2
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown or not tasks:
        print(f"recogfast: error: --tasks: unknown task {unknown[0] if unknown else '(none)'!r}; choose from: "
              f"{', '.join(DEMO_TASKS)}", file=sys.stderr)
        return 2
    args.skip_classify = args.skip_classify or "classify" not in tasks
    args.skip_retrieval = args.skip_retrieval or "retrieval" not in tasks
    d = _defaults(args, device)
    os.makedirs(args.out, exist_ok=True)
    print(f"recogfast demo: {args.model} ({d['stem']} stem) on Shapes196 at {d['image_size']}×{d['image_size']}, "
          f"device {device}, {torch.get_num_threads()} CPU threads", flush=True)
    common = dict(dataset="shapes196", data=args.data, model=args.model, image_size=d["image_size"], stem=d["stem"],
                  device=device, batch_size=d["batch_size"], optimizer="adamw", weight_decay=5e-4,
                  num_workers=d["num_workers"], steps_per_epoch=args.steps_per_epoch, warmup_epochs=0.5,
                  images_per_class=args.images_per_class, crop_scale=args.crop_scale, progress=not args.quiet,
                  backend="auto", val_fraction=0.0)
    rows: list[tuple[str, dict]] = []
    result: dict = {"model": args.model, "device": device, **d}
    t_start = time.perf_counter()
    with KernelRecorder() as rec:
        if not args.skip_classify:
            print("\n[classify] classification: 196 classes, 30 train / 10 test images each", flush=True)
            cfg = RunConfig(task="classify", out=os.path.join(args.out, "classify"), epochs=d["classify_epochs"],
                            lr=2e-3, label_smoothing=0.1, **common)
            trainer = build_trainer(cfg)
            s = trainer.fit()
            # The reported model is the last epoch's, scored on test once (no validation split: nothing
            # is chosen, so nothing is chosen on the test set).
            test, speed = s["test"], trainer.history[-1]["train_img_per_s"]
            result["classify"] = {"top1": test["top1"], "top5": test["top5"], "img_per_s": speed,
                                  "epochs": s["epochs_run"], "epoch": test["epoch"]}
            classes = trainer.data.datasets[0].num_classes
            rows.append(("classification: chance", {"top-1": 1 / classes, "top-5": 5 / classes}))
            rows.append(("classification: trained", {"top-1": test["top1"], "top-5": test["top5"], "img/s": speed}))
        if not args.skip_retrieval:
            print("\n[retrieval] MS loss on the 98 train classes, Recall@K on the 98 unseen classes", flush=True)
            cfg = RunConfig(task="retrieval", out=os.path.join(args.out, "retrieval"), epochs=d["retrieval_epochs"],
                            lr=1e-3, m_per_class=4, embedding_dim=512, **common)
            trainer = build_trainer(cfg)
            test_loader = trainer.data.test_loader
            raw = retrieval_metrics(*raw_pixels(test_loader))
            trainer.model.eval()
            untrained = trainer.test_evaluate_fn(trainer.model)
            print(f"baselines: Recall@1 raw pixels {raw['recall@1']:.4f}, untrained network {untrained['recall@1']:.4f}",
                  flush=True)
            s = trainer.fit()
            trained = {k: v for k, v in s["test"].items() if k not in ("epoch", "chosen_by")}
            speed = trainer.history[-1]["train_img_per_s"]
            result["retrieval"] = {"raw_pixels": raw, "untrained": untrained, "trained": trained,
                                   "img_per_s": speed, "epochs": s["epochs_run"], "epoch": s["test"]["epoch"]}
            for name, m, speed in (("retrieval: raw pixels", raw, None), ("retrieval: untrained net", untrained, None),
                                   ("retrieval: trained (MS loss)", trained, speed)):
                row = {f"R@{k}": m[f"recall@{k}"] for k in (1, 2, 4, 8)}
                row["MAP@R"] = m["map@r"]
                if speed is not None:
                    row["img/s"] = speed
                rows.append((name, row))
        if "multilabel" in tasks:
            result["multilabel"] = _multilabel(args, d, common, rows)
        if "verify" in tasks:
            result["verify"] = _verify(args, device, d, rows)
    result["kernels"] = rec.table()
    result["seconds"] = time.perf_counter() - t_start
    width = max(len(n) for n, _ in rows) if rows else 10
    for task in dict.fromkeys(n.split(":")[0].split(" (")[0] for n, _ in rows):  # one block a task
        block = [(n, r) for n, r in rows if n.split(":")[0].split(" (")[0] == task]
        cols: list[str] = []
        for _, r in block:
            cols += [c for c in r if c not in cols]
        print("\n" + "what".ljust(width) + "".join(c.rjust(10) for c in cols))
        for name, r in block:
            print(name.ljust(width) + "".join(
                (f"{r[c]:.0f}" if c == "img/s" and c in r else _fmt(r.get(c, ""))).rjust(10) for c in cols))
    print("\nkernels that ran:")
    for op, how in result["kernels"].items():
        print(f"  {op:<13} {how}")
    print(f"\n{result['seconds']:.0f} s in all; runs, logs and plots under {args.out}/")
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    from recogfast.report.after import report_after_training  # demo runs have no val: their test is the result

    for part in ("classify", "retrieval", "multilabel"):
        if os.path.exists(os.path.join(args.out, part, "summary.json")):
            report_after_training(os.path.join(args.out, part), split="test")
    return 0


def _multilabel(args, d: dict, common: dict, rows: list) -> dict:
    import numpy as np

    from recogfast.engine.build import RunConfig, build_trainer
    from recogfast.metrics import mean_average_precision

    print("\n[multilabel] ShapesMulti: 20 labels, 1-4 objects an image, BCE-with-logits head; mAP on its test images",
          flush=True)
    cfg = RunConfig(task="multilabel", out=os.path.join(args.out, "multilabel"), epochs=d["multilabel_epochs"], lr=2e-3,
                    **{**common, "dataset": "shapes-multi"})
    trainer = build_trainer(cfg)
    s = trainer.fit()
    targets = trainer.data.datasets[2].targets
    baseline = mean_average_precision(np.zeros(targets.shape), targets)["map"]  # every image alike: AP = frequency
    speed = trainer.history[-1]["train_img_per_s"]
    rows.append(("multilabel: label frequency", {"mAP": baseline}))
    rows.append(("multilabel: trained (BCE)", {"mAP": s["test"]["map"], "mAP-VOC07": s["test"]["map_voc07"],
                                               "img/s": speed}))
    return {"map": s["test"]["map"], "map_voc07": s["test"]["map_voc07"], "label_frequency_map": baseline,
            "img_per_s": speed, "epochs": s["epochs_run"], "epoch": s["test"]["epoch"]}


def _verify(args, device: str, d: dict, rows: list) -> dict | None:
    from recogfast.tasks.verify import run_verify

    run = next((os.path.join(args.out, p) for p in ("retrieval", "classify")
                if os.path.exists(os.path.join(args.out, p, "best.pt"))), None)
    if run is None:
        print("\n[verify] skipped: it needs the retrieval or the classification run (--tasks retrieval,verify)",
              flush=True)
        return None
    print(f"\n[verify] 6000 seeded balanced pairs of {os.path.basename(run)}'s test split, LFW's 10 folds", flush=True)
    r, path = run_verify(os.path.join(run, "best.pt"), folds=10, device=device, num_workers=d["num_workers"])
    t = r["test"]
    rows.append((f"verification ({os.path.basename(run)})", {"AUC": t["auc"], "EER": t["eer"],
                                                             "TAR@1e-3": t["tar@far=0.001"],
                                                             "TAR@1e-2": t["tar@far=0.01"],
                                                             "acc10f": t["kfold"]["accuracy"]}))
    print(f"verification: {path}, ROC {r['roc_png']}", flush=True)
    return {"run": run, **{k: t[k] for k in ("auc", "eer", "tar@far=0.001", "tar@far=0.01", "pairs")},
            "kfold_accuracy": t["kfold"]["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recogfast.demo", description=__doc__.splitlines()[0])
    add_demo_args(parser)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
