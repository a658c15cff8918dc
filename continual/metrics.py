"""Continual-learning metrics: plain numpy functions of an accuracy matrix (docs/design.md, "Forgetting metrics").

`R[i][j]` is the accuracy on task j after training through the i-th task of a sequence of T tasks
(0-based); `b[j]` the accuracy on task j with its adapter and head freshly initialised, before any
training.  Cells that were never evaluated are NaN (or None in JSON).  Every average is over tasks,
never over samples.

    ACC        = (1/T)     Σ_j        R[T-1][j]
    BWT        = 1/(T-1)   Σ_{j<T-1}  (R[T-1][j] − R[j][j])                      negative = forgetting
    FWT        = 1/(T-1)   Σ_{j≥1}    (R[j-1][j] − b[j])
    Forgetting = 1/(T-1)   Σ_{j<T-1}  max_{l∈[j,T-2]} (R[l][j] − R[T-1][j])       (Chaudhry et al. 2018)
    Probe FWT  = 1/(T-1)   Σ_{j≥1}    (P_after[j] − P_before[j])

`P_before[j]` / `P_after[j]`: a linear probe's accuracy on task j (only a new head trained, on the frozen
model; `continual.probe`) with task j's starting slot on the untouched model / on the model as tasks
0..j-1 left it (warm-started where the sequence says so).  FWT is 0 by construction for isolated kinds;
the probe shows whether the representation a task starts from got better for it.

A sequence of one task has no earlier task to forget and no later task to transfer to: BWT, FWT and
forgetting are defined as 0.0 for T = 1 (not NaN), so a metric history starts at a number.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["as_matrix", "acc", "bwt", "fwt", "forgetting", "probe_fwt", "cl_metrics"]


def as_matrix(R: Sequence[Sequence[float | None]] | np.ndarray) -> np.ndarray:
    """A square float matrix, None -> NaN; refuses non-square input."""
    if isinstance(R, np.ndarray):
        M = R.astype(float)
    else:
        M = np.array([[np.nan if v is None else float(v) for v in row] for row in R], dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square T x T matrix, got shape {M.shape}")
    return M


def _needed(M: np.ndarray, cells: list[tuple[int, int]], metric: str) -> None:
    missing = [c for c in cells if np.isnan(M[c])]
    if missing:
        raise ValueError(f"{metric} needs R cells {missing} that were not evaluated")


def acc(R) -> float:
    """Average accuracy over all T tasks after the last one: (1/T) Σ_j R[T-1][j]."""
    M = as_matrix(R)
    T = len(M)
    _needed(M, [(T - 1, j) for j in range(T)], "ACC")
    return float(M[T - 1].mean())


def bwt(R) -> float:
    """Backward transfer: mean over j < T-1 of R[T-1][j] − R[j][j] (0.0 when T = 1)."""
    M = as_matrix(R)
    T = len(M)
    if T == 1:
        return 0.0
    _needed(M, [(T - 1, j) for j in range(T - 1)] + [(j, j) for j in range(T - 1)], "BWT")
    return float(np.mean([M[T - 1, j] - M[j, j] for j in range(T - 1)]))


def fwt(R, b: Sequence[float | None]) -> float:
    """Forward transfer: mean over j >= 1 of R[j-1][j] − b[j] (0.0 when T = 1)."""
    M = as_matrix(R)
    T = len(M)
    if len(b) != T:
        raise ValueError(f"b has {len(b)} entries for a {T} x {T} matrix R")
    if T == 1:
        return 0.0
    base = np.array([np.nan if v is None else float(v) for v in b])
    _needed(M, [(j - 1, j) for j in range(1, T)], "FWT")
    if np.isnan(base[1:]).any():
        raise ValueError("FWT needs b[j] for every j >= 1")
    return float(np.mean([M[j - 1, j] - base[j] for j in range(1, T)]))


def probe_fwt(after: Sequence[float | None], before: Sequence[float | None]) -> float:
    """Linear-probe forward transfer: mean over j >= 1 of after[j] − before[j] (0.0 for one task)."""
    if len(after) != len(before):
        raise ValueError(f"probe accuracies: {len(after)} after, {len(before)} before")
    T = len(after)
    if T <= 1:
        return 0.0
    pairs = [(after[j], before[j]) for j in range(1, T)]
    if any(a is None or b is None or np.isnan(a) or np.isnan(b) for a, b in pairs):
        raise ValueError("probe FWT needs both probe accuracies for every j >= 1")
    return float(np.mean([a - b for a, b in pairs]))


def forgetting(R) -> float:
    """Chaudhry forgetting: mean over j < T-1 of the largest drop from any earlier R[l][j] (l in [j, T-2])
    to R[T-1][j] (0.0 when T = 1).  Can be negative when every later value beats all earlier ones."""
    M = as_matrix(R)
    T = len(M)
    if T == 1:
        return 0.0
    _needed(M, [(l, j) for j in range(T - 1) for l in range(j, T)], "forgetting")
    return float(np.mean([max(M[l, j] for l in range(j, T - 1)) - M[T - 1, j] for j in range(T - 1)]))


def cl_metrics(R, b: Sequence[float | None] | None = None) -> dict[str, float | None]:
    """{"acc", "bwt", "fwt", "forgetting"} of R (FWT is None without b)."""
    return {
        "acc": acc(R),
        "bwt": bwt(R),
        "fwt": fwt(R, b) if b is not None else None,
        "forgetting": forgetting(R),
    }
