"""The report's sections for multi-label runs (per-class AP, images with their true and predicted
labels) and for verification results (``recogfast verify``: ROC curves and metric tables)."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import torch

from recogfast.report import figures as fg

VERIFY_BEGIN, VERIFY_END = "<!-- verification -->", "<!-- /verification -->"


def per_class_ap_figure(names: list[str], area: list[float], voc07: list[float]):
    import matplotlib.pyplot as plt

    order = sorted(range(len(names)), key=lambda i: -1 if area[i] != area[i] else area[i])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = torch.arange(len(order)).float()
    ax.bar((x - 0.2).tolist(), [area[i] for i in order], width=0.4, label="AP (area under PR)")
    ax.bar((x + 0.2).tolist(), [voc07[i] for i in order], width=0.4, label="AP (VOC07 11-point)")
    ax.set_xticks(x.tolist(), [fg.wrap(names[i], 24, 1) for i in order], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("average precision")
    ax.set_title("per-class average precision (sorted)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def multilabel(model, loader, ds, folder: Path, image_size: int, thumb) -> dict:
    """Per-class AP (both definitions) and 24 images with their labels and the model's top scores."""
    from recogfast.tasks.multilabel import multilabel_outputs, multilabel_scores
    from recogfast.metrics import mean_average_precision

    logits, t = multilabel_outputs(model, loader, ds.targets)
    scores = multilabel_scores(logits, t)
    area = mean_average_precision(logits, t, "area")["per_class"]
    voc07 = mean_average_precision(logits, t, "voc07")["per_class"]
    names = ds.class_names
    files = {"ap": fg.save(per_class_ap_figure(names, area, voc07), folder / "per_class_ap.png")}
    prob = logits.sigmoid()
    show = list(range(min(24, len(ds))))
    captions = []
    for i in show:
        true = [names[c] for c in (t[i] == 1).nonzero().flatten().tolist()]
        true += [names[c] + " (difficult)" for c in (t[i] == -1).nonzero().flatten().tolist()]
        top = prob[i].argsort(descending=True)[:2].tolist()
        captions.append(fg.wrap("true: " + ", ".join(true), 30, 3) + "\n"
                        + "\n".join(f"{fg.wrap(names[c], 22, 1)} {prob[i, c]:.2f}" for c in top))
    if show:
        files["examples"] = fg.save(fg.image_grid([thumb(ds.files[i], image_size) for i in show], captions, cols=6,
                                                  size=1.9), folder / "multilabel_examples.png")
    return {**scores, "images": len(ds), "files": files,
            "per_class": [(n, a, v) for n, a, v in zip(names, area, voc07)]}


def multilabel_html(m: dict, fmt, img) -> list[str]:
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td class='num'>{fmt(a)}</td><td class='num'>{fmt(v)}</td></tr>"
                   for n, a, v in m["per_class"])
    out = ["<h2>Multi-label classification</h2>",
           f'<p>on {m["images"]} images: mAP (area under the precision-recall curve) '
           f'<span class="num" data-key="report.map">{fmt(m["map"])}</span>, mAP (VOC07 11-point) '
           f'<span class="num" data-key="report.map_voc07">{fmt(m["map_voc07"])}</span>; '
           "VOC's difficult objects are ignored.</p>", img(m["files"]["ap"], "per-class AP"),
           "<table><tr><th>class</th><th>AP (area)</th><th>AP (VOC07)</th></tr>" + rows + "</table>"]
    if "examples" in m["files"]:
        out += ["<h3>Images: true labels, then the two highest scores</h3>", img(m["files"]["examples"], "examples")]
    return out


def verification(run: Path, folder: Path) -> list[dict]:
    """The run's ``verify-*.json`` results, each with its ROC drawn into `folder`."""
    from recogfast.tasks.verify import roc_figure

    out = []
    for path in sorted(run.glob("verify-*.json")):
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        name = r.get("name", path.stem[len("verify-"):])
        png = fg.save(roc_figure({k: r[k] for k in ("val", "test") if k in r}, f"{run.name}: {name}"),
                      folder / f"roc-{name}.png")
        out.append({"name": name, "result": r, "png": png})
    return out


def verification_html(items: list[dict], fmt, img) -> str:
    if not items:
        return ""
    keys = ["auc", "eer", "tar@far=0.001", "tar@far=0.01", "accuracy", "threshold"]
    body = [VERIFY_BEGIN, "<h2>Verification (recogfast verify)</h2>"]
    for it in items:
        r = it["result"]
        body.append(f"<h3>{html.escape(it['name'])}: {html.escape(r.get('embedding', ''))} of epoch "
                    f"{fmt(r.get('epoch'))}</h3>")
        body.append("<table><tr><th>pairs</th><th>source</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
        for part in ("val", "test"):
            if part in r:
                m = r[part]
                body.append(f"<tr><td>{part}</td><td>{html.escape(m.get('source', ''))}</td>" + "".join(
                    f'<td class="num" data-key="verify.{html.escape(it["name"])}.{part}.{k}">{fmt(m[k]) if k in m else "-"}</td>'
                    for k in keys) + "</tr>")
        if "kfold" in r.get("test", {}):
            k = r["test"]["kfold"]
            body.append(f"</table><p>{k['folds']}-fold accuracy {fmt(k['accuracy'])} ± {fmt(k['accuracy_std'])}</p>")
        else:
            body.append("</table>")
        body.append(img(it["png"], f"ROC {it['name']}"))
    body.append(VERIFY_END)
    return "\n".join(body)


def update_page(run: str | os.PathLike) -> str | None:
    """Put the run's verification section into an existing ``report/index.html`` (replacing an older
    one), without rebuilding the rest of the page; None when the run has no report page."""
    from recogfast.report.html import _img, fmt

    run = Path(run)
    page = run / "report" / "index.html"
    if not page.exists():
        return None
    section = verification_html(verification(run, run / "report"), fmt, _img)
    text = re.sub(re.escape(VERIFY_BEGIN) + ".*?" + re.escape(VERIFY_END) + "\n?", "", page.read_text(), flags=re.S)
    text = text.replace("\n</body>", "\n" + section + "\n</body>", 1)
    page.write_text(text)
    return str(page)
