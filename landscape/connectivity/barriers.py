"""Loss barriers along a path between two minima (Frankle et al. 2020, Entezari et al. 2022, Ainsworth et al.
2023): the largest rise of a metric above the straight mix of its endpoint values,

    B = max_t  L(path(t)) - ((1 - t) L(A) + t L(B)),

which for endpoints of unequal loss (a flat and a sharp minimum) is not the peak minus the mean. The same for the
error (100 - accuracy). Pure numpy on a path's values over t; t must run from 0 (A) to 1 (B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Barrier:
    """The barrier of one metric along one path: its height, where it is, and the endpoints' values."""

    height: float
    t: float
    at_a: float
    at_b: float
    peak: float  # the metric's largest value along the path


def barrier(t: np.ndarray, values: np.ndarray) -> Barrier:
    """The barrier of `values` (at the points `t`, t[0] = 0 and t[-1] = 1); NaN while points are missing."""
    t, values = np.asarray(t, np.float64), np.asarray(values, np.float64)
    if t[0] != 0.0 or t[-1] != 1.0:
        raise ValueError(f"a barrier needs t from 0 to 1, got {t[0]}..{t[-1]}")
    if not np.all(np.isfinite(values)):
        return Barrier(float("nan"), float("nan"), float(values[0]), float(values[-1]), float("nan"))
    excess = values - ((1.0 - t) * values[0] + t * values[-1])
    i = int(np.argmax(excess))
    return Barrier(float(excess[i]), float(t[i]), float(values[0]), float(values[-1]), float(values.max()))


def barrier_series(values: dict[str, np.ndarray], loss_metrics: list[str]) -> dict[str, np.ndarray]:
    """What barriers are taken of: every loss, and its set's error (100 - accuracy) where the set has an
    accuracy, keyed "train_loss", "train_error", ... as the metrics are named."""
    out = {}
    for loss in loss_metrics:
        out[loss] = np.asarray(values[loss], np.float64)
        prefix = loss[:-len("loss")] if loss.endswith("loss") else f"{loss}_"
        acc = values.get(f"{prefix}acc")
        if acc is not None and not np.all(np.isnan(acc)):
            out[f"{prefix}error"] = 100.0 - np.asarray(acc, np.float64)
    return out


def path_barriers(t: np.ndarray, values: dict[str, np.ndarray], loss_metrics: list[str]) -> dict[str, Barrier]:
    """The barrier of every series of barrier_series."""
    return {k: barrier(t, v) for k, v in barrier_series(values, loss_metrics).items()}


def barrier_rows(curve: Any) -> list[dict[str, Any]]:
    """One row per path and metric of a curve file's content (landscape.core.curve_file.Curve): the table
    `landscape.connect` prints and the figure script's summary.csv gathers."""
    rows = []
    for name, s in curve.paths.items():
        for metric, b in path_barriers(curve.t, s.values, s.loss_metrics()).items():
            rows.append({"path": name, "metric": metric, "barrier": b.height, "t_at_barrier": b.t,
                         "at_a": b.at_a, "at_b": b.at_b, "peak": b.peak})
    return rows
