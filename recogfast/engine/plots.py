"""The training curves a run writes beside its checkpoints (``loss.png``, ``metrics.png``): matplotlib,
Agg backend. The report's other pictures are in recogfast.report.figures, which re-exports these."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _num(rows, key):
    return [(r["epoch"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]


def curves(rows: list[dict], keys: list[str], ylabel: str, title: str, chosen: int | None = None):
    """`keys` of the epoch rows against integer epochs; the chosen epoch as a dashed line; the legend
    outside the axes so it never covers a line."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = _num(rows, k)
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=k)
    if chosen is not None:
        ax.axvline(chosen, color="0.3", ls="--", lw=1, label=f"chosen epoch {chosen}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save(fig, path) -> str:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
