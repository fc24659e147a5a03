"""A surface file from a checkpoint: the commands' request (a SurfaceConfig) turned into a grid job through the
one builder (landscape.pipelines.grid_job), and a Hessian map on the same grid.

`run_surface(SurfaceConfig, DistInfo)` reads the checkpoint once (ours, or with `--model`/`--data` a weights file
and the user's own code), makes the directions asked for, resolves `auto` axes and computes or resumes the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from typing import Any

from landscape.base.config import CURVATURES, SurfaceConfig
from landscape.base.errors import UserError
from landscape.base.grid import covering_axis
from landscape.core.directions import output_axes
from landscape.core.grid_eval import EvalSet
from landscape.core.surface_file import Markers, Origin, Training
from landscape.curvature.point_eigen import HessianPointEvaluator
from landscape.pipelines.chosen_directions import make_directions, trajectory_listing
from landscape.pipelines.grid_job import GridJob, SurfaceRun, evaluation_record, grid_job, run_grid, train_or_first
from landscape.pipelines.inputs import Centre, load_centre, load_sets, resolve_batch_size, training_source
from landscape.runtime.distributed import DistInfo
from landscape.runtime.forward import resolve_precision
from landscape.runtime.sources import TensorSource


def origin_of(cfg: SurfaceConfig, centre: Centre) -> Origin:
    """What the surface file records about its centre weights."""
    target = os.path.abspath(cfg.target) if cfg.target else ""
    path = os.path.abspath(cfg.checkpoint)
    if centre.ckpt is None:
        return Origin(path, centre.sha256, target,
                      {"name": cfg.model or "transformers (save_pretrained folder)", "kwargs": dict(cfg.model_kwargs)})
    return Origin(path, centre.sha256, target, centre.ckpt["model"], centre.ckpt.get("metrics", {}),
                  Training.from_train_config(centre.ckpt.get("train_config", {})))


def plane_axes(cfg: SurfaceConfig, markers: Markers) -> tuple[Any, Any]:
    """The axes of a plane through checkpoints: as given, else cfg.plane_points points each covering the
    checkpoints (and the origin) with a quarter-span margin."""
    return (cfg.x or covering_axis(markers.coords[:, 0], cfg.plane_points),
            cfg.y or covering_axis(markers.coords[:, 1], cfg.plane_points))


def job_from_config(cfg: SurfaceConfig, info: DistInfo) -> GridJob:
    """cfg's grid job: its checkpoint read once, its data, its directions, through the one builder."""
    centre = load_centre(cfg, cfg.checkpoint)
    batch_size = resolve_batch_size(cfg.eval_batch_size, info.device)
    sets, data, metric = load_sets(cfg, centre.ckpt, info.device, batch_size)
    cfg = dataclasses.replace(cfg, metric=metric)  # what every later step and the file record
    needs_train = cfg.directions_file in CURVATURES or cfg.bn_recalibrate
    train = training_source(cfg, centre.ckpt, sets, info.device, batch_size) if needs_train else sets[0].source
    theta0, dirs, annotations = make_directions(centre, cfg, train, info)
    x, y = plane_axes(cfg, annotations.markers) if annotations.markers is not None else (cfg.x, cfg.y)
    precision = resolve_precision(cfg.precision, info.device)
    evaluation = evaluation_of(cfg, sets, data, precision, params=list(cfg.params) or None,
                               trainable_only=cfg.trainable_only or None,
                               trajectory=trajectory_listing(cfg.trajectory) or None)
    return grid_job(centre.model, dirs, sets, x, y, theta0=theta0, evaluation=evaluation, path=cfg.path,
                    dir_type=cfg.dir_type, precision=precision, channels_last=cfg.channels_last, compile=cfg.compile,
                    points_per_pass=cfg.points_per_pass, flush_seconds=cfg.flush_seconds, progress=cfg.progress,
                    auto_rise=cfg.auto_rise, origin=origin_of(cfg, centre),
                    config={**asdict(cfg), "filter_axes": output_axes(centre.model)},  # axes normalized along
                    annotations=annotations, bn_recalibrate=cfg.bn_recalibrate, bn_source=train,
                    loss_name=cfg.loss_name)


def evaluation_of(cfg: SurfaceConfig, sets: list[EvalSet], data: dict[str, Any], precision: str,
                  **optional: Any) -> dict[str, Any]:
    """What decides the values of cfg's evaluation besides the weights and where they are taken (a resume must
    match it): the sets, samples, loss, precision, data, batches, criterion's kwargs and loss name; `optional`
    adds a command's own keys (landscape.pipelines.grid_job.evaluation_record)."""
    return evaluation_record([s.name for s in sets] if cfg.data else list(cfg.splits), cfg.samples,
                             cfg.metric or f"criterion {cfg.criterion}", precision, data, max_batches=cfg.max_batches,
                             criterion_kwargs=cfg.criterion_kwargs or None, loss_name=cfg.loss_name, **optional)


def run_surface(cfg: SurfaceConfig, info: DistInfo, share: bool = True) -> SurfaceRun:
    """Compute or resume the surface file of cfg, with every rank of the process group taking part; the surface
    on rank 0, and on every rank with `share`."""
    return run_grid(job_from_config(cfg, info), info, share=share)


def run_hessian_map(cfg: SurfaceConfig, info: DistInfo, tol: float = 1e-3, share: bool = True,
                    curvature: str = "hessian") -> SurfaceRun:
    """lambda_max and lambda_min of the training loss's Hessian (or the `curvature` named: ggn, fisher,
    empirical_fisher) at every point of cfg's grid (the directions of cfg's surface), in OUT/<surface
    file>_hessian.h5 (_ggn.h5, ...), whose evaluation record names the curvature; points are split across ranks,
    each on its whole data."""
    if any(isinstance(a, str) and a.startswith("auto") for a in (cfg.x, cfg.y)):
        raise UserError("a Hessian map needs its axes given (MIN:MAX:NUM), not auto")
    job = job_from_config(dataclasses.replace(cfg, splits=("train",)), info)
    train = train_or_first(job.sets)
    data = (train.x, train.y) if isinstance(train, TensorSource) else train  # each rank its own points, all the data
    evaluator = HessianPointEvaluator(job.model.to(info.device), job.theta0, job.directions, data,
                                      metric=job.sets[0].metric, tol=tol, seed=cfg.seed,
                                      batch_size=getattr(train, "batch_size", 512), loss_name=cfg.loss_name,
                                      curvature=curvature)
    path = cfg.path[:-len(".h5")] + f"_{curvature}.h5"
    job = dataclasses.replace(job, path=path, evaluation={**job.evaluation, "hessian_tol": tol,
                                                          "curvature": curvature})
    return run_grid(job, info, evaluator, share)

