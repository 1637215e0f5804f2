"""Matplotlib figures of a run (Agg backend, no display): each function returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from recogfast.engine.plots import _num, curves, save  # noqa: E402, F401  (the run's curves, one implementation)

GREEN, RED = (0.1, 0.7, 0.1), (0.85, 0.1, 0.1)


def wrap(name: str, width: int = 16, lines: int = 3) -> str:
    """A class name on at most `lines` lines of at most `width` characters, broken after spaces, dashes
    and underscores (inside a word only when it is longer than a line); never cut silently: what does
    not fit ends in "…"."""
    import re

    out = [""]
    for token in re.split(r"(?<=[ _-])", str(name)):
        while token:
            room = width - len(out[-1])
            if len(token.rstrip()) <= room:
                out[-1] += token
                break
            if out[-1].strip():  # the token starts a new line
                out.append("")
                continue
            out[-1], token = token[:width], token[width:]  # a token longer than a line
            out.append("")
    out = [line.rstrip() for line in out if line.strip()]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: width - 1].rstrip() + "…"
    return "\n".join(out)


def per_class_accuracy(acc: torch.Tensor, names: list[str], worst: int = 10):
    """Sorted per-class accuracy as a strip (readable for 200 classes), the `worst` named."""
    order = torch.argsort(acc, stable=True)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(range(len(acc)), acc[order].tolist(), width=1.0, color="tab:blue")
    ax.set_xlim(-0.5, len(acc) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"class (sorted by accuracy, {len(acc)} classes)")
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    lines = [f"{wrap(names[i], 40, 1)}: {acc[i]:.2f}" for i in order[:worst].tolist()]
    ax.text(1.01, 1.0, "worst classes\n" + "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7,
            family="monospace")
    ax.set_title("per-class accuracy", fontsize=10)
    fig.tight_layout()
    return fig


def confusion(cm: torch.Tensor):
    """Row-normalised confusion matrix heat map (rows: true class, columns: predicted)."""
    rows = cm.float() / cm.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(rows.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (row-normalised)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _frame(ax, color, width=4):
    for s in ax.spines.values():
        s.set_visible(True)
        s.set_color(color)
        s.set_linewidth(width)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images: list, captions: list[str], colors: list | None = None, cols: int = 8, size: float = 1.3):
    """Thumbnails (HWC uint8 arrays) with captions and optional coloured borders."""
    rows = max(1, (len(images) + cols - 1) // cols)
    caption_lines = max((c.count("\n") + 1 for c in captions), default=1)
    # each caption line at 6 pt takes about 0.1 inch: rows leave room for the longest, so none overlaps
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * (size + 0.12 * caption_lines + 0.15)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(images):
            ax.axis("off")
            continue
        ax.imshow(images[i])
        ax.set_title(captions[i], fontsize=6)
        _frame(ax, colors[i] if colors else "0.7", 4 if colors else 0.5)
    fig.tight_layout()
    return fig


def retrieval_grid(queries: list, neighbours: list[list], same: list[list[bool]], sims: list[list[float]],
                   names: list[str], size: float = 1.1):
    """One row per query: the query (black border) then its nearest gallery images, green = same class."""
    k = max((len(n) for n in neighbours), default=0)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=((k + 1) * size, len(queries) * (size + 0.35)), squeeze=False)
    for r, q in enumerate(queries):
        axes[r, 0].imshow(q)
        axes[r, 0].set_title(wrap(names[r], 18, 2), fontsize=5)
        _frame(axes[r, 0], "black", 3)
        for c in range(k):
            ax = axes[r, c + 1]
            if c >= len(neighbours[r]):
                ax.axis("off")
                continue
            ax.imshow(neighbours[r][c])
            ax.set_title(f"{sims[r][c]:.3f}", fontsize=6)
            _frame(ax, GREEN if same[r][c] else RED, 4)
    fig.tight_layout()
    return fig


def recall_curve(ks: list[int], values: list[float], title: str):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, values, marker="o", ms=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks([k for k in ks if k & (k - 1) == 0])  # powers of two
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def embedding_map(points: torch.Tensor, labels: torch.Tensor, thumbs: list | None = None, title: str = ""):
    """2-D points coloured by class, with a few thumbnails placed at their points."""
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), c=labels.numpy(), cmap="tab20", s=8)
    if thumbs:
        from matplotlib.offsetbox import AnnotationBbox, OffsetImage

        for i, img in thumbs:
            ab = AnnotationBbox(OffsetImage(img, zoom=0.8), (float(points[i, 0]), float(points[i, 1])), frameon=False)
            ax.add_artist(ab)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


