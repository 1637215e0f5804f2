"""``recogfast search RUN --gallery DIR --query IMG…``: the nearest gallery images of each query, by cosine
similarity of the model's embedding (retrieval runs) or pooled features (classifiers), written as
``search.json`` and a self-contained ``index.html`` with thumbnails (opens from the file system)."""

from __future__ import annotations

import base64
import html
import io
import os


def nearest(query, gallery, k: int, same=None):
    """(indices [Q, k], cosine similarities [Q, k]) of each query's k nearest gallery rows, exact, in
    query chunks (never a full Q × G matrix beyond a chunk), ties in recogfast.metrics' order (the lower
    gallery index first); `same[q]` = a gallery row to leave out (the query itself when it is in the
    gallery), or -1."""
    import torch
    import torch.nn.functional as F

    from recogfast.metrics.retrieval import _topk_index_tiebreak

    q, g = F.normalize(query.double(), dim=1), F.normalize(gallery.double(), dim=1)
    k = min(k, g.shape[0] - (1 if same is not None and (same >= 0).any() else 0))
    idx, sim = [], []
    for start in range(0, q.shape[0], 1024):
        s = q[start:start + 1024] @ g.T
        if same is not None:
            rows = torch.arange(s.shape[0])
            own = same[start:start + 1024]
            s[rows[own >= 0], own[own >= 0]] = float("-inf")
        top = _topk_index_tiebreak(s, k)
        idx.append(top)
        sim.append(s.gather(1, top))
    return torch.cat(idx), torch.cat(sim)


def search(source: str, gallery: list[str], queries: list[str], k: int = 8, batch_size: int = 64,
           device: str | None = None, progress: bool = True) -> dict:
    import torch

    from recogfast.tasks import get_task, preprocessing
    from recogfast.predict import _load, collect_images, run_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    g_files, q_files = collect_images(gallery), collect_images(queries)
    model, cfg, config, path = _load(source, device)
    features = get_task(cfg.task).output != "embedding"  # a classifier's pooled features
    g = run_model(model, g_files, cfg.image_size, batch_size, device, features, progress, "gallery")
    where = {f: i for i, f in enumerate(g_files)}
    q = run_model(model, q_files, cfg.image_size, batch_size, device, features, progress, "queries")
    same = torch.tensor([where.get(f, -1) for f in q_files])
    idx, sim = nearest(q, g, k, same)
    return {"checkpoint": os.path.abspath(path), "embedding": "pooled features" if features else "embedding",
            "preprocessing": preprocessing(config), "gallery_size": len(g_files),
            "queries": [{"query": f, "neighbours": [{"file": g_files[j], "similarity": float(s)}
                                                    for j, s in zip(row_i.tolist(), row_s.tolist())]}
                        for f, row_i, row_s in zip(q_files, idx, sim)]}


def _thumb_uri(path: str, size: int = 112) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_page(result: dict, folder: str) -> str:
    """``folder/index.html``: a row per query, its thumbnail then its neighbours with similarities."""
    rows = []
    for entry in result["queries"]:
        cells = [f'<td class="q"><img src="{_thumb_uri(entry["query"])}" alt="query"><br>'
                 f'{html.escape(os.path.basename(entry["query"]))}</td>']
        cells += [f'<td><img src="{_thumb_uri(n["file"])}" alt="neighbour"><br>{html.escape(os.path.basename(n["file"]))}'
                  f'<br>{n["similarity"]:.4f}</td>' for n in entry["neighbours"]]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    page = ("<!doctype html><meta charset='utf-8'><title>recogfast search</title><style>body{font-family:sans-serif}"
            "td{text-align:center;font-size:11px;padding:4px;vertical-align:top}td.q{background:#eef}</style>"
            f"<h1>Nearest gallery images</h1><p>{html.escape(result['checkpoint'])} · {result['embedding']} · "
            f"gallery of {result['gallery_size']} · cosine similarity</p><table>{''.join(rows)}</table>\n")
    path = os.path.join(folder, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path
