"""Pictures of the accuracy matrix R (a heatmap, and every task's accuracy along the sequence on one
axis), drawn with matplotlib's Agg canvas (no display, no pyplot state)."""
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


def curves_figure(R: Sequence[Sequence[float | None]], tasks: Sequence[str],
                  before: Sequence[float | None] | None = None, title: str = ""):
    """Every task's accuracy along the sequence on ONE common 0-100% axis: x = trained through task i,
    one line per task from its own training on.  MLflow's own charts auto-scale each `acc/<task>` on its
    own axis, so a drop from 96 to 94 looks like a cliff there; here drops read at their true size.
    `before[j]` (R[j-1][j], the fresh slot just before task j trained) is drawn as an open marker."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    T = len(tasks)
    fig = Figure(figsize=(2.5 + 1.1 * T, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for j, task in enumerate(tasks):
        xs = [i for i in range(T) if R[i][j] is not None]
        if not xs:
            continue
        line, = ax.plot(xs, [100 * float(R[i][j]) for i in xs], marker="o", label=task)
        if before is not None and j > 0 and before[j] is not None:
            ax.plot([j - 1], [100 * float(before[j])], marker="o", fillstyle="none", color=line.get_color())
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.3, T - 0.7)
    ax.set_xticks(range(T), labels=[f"after {t}" for t in tasks], rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, ncol=2 if T > 4 else 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def save_curves(R: Sequence[Sequence[float | None]], tasks: Sequence[str], path: str | Path,
                before: Sequence[float | None] | None = None, title: str = "") -> Path:
    """Write `curves_figure` as a PNG; returns the path."""
    path = Path(path)
    curves_figure(R, tasks, before, title).savefig(path, format="png")
    return path
