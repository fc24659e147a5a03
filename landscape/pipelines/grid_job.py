"""The one front door of a surface: `grid_job(...)` builds a GridJob from keyword arguments, and `run_grid`
computes or resumes it with every rank of the process group, into an HDF5 file or in memory.

The commands (through landscape.pipelines.from_checkpoint), the Python API (landscape.surface), the figure
scripts and the benchmarks all build their jobs here, so what the settings imply (channels_last for image
batches, the BatchNorm data, what a resume must match) is decided in one place. It never plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from landscape.base.config import COMPILE_AFTER_S
from landscape.base.grid import grid_points
from landscape.core.grid_eval import EvalSet, PointEvaluator, compute_surface
from landscape.core.params import Params, model_tensors, snapshot, to_numpy
from landscape.core.surface_file import (
    Annotations,
    Origin,
    Surface,
    SurfaceSink,
    check_resumable,
    empty_surface,
    open_surface,
)
from landscape.pipelines.grid_axes import known_axes, resolve_axes, snap_markers
from landscape.pipelines.report import sanity_report, warn_if_off_centre
from landscape.runtime.distributed import DistInfo, broadcast_object, print0, run_on_main
from landscape.runtime.sources import StreamSource, TensorSource


@dataclass(frozen=True, kw_only=True)
class GridJob:
    """Everything a surface needs, wherever it came from; made by `grid_job`. `x`/`y` are "MIN:MAX:NUM",
    "auto[:NUM]" or arrays."""

    model: nn.Module
    theta0: Params
    directions: list[Params]
    sets: list[EvalSet]
    x: Any
    y: Any = None
    path: str | None = None  # None: keep the surface in memory
    dir_type: str = "weights"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool | None = False  # None: auto (PointEvaluator.choose_compile)
    points_per_pass: int = 1
    flush_seconds: float = 2.0
    progress: bool = True
    auto_rise: float = 1.0
    origin: Origin = field(default_factory=Origin)
    evaluation: dict[str, Any] = field(default_factory=dict)  # what decides the values: a resume must match it
    config: dict[str, Any] = field(default_factory=dict)  # the request as resolved, stored in the file
    annotations: Annotations = field(default_factory=Annotations)  # axis names and markers (planes, trajectories)
    bn: tuple[TensorSource | StreamSource, int] | None = None  # re-estimate BatchNorm from N batches of a source
    loss_name: str | None = None  # which of the metric's sums is the loss (landscape.runtime.metrics.loss_key)


def grid_job(model: nn.Module, directions: list[Params], sets: list[EvalSet], x: Any, y: Any = None, *,
             evaluation: dict[str, Any], theta0: Params | None = None, dir_type: str = "weights",
             path: str | None = None, precision: str = "fp32", channels_last: bool | None = None,
             compile: bool | None = False, points_per_pass: int = 1, flush_seconds: float = 2.0,
             progress: bool = True, auto_rise: float = 1.0, origin: Origin | None = None,
             config: dict[str, Any] | None = None, annotations: Annotations | None = None,
             bn_recalibrate: int | None = None, bn_source: TensorSource | StreamSource | None = None,
             loss_name: str | None = None) -> GridJob:
    """A grid job from keyword arguments; the one place that derives what the settings imply.

    Args:
      directions: complete dicts of tensors by name (every tensor of theta0); theta0: the centre (default: the
        model's tensors of `dir_type`, float32 copies on the CPU).
      evaluation: what decides the values besides weights, directions and grid (see evaluation_record).
      channels_last: None or True evaluates image batches (resident 4-D inputs) in channels_last; False never.
      bn_recalibrate: N re-estimates BatchNorm's running statistics at every point from N batches of
        `bn_source` (default: the set named "train", else the first set); recorded in `evaluation`.
    """
    theta0 = snapshot(model_tensors(model, dir_type), device="cpu") if theta0 is None else theta0
    channels_last, bn = evaluation_settings(sets, channels_last, bn_recalibrate, bn_source)
    if bn_recalibrate is not None:
        evaluation = {**evaluation, "bn_recalibrate": bn_recalibrate}
    return GridJob(model=model, theta0=theta0, directions=directions, sets=sets, x=x, y=y, path=path,
                   dir_type=dir_type, precision=precision, channels_last=channels_last, compile=compile,
                   points_per_pass=points_per_pass, flush_seconds=flush_seconds, progress=progress,
                   auto_rise=auto_rise, origin=origin or Origin(), evaluation=evaluation, config=config or {},
                   annotations=annotations or Annotations(), bn=bn, loss_name=loss_name)


def evaluation_settings(sets: list[EvalSet], channels_last: bool | None, bn_recalibrate: int | None,
                        bn_source: TensorSource | StreamSource | None = None
                        ) -> tuple[bool, tuple[TensorSource | StreamSource, int] | None]:
    """What the settings imply for evaluating a model on `sets`, for a surface's grid and connect's paths alike:
    channels_last for resident image batches unless refused (False), and the BatchNorm re-estimation, N batches
    of `bn_source` (default: the set named "train", else the first), or None."""
    bn = None
    if bn_recalibrate is not None:
        bn = (bn_source if bn_source is not None else train_or_first(sets), bn_recalibrate)
    return channels_last is not False and holds_images(sets), bn


def evaluation_record(splits: list[str], samples: int | None, loss: str, precision: str, data: dict[str, Any],
                      **optional: Any) -> dict[str, Any]:
    """What decides a surface's values besides the weights, the directions and the grid: a resume must match it.
    The optional keys (max_batches, params, criterion_kwargs, loss_name, ...) are recorded only when set, so files
    of earlier versions, which lack them, resume."""
    record = {"splits": list(splits), "samples": samples, "loss": loss, "precision": precision, "data": data}
    record.update({k: v for k, v in optional.items() if v is not None})
    return record


def holds_images(sets: list[EvalSet]) -> bool:
    """The first set is resident image batches (N, C, H, W): what channels_last speeds up."""
    source = sets[0].source
    return not source.streamed and source.x.ndim == 4


def train_or_first(sets: list[EvalSet]) -> TensorSource | StreamSource:
    """The source of the set named "train", else the first set's."""
    return next((s.source for s in sets if s.name == "train"), sets[0].source)


@dataclass(frozen=True)
class SurfaceRun:
    """What run_grid did: the file (or None), its number of points, how many this call computed, and the
    surface itself (on rank 0; on every rank when shared)."""

    path: str | None
    total: int
    computed: int
    surface: Surface | None

    @property
    def already_done(self) -> int:
        return self.total - self.computed


def run_grid(job: GridJob, info: DistInfo, evaluator: Any = None, share: bool = True) -> SurfaceRun:
    """Compute or resume the job's surface with every rank of the process group. The Surface is built on rank 0
    from what it computed (the file is not read back) and, with `share`, sent to every rank. `evaluator`
    (default: the job's metrics, PointEvaluator) may measure something else at each point, e.g. Hessian
    eigenvalues (landscape.curvature.point_eigen.HessianPointEvaluator)."""
    evaluator = evaluator or evaluator_of(job)
    arrays = [to_numpy(d) for d in job.directions] if job.path is not None and info.is_main else None
    if job.path is not None:  # a file made by another request is refused before anything is evaluated
        run_on_main(lambda: check_resumable(job.path, job.origin, arrays, job.evaluation, *known_axes(job)), info)
    # the centre's metrics, once, on rank 0: the sanity report shows them and an auto axis rises from them
    started = time.perf_counter()
    centre = run_on_main(lambda: evaluator.evaluate(np.zeros((1, len(job.directions))))[0].tolist(), info)
    centre_seconds = time.perf_counter() - started
    x, y, picked = resolve_axes(job, evaluator, info, centre)
    x, y, outside = snap_markers(job.annotations.markers, x, y)
    report = run_on_main(lambda: sanity_report(job, dict(zip(evaluator.metric_names, centre)), picked, outside),
                         info)
    points = grid_points(x, y)
    sink = run_on_main(lambda: open_sink(job, x, y, evaluator, arrays, report), info)
    try:
        if getattr(evaluator, "compile", False) is None:
            choose_compile(evaluator, len(job.directions), sink, info, centre_seconds)
        computed = compute_surface(evaluator, points, sink, info, job.flush_seconds, job.progress)
    finally:
        if sink is not None:
            sink.close()
    surface = sink.surface if info.is_main else None
    if info.is_main:
        warn_if_off_centre(surface)
    return SurfaceRun(job.path, len(points), computed, broadcast_object(surface) if share else surface)


def evaluator_of(job: GridJob) -> PointEvaluator:
    """The job's evaluator at a grid point: its metrics on its sets, as run_grid computes them (the benchmarks time
    this same object)."""
    return PointEvaluator(job.model, job.theta0, job.directions, job.sets, dir_type=job.dir_type,
                          precision=job.precision, channels_last=job.channels_last, compile=job.compile,
                          points_per_pass=job.points_per_pass, bn=job.bn, loss_name=job.loss_name)


def open_sink(job: GridJob, x: np.ndarray, y: np.ndarray | None, evaluator: Any, arrays: list | None,
              report: dict[str, Any]) -> SurfaceSink:
    """Where rank 0 keeps the rows: the job's surface file (created, or resumed), else a surface in memory."""
    names = evaluator.metric_names
    config = {**job.config, "loss_metrics": list(getattr(evaluator, "loss_names", []))}
    if job.path is not None:
        return open_surface(job.path, x, y, names, arrays, origin=job.origin, evaluation=job.evaluation,
                            config=config, report=report,
                            annotations=job.annotations)
    surface = empty_surface(x, y, names, job.origin, config=config, fingerprint=dict(job.evaluation), report=report,
                            annotations=job.annotations)
    return SurfaceSink(surface, names)


def choose_compile(evaluator: PointEvaluator, n_directions: int, sink: Any, info: DistInfo,
                   centre_seconds: float) -> None:
    """Auto compile: rank 0 estimates the eager seconds of one process's share of the points still to compute
    from the centre's time (a cold call; when that already reaches the threshold, a second, warm call is timed,
    so warm-up alone never decides), and every rank makes the same choice from it."""
    def estimate() -> float:
        pending = int((~sink.done_points()).sum())
        per_rank = -(-pending // info.world_size)
        seconds = centre_seconds
        if seconds * per_rank >= COMPILE_AFTER_S:
            started = time.perf_counter()
            evaluator.evaluate(np.zeros((1, n_directions)))[0].tolist()  # tolist: waits for the device
            seconds = time.perf_counter() - started
        return seconds * per_rank

    line = evaluator.choose_compile(broadcast_object(run_on_main(estimate, info)))
    print0(line)
