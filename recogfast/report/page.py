"""index.html: one self-contained page (inline CSS, images by relative path inside report/)."""

from __future__ import annotations

import html
from pathlib import Path

from recogfast.report.html import _img, fmt

CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}td.num{text-align:right;font-family:monospace}
.note{background:#fff6d6;padding:.5em}"""


def _metrics_table(summary: dict) -> str:
    out = ["<table><tr><th>split</th><th>epoch</th><th>metric</th><th>value</th></tr>"]
    for split in ("val", "test"):
        block = summary.get(split) or {}
        for k, v in block.items():
            if k in ("epoch", "chosen_by") or not isinstance(v, (int, float)):
                continue
            out.append(f'<tr><td>{split}</td><td>{fmt(block.get("epoch"))}</td><td>{html.escape(k)}</td>'
                       f'<td class="num" data-key="{split}.{html.escape(k)}">{fmt(v)}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def write_page(folder: Path, run: Path, summary: dict, s: dict, note: str | None) -> Path:
    cfg = summary.get("config") or {}
    title = f"{run.name}: {cfg.get('model', '?')} · {cfg.get('task', '?')} on {cfg.get('dataset', '?')}"
    seconds = summary.get("seconds")
    took = f"{seconds:.0f}" if isinstance(seconds, (int, float)) else "?"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>epochs run {fmt(summary.get('epochs_run'))}, chosen epoch "
            f"{fmt((summary.get('test') or {}).get('epoch') or summary.get('best_epoch'))} "
            f"({html.escape(str((summary.get('test') or {}).get('chosen_by', '')))}); training took "
            f"{took} s</p>",
            "<h2>Results (summary.json)</h2>", _metrics_table(summary)]
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    if s.get("curves"):
        body.append("<h2>Training curves</h2>")
        body += [_img(p, t) for t, p in s["curves"]]
    aug = s.get("augmented")
    if aug:
        body += [f"<h2>What the model sees: augmented training images ({html.escape(aug['backend'])})</h2>",
                 f"<p>The first training batch of the run's seed: {html.escape(aug['augment'])}. A flip or a policy "
                 f"that is wrong for the data (digits, text, signs) shows here: `--hflip 0`.</p>",
                 _img(aug["file"], "augmented training images")]
    ev = s.get("evaluated")
    if ev:
        body.append(f"<p>Pictures below: <b>{html.escape(ev['checkpoint'])}</b> (epoch {fmt(ev['epoch'])}) on the "
                    f"<b>{html.escape(ev['split'])}</b> split.</p>")
    c = s.get("classification")
    if c:
        body += ["<h2>Classification</h2>",
                 f'<p>top-1 on {c["images"]} images: <span class="num" data-key="report.top1">{fmt(c["top1"])}</span></p>',
                 "<h3>Per-class accuracy</h3>", _img(c["files"]["per_class"], "per-class accuracy"),
                 "<table><tr><th>worst class</th><th>accuracy</th></tr>"
                 + "".join(f"<tr><td>{html.escape(n)}</td><td class='num'>{a:.2f}</td></tr>" for n, a in c["worst"])
                 + "</table>",
                 "<h3>Confusion matrix</h3>", _img(c["files"]["confusion"], "confusion matrix"),
                 "<h3>Most confused pairs</h3>",
                 "<table><tr><th>true</th><th>predicted as</th><th>count</th><th>example</th></tr>"
                 + "".join(f"<tr><td>{html.escape(p['true'])}</td><td>{html.escape(p['pred'])}</td>"
                           f"<td class='num'>{p['count']}</td><td>{_img(p['image'], 'example') if p['image'] else ''}</td></tr>"
                           for p in c["pairs"]) + "</table>"]
        if "misclassified" in c["files"]:
            body += ["<h3>Misclassified images (most confident first): true → predicted, confidence</h3>",
                     _img(c["files"]["misclassified"], "misclassified")]
    r = s.get("retrieval")
    if r:
        body += ["<h2>Retrieval</h2>",
                 "<p>Each row: a query (black border) then its 8 nearest images; green = same class, red = other; "
                 "the number is the cosine similarity.</p>", _img(r["files"]["grid"], "retrieval grid"),
                 "<h3>Recall@K</h3>", _img(r["files"]["recall"], "Recall@K"),
                 "<table><tr>" + "".join(f"<th>R@{k}</th>" for k in (1, 2, 4, 8, 16, 32)) + "</tr><tr>"
                 + "".join(f'<td class="num" data-key="report.recall@{k}">{fmt(r["recall"][k])}</td>' for k in (1, 2, 4, 8, 16, 32))
                 + "</tr></table>",
                 f"<h3>Embedding map ({html.escape(r['method'])})</h3>", _img(r["files"]["map"], "embedding map")]
    if s.get("multilabel"):
        from recogfast.report.tasks import multilabel_html

        body += multilabel_html(s["multilabel"], fmt, _img)
    if s.get("verification"):
        from recogfast.report.tasks import verification_html

        body.append(verification_html(s["verification"], fmt, _img))
    w = s.get("why")
    if w:
        body.append("<h2>Why this class: Grad-CAM, guided backpropagation, guided Grad-CAM (last conv layer)</h2>")
        body.append(_img(w["file"], "Grad-CAM") if "file" in w else f'<p class="note">{html.escape(w["missing"])}</p>')
    a = s.get("attention")
    if a:
        body.append("<h2>Attention: CUBS gates</h2>")
        body += [_img(a[k], f"CUBS {k} gates") for k in ("spatial", "channel") if k in a]
    if not w:
        body.append("<p>Grad-CAM / guided backpropagation are drawn for (single-label) classification runs only.</p>")
    body.append(f"<p><small>report built in {s.get('seconds', 0):.1f} s</small></p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = folder / "index.html"
    path.write_text(page)
    return path
