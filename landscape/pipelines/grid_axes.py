"""The grid's axes of a request: as given, `auto[:NUM]` axes found by evaluating the loss along each direction out
to where it first rises by --auto-rise, and a plane's axes snapped so that its checkpoints are grid points."""

from __future__ import annotations

from typing import Any

import numpy as np

from landscape.base.grid import parse_range, snap_axis
from landscape.core.grid_eval import PointEvaluator
from landscape.core.surface_file import Markers
from landscape.runtime.distributed import DistInfo, broadcast_object, run_on_main


def _loss_index(evaluator: PointEvaluator) -> int:
    return evaluator.metric_names.index(evaluator.loss_names[0])


def find_rise(evaluator: PointEvaluator, axis: int, n_dirs: int, base: float, rise: float, *, start: float = 1 / 32,
              limit: float = 64.0, steps: int = 5) -> float:
    """The smallest t (to a few percent) where the loss along +-t*d_axis rises by `rise` above the centre, on
    either side (the larger of the two); `limit` if it never does. `base` is the centre's loss. About
    2 x (log2(limit/start) + steps) points."""
    k = _loss_index(evaluator)

    def loss_at(t: float) -> float:
        p = np.zeros((1, n_dirs))
        p[0, axis] = t
        return float(evaluator.evaluate(p)[0, k])

    sides = []
    for sign in (1.0, -1.0):
        lo, hi = 0.0, start
        while hi <= limit and not loss_at(sign * hi) - base >= rise:  # NaN and inf count as risen
            lo, hi = hi, hi * 2
        if hi > limit:
            sides.append(limit)
            continue
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if loss_at(sign * mid) - base >= rise else (mid, hi)
        sides.append(hi)
    return max(sides)


def resolve_axes(job: Any, evaluator: PointEvaluator, info: DistInfo, centre: list[float] | None
                 ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """The grid's coordinates; an "auto[:NUM]" axis is found by find_rise on rank 0 (which alone holds the
    centre's metrics) and shared with every rank."""
    picked: dict[str, float] = {}
    axes = []
    for i, (name, spec) in enumerate([("x", job.x), ("y", job.y)]):
        if spec is None:
            axes.append(None)
        elif isinstance(spec, str) and spec.split(":")[0] == "auto":
            num = int(spec.split(":")[1]) if ":" in spec else 51
            half = run_on_main(lambda i=i: find_rise(evaluator, i, len(job.directions),
                                                     centre[_loss_index(evaluator)], job.auto_rise), info)
            half = broadcast_object(half)
            picked[name] = half
            axes.append(np.linspace(-half, half, num))
        elif isinstance(spec, str):
            axes.append(parse_range(spec, f"--{name}"))
        else:
            axes.append(np.asarray(spec, dtype=np.float64))
    return axes[0], axes[1], picked


def snap_markers(markers: Markers | None, x: np.ndarray, y: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Axes on which the checkpoints of a plane (markers of kind "points") are grid points, so the loss drawn at
    each marker is computed there; also the markers the axes do not reach. A path's markers are left between."""
    if markers is None or markers.kind != "points":
        return x, y, []
    outside = []
    axes = [x] if y is None else [x, y]
    for i, name in enumerate(("alpha", "beta")[:len(axes)]):
        axes[i], left = snap_axis(axes[i], markers.coords[:, i])
        outside += [f"{n} ({name}={c:.4g})" for n, c in zip(markers.names, markers.coords[:, i]) if c in left]
    return axes[0], (axes[1] if y is not None else None), outside


def known_axes(job: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The grid's axes when they are known before any evaluation (none is auto), else (None, None)."""
    if any(isinstance(a, str) and a.startswith("auto") for a in (job.x, job.y)):
        return None, None
    x, y = (parse_range(a) if isinstance(a, str) else None if a is None else np.asarray(a, np.float64)
            for a in (job.x, job.y))
    return snap_markers(job.annotations.markers, x, y)[:2]
