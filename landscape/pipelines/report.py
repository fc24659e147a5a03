"""What a run says before and after computing: the sanity report (direction scales, the centre against the
checkpoint's own metrics, BatchNorm left unmoved), `auto` axes found where the loss rises, markers snapped onto the
grid, and a warning when the lowest loss is not at the centre."""

from __future__ import annotations

from typing import Any

import numpy as np

from landscape.base.grid import parse_range, snap_axis
from landscape.core.grid_eval import PointEvaluator
from landscape.core.params import norm
from landscape.core.surface_file import Markers, Surface
from landscape.runtime.distributed import DistInfo, broadcast_object, print0, run_on_main
from landscape.runtime.forward import batchnorm_layers, cpu_has_native_bf16


def sanity_report(job: Any, centre: dict[str, float], picked: dict[str, float], outside: list[str] = ()
                  ) -> dict[str, Any]:
    """Printed before computing and stored in the file: how far each direction reaches relative to the weights,
    the centre's metrics against those stored with the checkpoint, BatchNorm left unmoved or re-estimated,
    auto-picked axes, and markers that the grid does not cover."""
    theta_norm = norm(job.theta0)
    ratios = [norm(d) / max(theta_norm, 1e-12) for d in job.directions]
    report: dict[str, Any] = {"direction_norm_ratio": ratios, "centre": centre, "auto_range": picked}
    lines = [f"directions: |d{i + 1}|/|theta0| = {r:.3g}" for i, r in enumerate(ratios)]
    lines.append("centre: " + ", ".join(f"{k} {v:.5g}" for k, v in centre.items()))
    stored = {k: v for k, v in job.origin.metrics.items() if k in centre}
    if stored:
        worst = max(abs(centre[k] - v) / max(abs(v), 1e-12) for k, v in stored.items())
        report["checkpoint_metrics_rel_diff"] = worst
        lines.append(f"checkpoint's own metrics: {', '.join(f'{k} {v:.5g}' for k, v in stored.items())} "
                     f"(largest relative difference {worst:.2g})")
    if job.bn is not None:
        report["batchnorm_recalibrated_batches"] = job.bn[1]
        lines.append(f"BatchNorm statistics re-estimated at every point from {job.bn[1]} batches")
    elif job.dir_type == "weights" and batchnorm_layers(job.model):
        report["batchnorm_unmoved"] = True
        lines.append("warning: the model has BatchNorm running statistics and the directions do not move them "
                     "(--dir-type states, or dir_type=\"states\" in Python, moves them too)")
    if job.precision == "bf16" and job.sets[0].source.device.type == "cpu" and not cpu_has_native_bf16():
        report["bf16_emulated"] = True
        lines.append("warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and runs several "
                     "times slower than fp32: leave out --precision bf16")
    for name, half in picked.items():
        lines.append(f"--{name} auto: loss rises by {job.auto_rise:g} within +-{half:.4g}")
    for what in outside:
        lines.append(f"warning: {what} lies outside the grid; widen the axis to see it")
    if outside:
        report["markers_outside"] = outside
    print0("\n".join(lines))
    return report


def warn_if_off_centre(s: Surface) -> None:
    """A checkpoint that is not a minimum along these directions is worth a line: the picture is not a basin."""
    loss = s.loss_metrics()[0]
    if not s.done.any():
        return
    z = np.where(s.done, s.values[loss], np.nan)
    axes = [s.y, s.x] if s.y is not None else [s.x]
    centre = tuple(int(np.argmin(np.abs(a))) for a in axes)
    if not s.done[centre] or not np.isfinite(z).any():
        return
    low = np.unravel_index(np.nanargmin(z), z.shape)
    if z[low] < z[centre] and low != centre:
        where = ", ".join(f"{n}={a[i]:.3g}" for n, a, i in zip(("beta", "alpha") if s.y is not None else ("alpha",),
                                                                axes, low))
        print(f"warning: the lowest {loss} ({z[low]:.5g}) is at {where}, not at the centre ({z[centre]:.5g}): the "
              "weights are not a minimum along these directions", flush=True)


def _loss_index(evaluator: PointEvaluator) -> int:
    return evaluator.metric_names.index(evaluator.loss_names[0])


def find_rise(evaluator: PointEvaluator, axis: int, n_dirs: int, base: float, rise: float, start: float = 1 / 32,
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
