"""The pipeline behind the CLIs: checkpoint -> model -> directions -> grid evaluation -> HDF5 file.

`run_surface(SurfaceConfig, DistInfo)` is the one library call of `landscape.plot1d`/`plot2d`: it loads the
checkpoint (weights_only), rebuilds model and data, makes or loads the directions, and computes (or resumes)
the surface file. It never plots; the CLIs render the file afterwards on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from landscape.checkpoint import file_sha256, load_data_for, load_model
from landscape.cli import check_writable
from landscape.config import SurfaceConfig
from landscape.directions import DirectionSpec, check_compatible, create_random_directions, target_direction
from landscape.distributed import DistInfo, run_on_main
from landscape.errors import UserError
from landscape.evaluation import get_criterion, resolve_precision
from landscape.grid import grid_points, parse_range
from landscape.io import Origin, Training, open_surface, read_directions
from landscape.params import Params, from_numpy, model_tensors, snapshot, to_numpy
from landscape.surface import EvalSet, PointEvaluator, compute_surface, select_samples


def load_eval_sets(ckpt: dict[str, Any], cfg: SurfaceConfig, device: torch.device) -> list[EvalSet]:
    data = load_data_for(ckpt, cfg.data_dir, cfg.download)
    sets = []
    for split in cfg.splits:
        x, y = select_samples(*data.split(split), cfg.samples, split)
        memory = torch.channels_last if (x.ndim == 4 and cfg.channels_last is not False) else torch.contiguous_format
        sets.append(EvalSet(split, x.to(device).contiguous(memory_format=memory), y.to(device)))
    return sets


def make_directions(model: torch.nn.Module, cfg: SurfaceConfig) -> tuple[Params, list[Params]]:
    """theta0 (float32, CPU) and the directions: from a file, toward a target checkpoint, or random."""
    theta0 = snapshot(model_tensors(model, cfg.dir_type), device="cpu")
    n = 1 if cfg.y is None else 2
    spec = DirectionSpec(cfg.dir_type, cfg.norm, cfg.ignore, cfg.seed, cfg.orthogonal)
    if cfg.directions_file:
        dirs = [from_numpy(d) for d in read_directions(cfg.directions_file)]
        if len(dirs) < n:
            raise UserError(f"{cfg.directions_file} holds {len(dirs)} direction(s) but a {cfg.kind} surface needs {n}")
        for d in dirs[:n]:
            check_compatible(d, theta0, f"direction in {cfg.directions_file}")
        return theta0, dirs[:n]
    if cfg.target:
        model1, _ = load_model(cfg.target)
        d1 = target_direction(theta0, snapshot(model_tensors(model1, cfg.dir_type), device="cpu"))
        return theta0, [d1, *create_random_directions(theta0, 2, spec)[1:n]]
    return theta0, create_random_directions(theta0, n, spec)


def resolve_batch_size(cfg: SurfaceConfig, device: torch.device) -> int:
    return cfg.eval_batch_size or (1024 if device.type == "cuda" else 256)


@dataclass(frozen=True)
class SurfaceRun:
    """What run_surface did: the file, its number of points, and how many of them this call computed."""

    path: str
    total: int
    computed: int

    @property
    def already_done(self) -> int:
        return self.total - self.computed


def origin_of(cfg: SurfaceConfig, ckpt: dict[str, Any]) -> Origin:
    """What the surface file records about its centre checkpoint."""
    return Origin(os.path.abspath(cfg.checkpoint), file_sha256(cfg.checkpoint),
                  os.path.abspath(cfg.target) if cfg.target else "", ckpt["model"], ckpt.get("metrics", {}),
                  Training.from_train_config(ckpt.get("train_config", {})))


def run_surface(cfg: SurfaceConfig, info: DistInfo) -> SurfaceRun:
    """Compute or resume the surface file of cfg, with every rank of the process group taking part."""
    model, ckpt = load_model(cfg.checkpoint)
    sets = load_eval_sets(ckpt, cfg, info.device)
    theta0, dirs = make_directions(model, cfg)
    x = parse_range(cfg.x, "--x")
    y = parse_range(cfg.y, "--y") if cfg.y is not None else None
    precision = resolve_precision(cfg.precision, info.device)
    evaluator = PointEvaluator(model, theta0, dirs, sets, cfg.dir_type, resolve_batch_size(cfg, info.device),
                               get_criterion(cfg.loss), precision,
                               channels_last=sets[0].x.ndim == 4 and cfg.channels_last is not False,
                               compile=cfg.compile, points_per_pass=cfg.points_per_pass)
    origin = origin_of(cfg, ckpt)
    # What decides the values besides the checkpoint, the directions and the grid: a resume must match it.
    evaluation = {"splits": list(cfg.splits), "samples": cfg.samples, "loss": cfg.loss, "precision": precision,
                  "data": ckpt["data"]}
    path = cfg.path
    sink = run_on_main(lambda: open_surface(path, x, y, evaluator.metric_names, [to_numpy(d) for d in dirs], origin,
                                            evaluation, asdict(cfg)), info)
    points = grid_points(x, y)
    try:
        computed = compute_surface(evaluator, points, sink, info, cfg.flush_seconds, cfg.progress)
    finally:
        if sink is not None:
            sink.close()
    return SurfaceRun(path, len(points), computed)


def check_output_folder(folder: str, info: DistInfo) -> None:
    """Create the output folder on rank 0 and fail early, on every rank, if it cannot be written."""
    run_on_main(lambda: check_writable(folder), info)
