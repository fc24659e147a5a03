"""The pipeline behind the CLIs and the Python API: a model with its data -> directions -> grid evaluation -> HDF5
file (or an in-memory Surface).

`run_grid(GridJob, DistInfo)` is the one computing step; `landscape.api.surface` builds its job from the caller's
objects, and `run_surface(SurfaceConfig, DistInfo)` builds it from a checkpoint of ours or, with `--model`/`--data`,
from a weights file and the user's own code. Before computing, a sanity report is printed and stored (direction
scales, the centre against the checkpoint's own metrics, BatchNorm left unmoved); `auto` axes are resolved first.
It never plots.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.checkpoint import load_checkpoint, load_data_for, load_model
from landscape.cli import check_writable
from landscape.config import COMPILE_AFTER_S, HESSIAN, SurfaceConfig, import_object, run_tag
from landscape.directions import (
    DirectionSpec,
    check_compatible,
    complete,
    covered_tensors,
    create_random_directions,
    output_axes,
    plane_through,
    restrict,
    select_tensors,
    target_direction,
)
from landscape.distributed import DistInfo, broadcast_object, print0, run_on_main
from landscape.engine import EvalSet, PointEvaluator, compute_surface, select_samples
from landscape.errors import UserError
from landscape.evaluation import batchnorm_layers, cpu_has_native_bf16, resolve_precision
from landscape.grid import covering_axis, grid_points, parse_range, snap_axis
from landscape.hessian import HessianOperator, HessianPointEvaluator, eigenvalues
from landscape.io import (
    Annotations,
    Markers,
    Origin,
    Surface,
    Training,
    check_resumable,
    open_surface,
    read_directions,
    read_surface,
)
from landscape.metrics import Criterion, make_metric
from landscape.models import build_model
from landscape.params import Params, from_numpy, model_tensors, norm, snapshot, to_numpy
from landscape.pca import trajectory_pca
from landscape.sources import StreamSource, TensorSource, as_source
from landscape.weights import build_hf_model, is_hf_folder, load_weights_into, weights_sha256


@dataclass
class GridJob:
    """Everything a surface needs, wherever it came from. `x`/`y` are "MIN:MAX:NUM", "auto[:NUM]" or arrays."""

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
    loss_name: str | None = None  # which of the metric's sums is the loss (landscape.metrics.loss_key)


@dataclass(frozen=True)
class SurfaceRun:
    """What run_grid did: the file (or None), its number of points, how many this call computed, and the
    surface itself (on every rank)."""

    path: str | None
    total: int
    computed: int
    surface: Surface

    @property
    def already_done(self) -> int:
        return self.total - self.computed


class MemorySink:
    """compute_surface's sink when no file is asked for: rows kept in arrays."""

    def __init__(self, n_points: int, n_metrics: int):
        self.rows = np.full((n_points, n_metrics), np.nan)
        self.done = np.zeros(n_points, bool)

    def done_points(self) -> np.ndarray:
        return self.done.copy()

    def write(self, flat_idx: np.ndarray, rows: np.ndarray) -> None:
        self.rows[flat_idx], self.done[flat_idx] = rows, True

    def close(self) -> None:
        pass


def run_grid(job: GridJob, info: DistInfo, evaluator: Any = None) -> SurfaceRun:
    """Compute or resume the job's surface with every rank of the process group; the Surface on every rank.
    `evaluator` (default: the job's metrics, PointEvaluator) may measure something else at each point, e.g.
    Hessian eigenvalues (landscape.hessian.HessianPointEvaluator)."""
    evaluator = evaluator or PointEvaluator(job.model, job.theta0, job.directions, job.sets, job.dir_type,
                                            job.precision, job.channels_last, job.compile, job.points_per_pass,
                                            job.bn, job.loss_name)
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
    names = evaluator.metric_names
    config = {**job.config, "loss_metrics": list(getattr(evaluator, "loss_names", []))}
    if job.path is not None:
        sink = run_on_main(lambda: open_surface(job.path, x, y, names, arrays, job.origin, job.evaluation, config,
                                                report, job.annotations),
                           info)
    else:
        sink = MemorySink(len(points), len(names)) if info.is_main else None
    try:
        if getattr(evaluator, "compile", False) is None:
            choose_compile(evaluator, len(job.directions), sink, info, centre_seconds)
        computed = compute_surface(evaluator, points, sink, info, job.flush_seconds, job.progress)
    finally:
        if sink is not None:
            sink.close()
    surface = None
    if info.is_main:
        surface = (read_surface(job.path) if job.path is not None
                   else memory_surface(dataclasses.replace(job, config=config), x, y, names, sink, report))
        warn_if_off_centre(surface)
    return SurfaceRun(job.path, len(points), computed, broadcast_object(surface))


def known_axes(job: GridJob) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The grid's axes when they are known before any evaluation (none is auto), else (None, None)."""
    if any(isinstance(a, str) and a.startswith("auto") for a in (job.x, job.y)):
        return None, None
    x, y = (parse_range(a) if isinstance(a, str) else None if a is None else np.asarray(a, np.float64)
            for a in (job.x, job.y))
    return snap_markers(job.annotations.markers, x, y)[:2]


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


def memory_surface(job: GridJob, x: np.ndarray, y: np.ndarray | None, names: list[str], sink: Any,
                   report: dict[str, Any] | None) -> Surface:
    shape = (len(y), len(x)) if y is not None else (len(x),)
    values = {m: sink.rows[:, j].reshape(shape) for j, m in enumerate(names)}
    return Surface(x, y, values, sink.done.reshape(shape), job.origin, job.config, dict(job.evaluation),
                   report=report or {}, annotations=job.annotations)


# ----------------------------------------------------------------------------- sanity report and auto range

def sanity_report(job: GridJob, centre: dict[str, float], picked: dict[str, float], outside: list[str] = ()
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
                     "times slower than fp32 (8x for ResNet-56 here): leave out --precision bf16")
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


def resolve_axes(job: GridJob, evaluator: PointEvaluator, info: DistInfo, centre: list[float] | None
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


# ----------------------------------------------------------------------------- the CLI's job

def load_sets(cfg: SurfaceConfig, ckpt: dict[str, Any] | None, device: torch.device, batch_size: int
              ) -> tuple[list[EvalSet], dict[str, Any], str]:
    """The evaluation sets, what describes their data (the user's --data, or the checkpoint's own dataset), and the
    metric's name: --metric, else the dataset's own (next_token for a corpus), else cross_entropy."""
    if cfg.data:
        metric = metric_of(cfg, cfg.metric or "cross_entropy")
        made = import_object(cfg.data, "--data")
        data = made(**cfg.data_kwargs) if callable(made) and not isinstance(made, Iterable) else made
        named = data if isinstance(data, dict) else {"": data}
        sets = [EvalSet(name, as_source(d, device, batch_size, cfg.samples, cfg.max_batches), metric)
                for name, d in named.items()]
        return sets, {"name": cfg.data, "kwargs": dict(cfg.data_kwargs)}, None if cfg.criterion else (
            cfg.metric or "cross_entropy")
    if ckpt is None:
        raise UserError("--model needs --data: a package.module:function that returns your DataLoader (or a dict of "
                        "them by split name)")
    data = load_data_for(ckpt, cfg.data_dir, cfg.download)
    name = cfg.metric or data.metric
    metric = metric_of(cfg, name)
    sets = []
    for split in cfg.splits:
        x, y = select_samples(*data.split(split), cfg.samples, split)
        memory = torch.channels_last if (x.ndim == 4 and cfg.channels_last is not False) else torch.contiguous_format
        sets.append(EvalSet(split, as_source((x.contiguous(memory_format=memory), y), device, batch_size), metric))
    return sets, ckpt["data"], None if cfg.criterion else name


def metric_of(cfg: SurfaceConfig, name: str) -> Any:
    """What cfg measures: its --criterion (the run says how its sums are made), else the metric `name`."""
    metric = make_metric(name, cfg.criterion, cfg.criterion_kwargs)
    if isinstance(metric, Criterion):
        print0(metric.note)
    return metric


def load_centre(cfg: SurfaceConfig, path: str) -> tuple[nn.Module, dict[str, Any] | None]:
    """A model with the weights of `path`: our checkpoint, or --model's module (or the model a HuggingFace folder
    describes) with the weights of a file or folder as researchers save them (landscape.weights)."""
    if not cfg.model and not is_hf_folder(path):
        return load_model(path)
    model = build_model(cfg.model, **cfg.model_kwargs) if cfg.model else build_hf_model(path)
    for note in load_weights_into(model, path, cfg.strip_prefix, cfg.ema):
        print0(note)
    return model.eval(), None


def make_directions(model: nn.Module, cfg: SurfaceConfig, train: TensorSource | StreamSource, info: DistInfo
                    ) -> tuple[Params, list[Params], Annotations]:
    """theta0 (float32, CPU), the directions and what the plot should say of them: from a file, toward a target
    checkpoint, through a plane of three checkpoints, along the Hessian's top eigenvectors (on `train`), or
    random."""
    theta0 = snapshot(model_tensors(model, cfg.dir_type), device="cpu")
    n = 1 if cfg.kind in ("1d", "interp") else 2
    spec = DirectionSpec(cfg.dir_type, cfg.norm, cfg.ignore, cfg.seed, cfg.orthogonal)
    moved = moved_tensors(model, theta0, cfg.params or None, cfg.trainable_only)
    axes = output_axes(model)
    made = _made_alike(cfg) if cfg.directions_file == HESSIAN or cfg.trajectory else None
    if made is not None:
        # a resume: the eigenvectors or principal components it was made with, not a recomputation whose last
        # bits may differ (on another number of processes)
        return theta0, [from_numpy(d) for d in read_directions(cfg.path)], made.annotations
    if cfg.directions_file == HESSIAN:
        metric = make_metric(cfg.metric, cfg.criterion, cfg.criterion_kwargs)
        return theta0, *hessian_directions(model, theta0, train, n, spec, moved, metric, info, cfg.loss_name, axes)
    if cfg.trajectory:
        made = run_on_main(lambda: trajectory_directions(cfg, theta0, spec, moved), info)
        return theta0, *broadcast_object(made)
    if cfg.directions_file:
        dirs = [from_numpy(d) for d in read_directions(cfg.directions_file)]
        if len(dirs) < n:
            raise UserError(f"{cfg.directions_file} holds {len(dirs)} direction(s) but a {cfg.kind} surface needs {n}")
        for d in dirs[:n]:
            check_compatible(d, theta0, f"direction in {cfg.directions_file}")
        return theta0, dirs[:n], Annotations()
    others = [cfg.target] if cfg.target else list(cfg.plane)
    thetas = [snapshot(model_tensors(load_centre(cfg, p)[0], cfg.dir_type), device="cpu") for p in others]
    if cfg.plane:
        dirs, (alpha, beta) = plane_through(theta0, *thetas)
        names = tuple(run_tag(p) for p in (cfg.checkpoint, *cfg.plane))
        markers = Markers(names, np.array([[0.0, 0.0], [1.0, 0.0], [alpha, beta]]), "points")
        return theta0, [restrict(d, moved) for d in dirs], Annotations(markers=markers)
    if cfg.target:
        d1 = restrict(target_direction(theta0, thetas[0]), moved)
        return theta0, [d1, *create_random_directions(theta0, 2, spec, moved, axes)[1:n]], Annotations()
    return theta0, create_random_directions(theta0, n, spec, moved, axes), Annotations()


def _made_alike(cfg: SurfaceConfig) -> Surface | None:
    """cfg's file, if it exists and was asked for with the same kind of derived directions (Hessian, or the same
    trajectory); another file there is left to the fingerprint check, which refuses it."""
    if not os.path.exists(cfg.path):
        return None
    old = read_surface(cfg.path)
    alike = (old.config.get("directions_file") == cfg.directions_file
             and list(old.config.get("trajectory") or []) == list(cfg.trajectory))
    return old if alike else None


def hessian_directions(model: nn.Module, theta0: Params, train: TensorSource | StreamSource, n: int,
                       spec: DirectionSpec, moved: set[str] | None, metric: Any, info: DistInfo,
                       loss_name: str | None = None, axes: dict[str, int] | None = None
                       ) -> tuple[list[Params], Annotations]:
    """The top n eigenvectors of the Hessian of the mean training loss at theta0, over the tensors a random
    direction would move (with ignore="biasbn", not the 1-D ones), each scaled to the norm of a
    filter-normalized random direction over the same tensors: alpha = 1 then reaches as far from theta0 in
    either kind of direction. The data is split across ranks; rank 0's vectors are shared."""
    names = set(covered_tensors(theta0, moved, spec.ignore))
    op = HessianOperator(copy.deepcopy(model).to(info.device), rank_share(train, info), metric,
                         params=names, batch_size=getattr(train, "batch_size", 512), loss_name=loss_name)
    eig = eigenvalues(op, k=n, tol=1e-4, seed=spec.seed, vectors=True)
    values, vectors = eig.top, eig.vectors
    values, vectors = broadcast_object((values, vectors))
    scale = norm(create_random_directions(theta0, 1, spec, moved, axes)[0])
    dirs = [complete({k: t * scale for k, t in v.items()}, theta0) for v in vectors]
    ordinal = ("1st", "2nd")
    labels = tuple(f"{ordinal[i]} Hessian eigenvector (lambda={lam:.4g})" for i, lam in enumerate(values))
    return dirs, Annotations(axis_labels=labels)


def trajectory_directions(cfg: SurfaceConfig, theta0: Params, spec: DirectionSpec, moved: set[str] | None
                          ) -> tuple[list[Params], Annotations]:
    """The plane of the two leading principal components of the run's checkpoints (cfg.trajectory) taken as
    differences from the final weights theta0 (landscape.pca), over the tensors a random direction would move;
    the path's coordinates as markers, the explained variance in the axis names (Li et al. 2018, Fig. 9)."""
    names = covered_tensors(theta0, moved, spec.ignore)
    epochs: dict[int, int | None] = {}  # noted while the checkpoints are read for the PCA, not read again for it

    def diff(i: int) -> Params:
        model, ckpt = load_centre(cfg, cfg.trajectory[i])
        epochs[i] = ckpt.get("epoch") if ckpt else None
        weights = dict(model.named_parameters())
        missing = [k for k in names if k not in weights or weights[k].shape != theta0[k].shape]
        if missing:
            raise UserError(f"{cfg.trajectory[i]} is not the final checkpoint's architecture (e.g. {missing[:2]}); "
                            "give the checkpoints of one run")
        return {k: weights[k].detach().float() - theta0[k] for k in names}

    pca = trajectory_pca(diff, len(cfg.trajectory), {k: theta0[k] for k in names})
    dirs = [complete(d, theta0) for d in pca.directions]
    labels = [_epoch_label(p, epochs[i]) for i, p in enumerate(cfg.trajectory)]
    labels.append(_epoch_label(cfg.checkpoint, _stored_epoch(cfg.checkpoint)))
    markers = Markers(tuple(labels), np.vstack([pca.coords, np.zeros((1, 2))]), "path")
    ratio = pca.explained_variance_ratio
    axis = tuple(f"{n} PC: {100 * r:.2f} %" for n, r in zip(("1st", "2nd"), ratio))
    print0(f"trajectory: {len(cfg.trajectory)} checkpoints and the final one, PCA over {len(names)} tensors; "
           f"explained variance {100 * ratio[0]:.2f} % + {100 * ratio[1]:.2f} % ({pca.reads} checkpoint reads)")
    return dirs, Annotations(axis, markers, tuple(map(float, ratio)))


def _listing(paths: tuple[str, ...]) -> list[str]:
    """Which checkpoints a trajectory went through, cheaply (names and sizes): a resume over another list of
    checkpoints is refused instead of reusing the file's principal components."""
    return [f"{os.path.basename(p)}:{os.path.getsize(p) if os.path.exists(p) else 0}" for p in paths]


def _epoch_label(path: str, epoch: int | None) -> str:
    """"epoch N" for a checkpoint of trainers.train, else the file's run tag (weights of the user's model)."""
    return f"epoch {epoch}" if epoch is not None else run_tag(path)


def _stored_epoch(path: str) -> int | None:
    try:
        return load_checkpoint(path).get("epoch")
    except UserError:  # a state dict of the user's own model
        return None


def rank_share(source: TensorSource | StreamSource, info: DistInfo) -> Any:
    """This rank's share of a source, for a computation whose sums are reduced across ranks (a Hessian): every
    world_size-th sample of resident tensors, every world_size-th batch of a stream."""
    if isinstance(source, TensorSource):
        shard = slice(info.rank, None, info.world_size)
        return source.x[shard], source.y[shard]
    return EveryNth(source, info.rank, info.world_size)


class EveryNth:
    """Batches start, start + step, ... of a re-iterable."""

    def __init__(self, batches: Iterable, start: int, step: int):
        self.batches, self.start, self.step = batches, start, step

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.batches), self.start, None, self.step)


def training_source(cfg: SurfaceConfig, ckpt: dict[str, Any] | None, sets: list[EvalSet], device: torch.device,
                    batch_size: int) -> TensorSource | StreamSource:
    """The training data a request's Hessian directions and BatchNorm re-estimation use: the evaluated set
    named "train" (the checkpoint's train split, --samples applied, or --data's "train" entry), else the
    checkpoint's train split, else the first set of --data."""
    named = {s.name: s.source for s in sets}
    if "train" in named:
        return named["train"]
    if ckpt is None:
        return sets[0].source
    x, y = select_samples(*load_data_for(ckpt, cfg.data_dir, cfg.download).split("train"), cfg.samples, "train")
    return as_source((x, y), device, batch_size)


def plane_axes(cfg: SurfaceConfig, markers: Markers) -> tuple[Any, Any]:
    """The axes of a plane through checkpoints: as given, else cfg.plane_points points each covering the
    checkpoints (and the origin) with a quarter-span margin."""
    return (cfg.x or covering_axis(markers.coords[:, 0], cfg.plane_points),
            cfg.y or covering_axis(markers.coords[:, 1], cfg.plane_points))


def moved_tensors(model: nn.Module, theta0: Params, params: Any, trainable_only: bool) -> set[str] | None:
    """The names the directions move (None: all), from name globs or a predicate and/or trainability."""
    if params is None and not trainable_only:
        return None
    keep = {k for k, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    return select_tensors(theta0, params, keep)


def resolve_batch_size(requested: int | None, device: torch.device) -> int:
    """The evaluation batch: as asked, else 1024 samples on CUDA and 256 on a CPU."""
    return requested or (1024 if device.type == "cuda" else 256)


def origin_of(cfg: SurfaceConfig, ckpt: dict[str, Any] | None) -> Origin:
    """What the surface file records about its centre weights."""
    target = os.path.abspath(cfg.target) if cfg.target else ""
    if ckpt is None:
        return Origin(os.path.abspath(cfg.checkpoint), weights_sha256(cfg.checkpoint), target,
                      {"name": cfg.model or "transformers (save_pretrained folder)", "kwargs": dict(cfg.model_kwargs)})
    return Origin(os.path.abspath(cfg.checkpoint), weights_sha256(cfg.checkpoint), target, ckpt["model"],
                  ckpt.get("metrics", {}), Training.from_train_config(ckpt.get("train_config", {})))


def job_from_config(cfg: SurfaceConfig, info: DistInfo) -> GridJob:
    model, ckpt = load_centre(cfg, cfg.checkpoint)
    batch_size = resolve_batch_size(cfg.eval_batch_size, info.device)
    sets, data, metric = load_sets(cfg, ckpt, info.device, batch_size)
    cfg = dataclasses.replace(cfg, metric=metric)  # what every later step and the file record
    needs_train = cfg.directions_file == HESSIAN or cfg.bn_recalibrate
    train = training_source(cfg, ckpt, sets, info.device, batch_size) if needs_train else sets[0].source
    theta0, dirs, annotations = make_directions(model, cfg, train, info)
    x, y = plane_axes(cfg, annotations.markers) if annotations.markers is not None else (cfg.x, cfg.y)
    precision = resolve_precision(cfg.precision, info.device)
    images = not sets[0].source.streamed and sets[0].source.x.ndim == 4
    # What decides the values besides the weights, the directions and the grid: a resume must match it. Keys
    # that 0.1 files lack are only added when set, so those files resume.
    evaluation = {"splits": [s.name for s in sets] if cfg.data else list(cfg.splits), "samples": cfg.samples,
                  "loss": cfg.metric or f"criterion {cfg.criterion}", "precision": precision, "data": data}
    evaluation.update({k: v for k, v in [("max_batches", cfg.max_batches), ("params", list(cfg.params) or None),
                                         ("criterion_kwargs", cfg.criterion_kwargs or None),
                                         ("loss_name", cfg.loss_name),
                                         ("trainable_only", cfg.trainable_only or None),
                                         ("bn_recalibrate", cfg.bn_recalibrate),
                                         ("trajectory", _listing(cfg.trajectory) or None)] if v is not None})
    config = {**asdict(cfg), "filter_axes": output_axes(model)}  # recorded: weights normalized along axis 1
    return GridJob(model, theta0, dirs, sets, x, y, cfg.path, cfg.dir_type, precision,
                   images and cfg.channels_last is not False, cfg.compile, cfg.points_per_pass, cfg.flush_seconds,
                   cfg.progress, cfg.auto_rise, origin_of(cfg, ckpt), evaluation, config, annotations,
                   (train, cfg.bn_recalibrate) if cfg.bn_recalibrate else None, cfg.loss_name)


def run_surface(cfg: SurfaceConfig, info: DistInfo) -> SurfaceRun:
    """Compute or resume the surface file of cfg, with every rank of the process group taking part."""
    return run_grid(job_from_config(cfg, info), info)


def run_hessian_map(cfg: SurfaceConfig, info: DistInfo, tol: float = 1e-3) -> SurfaceRun:
    """lambda_max and lambda_min of the training loss's Hessian at every point of cfg's grid (the directions of
    cfg's surface), in OUT/<surface file>_hessian.h5; points are split across ranks, each on its whole data."""
    if any(isinstance(a, str) and a.startswith("auto") for a in (cfg.x, cfg.y)):
        raise UserError("a Hessian map needs its axes given (MIN:MAX:NUM), not auto")
    job = job_from_config(dataclasses.replace(cfg, splits=("train",)), info)
    train = next((s.source for s in job.sets if s.name == "train"), job.sets[0].source)
    data = (train.x, train.y) if isinstance(train, TensorSource) else train  # each rank its own points, all the data
    evaluator = HessianPointEvaluator(job.model.to(info.device), job.theta0, job.directions, data,
                                      job.sets[0].metric, tol, cfg.seed, getattr(train, "batch_size", 512),
                                      cfg.loss_name)
    path = cfg.path[:-len(".h5")] + "_hessian.h5"
    job = dataclasses.replace(job, path=path, evaluation={**job.evaluation, "hessian_tol": tol})
    return run_grid(job, info, evaluator)


def check_output_folder(folder: str, info: DistInfo) -> None:
    """Create the output folder on rank 0 and fail early, on every rank, if it cannot be written."""
    run_on_main(lambda: check_writable(folder), info)

