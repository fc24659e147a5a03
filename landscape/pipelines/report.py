"""What a run says before and after computing: the sanity report (direction scales, the centre against the
checkpoint's own metrics, BatchNorm left unmoved, the auto axes picked, markers off the grid), and a warning when
the lowest loss is not at the centre. It evaluates nothing (the axes are pipelines.grid_axes's)."""

from __future__ import annotations

from typing import Any

import numpy as np

from landscape.core.params import norm
from landscape.core.surface_file import Surface
from landscape.runtime.distributed import print0
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
