"""How numbers and images appear on the report page (shared by page.py and tasks.py)."""

from __future__ import annotations

import html
import os


def fmt(v) -> str:
    """How a number appears on the page (the tests compare it with summary.json the same way)."""
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _img(path: str, alt: str) -> str:
    return f'<img src="{html.escape(os.path.basename(path))}" alt="{html.escape(alt)}">'
