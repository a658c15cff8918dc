"""A heatmap of the accuracy matrix R, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def heatmap_figure(R: Sequence[Sequence[float | None]], tasks: Sequence[str], title: str = ""):
    """A matplotlib Figure of R: rows = after training task i, columns = evaluated task j; cells not
    evaluated are left blank."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    M = np.array([[np.nan if v is None else 100 * float(v) for v in row] for row in R], dtype=float)
    T = len(tasks)
    size = 1.2 + 0.9 * T
    fig = Figure(figsize=(size + 1.2, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(M), vmin=0, vmax=100, cmap="viridis")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_xticks(range(T), labels=list(tasks), rotation=30, ha="right")
    ax.set_yticks(range(T), labels=[f"after {t}" for t in tasks])
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("trained through task i")
    for i in range(T):
        for j in range(T):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.0f}", ha="center", va="center",
                        color="black" if M[i, j] > 60 else "white", fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def save_heatmap(R: Sequence[Sequence[float | None]], tasks: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Write the heatmap of R as a PNG; returns the path."""
    path = Path(path)
    heatmap_figure(R, tasks, title).savefig(path, format="png")
    return path
