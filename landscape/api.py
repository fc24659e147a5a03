"""The Python API: loss landscapes of any `nn.Module`, on any data, for any metric, from a notebook or a script.

    import landscape
    d = landscape.random_directions(model, n=2, seed=0)
    s = landscape.surface(model, loader, d, x="-1:1:21", y="-1:1:21", out="resnet.h5")
    s.plot("contour")

The model is never modified and stays where it is (a private copy is evaluated). Under torchrun, every rank calls
`surface` and the grid points are split across ranks as the CLI splits them; every rank gets the result.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.base.config import DEFAULT_MEASURES, PRECISIONS, WIDTH_AXIS, check_choice, check_points_per_pass
from landscape.base.errors import ConfigError
from landscape.core.directions import DirectionSpec, complete, create_random_directions, output_axes, target_direction
from landscape.core.fingerprint import tensors_sha256
from landscape.core.params import Params, model_tensors, snapshot
from landscape.core.surface_file import Origin, Surface
from landscape.pipelines.grid_job import evaluation_record, grid_job, run_grid
from landscape.pipelines.inputs import evaluation_sets, moved_tensors, resolve_batch_size
from landscape.runtime.distributed import (
    DistInfo,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    is_torchrun,
)
from landscape.runtime.forward import resolve_precision
from landscape.runtime.metrics import Metric, get_metric
from landscape.runtime.sources import as_source

ParamSelection = str | Sequence[str] | Callable[[str], bool] | None


def random_directions(model: nn.Module, n: int = 2, *, norm: str = "filter", ignore: str = "biasbn", seed: int = 0,
                      params: ParamSelection = None, trainable_only: bool = False, orthogonal: bool = False,
                      dir_type: str = "weights") -> list[Params]:
    """n Gaussian directions (float32, on the CPU) keyed by parameter name, normalized against the model's weights
    (Li et al. 2018: per filter by default); the same numbers as the CLI's for the same seed.

    Args: params: name globs ("blocks.*.attn.*"), or a predicate on the name, selecting the tensors to move;
    trainable_only: only parameters with requires_grad (LoRA, adapters). Other tensors get zeros.
    dir_type: "states" also moves BatchNorm running statistics."""
    theta0 = snapshot(model_tensors(model, dir_type), device="cpu")
    moved = moved_tensors(model, theta0, params, trainable_only)
    return create_random_directions(theta0, n, DirectionSpec(dir_type, norm, ignore, seed, orthogonal), moved,
                                    output_axes(model))


def load_weights(path: str, model: nn.Module | None = None, *, strip_prefix: str | None = None,
                 ema: bool = False) -> nn.Module:
    """A model with the weights of `path`, in eval mode: a checkpoint of trainers.train or a HuggingFace
    save_pretrained folder builds its own model; any other file (a state dict, plain or nested as torchvision's
    references, Lightning or the paper's code save it, or .safetensors) is loaded into `model`, by name.

    Args: strip_prefix: the prefix the file's tensors carry (default: found when exactly one holds them all, as a
    LightningModule's `model.`); ema: torchvision's references' averaged model (model_ema) instead of `model`.
    What was found (the prefix, tensors left aside) is printed."""
    from landscape.pipelines.inputs import centre_of

    return centre_of(path, model, strip_prefix=strip_prefix, ema=ema, log=lambda note: print(note, flush=True)).model


def direction_to(model: nn.Module, other: nn.Module | Mapping[str, Tensor], dir_type: str = "weights") -> Params:
    """other - model, keyed by parameter name: x=0 is `model`, x=1 is `other` (a model or a state dict)."""
    theta0 = snapshot(model_tensors(model, dir_type), device="cpu")
    if isinstance(other, nn.Module):
        theta1 = snapshot(model_tensors(other, dir_type), device="cpu")
    else:
        theta1 = {k: v.detach().to("cpu", torch.float32) for k, v in other.items() if k in theta0}
    return target_direction(theta0, theta1)


def _dir_type_of(model: nn.Module, directions: Sequence[Mapping[str, Tensor]]) -> str:
    """weights when the directions name parameters only; states when they also name buffers (BatchNorm)."""
    params = dict(model.named_parameters())
    names = set().union(*(set(d) for d in directions))
    if names <= set(params):
        return "weights"
    states = set(model_tensors(model, "states"))
    if names <= states:
        return "states"
    unknown = sorted(names - states)
    raise ConfigError(f"the directions name tensors the model does not have (e.g. {unknown[:3]}); make them with "
                      "landscape.random_directions(model)")


def surface(model: nn.Module, data: Any, directions: Sequence[Mapping[str, Tensor]] | Mapping[str, Tensor],
            x: str | Sequence[float] | np.ndarray = "-1:1:51", y: str | Sequence[float] | np.ndarray | None = None,
            *, metrics: str | Metric = "cross_entropy", out: str | None = None, batch_size: int | None = None,
            samples: int | None = None, max_batches: int | None = None, precision: str = "fp32",
            device: str | torch.device | None = None, points_per_pass: int = 1, compile: bool | None = None,
            auto_rise: float = 1.0, bn_recalibrate: int | None = None, bn_data: Any = None,
            flush_seconds: float = 2.0, progress: bool = True) -> Surface:
    """The metrics of `model` at theta0 + x*d1 (+ y*d2) for every grid point: a `Surface` (the type read_surface
    returns: coordinates, metric arrays (len(y), len(x)), metadata), with `.plot()`.

    Args:
      data: (inputs, targets) tensors (kept on the device: the fastest), a Dataset, a DataLoader or any
        re-iterable of batches (tuples/lists, inputs first and targets last, or dicts with "labels"); or a dict
        of those by name ({"train": ..., "test": ...}), whose names prefix the metrics.
      directions: one (1D) or two (2D) dicts of tensors by parameter name (random_directions, direction_to); a
        direction may name a subset of the tensors, the rest stay put.
      x, y: "MIN:MAX:NUM", "auto[:NUM]" (where the loss rises by `auto_rise`), or arrays of coordinates. y needs a
        second direction.
      metrics: a built-in name (cross_entropy, mse, causal_lm, masked_lm, next_token) or a metric (runtime.metrics).
      out: an .h5 file: written point by point, resumed if it exists and was made for the same request, refused
        (and left alone) if not. None: nothing is written.
      samples / max_batches: evaluate only the first samples / batches, the same at every point.
      device: default cuda:LOCAL_RANK when CUDA is there, else the CPU; precision: fp32, bf16 or auto.
      compile: torch.compile the model (True) or not (False); None: when the points would take at least
        COMPILE_AFTER_S (120 s) eagerly, timed at the centre, and the line printed says which.
      bn_recalibrate: N re-estimates BatchNorm's running statistics at every point from the first N batches of
        `bn_data` (default: the data set named "train", else the first one) before evaluating.
    """
    dirs = [directions] if isinstance(directions, Mapping) else list(directions)
    if len(dirs) not in (1, 2) or (y is not None) != (len(dirs) == 2):
        raise ConfigError(f"{len(dirs)} direction(s) with y={'given' if y is not None else 'None'}: pass one "
                          "direction for a 1D curve (y=None) or two for a 2D surface")
    check_choice(precision, PRECISIONS, "precision")
    check_points_per_pass(points_per_pass, compile)
    info = _dist_info(device)
    dir_type = _dir_type_of(model, dirs)
    theta0 = snapshot(model_tensors(model, dir_type), device="cpu")
    dirs = [complete(d, theta0) for d in dirs]
    prec = resolve_precision(precision, info.device)
    batch = resolve_batch_size(batch_size, info.device)
    metric = get_metric(metrics)
    named = data if isinstance(data, Mapping) and not _is_batch_dict(data) else {"": data}
    sets = evaluation_sets(named, metric, info.device, batch, samples=samples, max_batches=max_batches)
    loss = metrics if isinstance(metrics, str) else getattr(metric, "__name__", type(metric).__name__)
    evaluation = evaluation_record(list(named), samples, loss, prec, {"name": "python", "kwargs": {}},
                                   max_batches=max_batches)
    config = {"x": x if isinstance(x, str) else list(map(float, x)), "y": y if isinstance(y, str) or y is None
              else list(map(float, y)), "api": True, "dir_type": dir_type, "filter_axes": output_axes(model)}
    origin = Origin(model={"name": type(model).__module__ + ":" + type(model).__qualname__, "kwargs": {}},
                    checkpoint_sha256=tensors_sha256(theta0))
    if out is not None and os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    job = grid_job(model, dirs, sets, x, y, theta0=theta0, evaluation=evaluation, path=out, dir_type=dir_type,
                   precision=prec, compile=compile, points_per_pass=points_per_pass, flush_seconds=flush_seconds,
                   progress=progress, auto_rise=auto_rise, origin=origin, config=config,
                   bn_recalibrate=bn_recalibrate,
                   bn_source=None if bn_data is None else as_source(bn_data, info.device, batch))
    return run_grid(job, info).surface


def _is_batch_dict(data: Mapping) -> bool:
    """A dict of tensors is one batch (e.g. input_ids/labels), not a dict of data sets."""
    return all(isinstance(v, Tensor) for v in data.values())


def _dist_info(device: str | torch.device | None) -> DistInfo:
    """The process group under torchrun (joined on first use, one device per rank), else this process on
    `device` (a torch.device is taken as it is)."""
    if isinstance(device, torch.device) and not is_torchrun():
        return DistInfo(0, 0, 1, device)
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    info = init_distributed(device.type if isinstance(device, torch.device) else (device or "auto"))
    if info.is_distributed and not joined:
        # the group this call joined is left at exit, all ranks together: a gloo rank that exits while its peer
        # still holds the group can make the peer abort ("terminate called without an active exception")
        atexit.register(cleanup_distributed)
    return info


def save_figures(s: Surface, stem: str, formats: Sequence[str] = ("png", "pdf"), loss_max: float | None = None,
                 levels: int | None = None, title: str | None = None) -> list[str]:
    """The CLI's figure files for a surface: for each metric, contour lines, filled contours, heatmap and 3D (2D),
    or the loss/accuracy curves (1D), as STEM_<metric>_<kind>.<format>. A loss's levels are Li et al.'s (0.1 to 10
    by 0.5) unless `levels` or `loss_max` is given (PlotConfig.levels). Returns the paths written."""
    from landscape.base.figure_config import PlotConfig
    from landscape.output.render import render_1d, render_2d

    cfg = PlotConfig(loss_max=loss_max, levels=levels, title=title, formats=tuple(formats))
    if os.path.dirname(stem):
        os.makedirs(os.path.dirname(stem), exist_ok=True)
    return render_2d(s, stem, cfg) if s.is_2d else render_1d([("", s)], stem, cfg, title or "")


def align(model_a: nn.Module, model_b: nn.Module, spec: str | Mapping[str, Any] | None = None, seed: int = 0,
          batch: Any = None) -> tuple[nn.Module, Any]:
    """A copy of model_b with its hidden units permuted toward model_a's by weight matching (Ainsworth et al.
    2023), and the Alignment found (its `summary()`, `moved`, `perms`). model_b computes the same function before and
    after; with a `batch`, that is checked and a spec that breaks it refused.

    Args: spec: None for our registry's models (chains of Linear/Conv/BatchNorm, CIFAR ResNets, our Transformer),
    else a {tensor name: [permutation name or None per axis]} mapping, a JSON file or package.module:function
    (README: Aligning your own model)."""
    from landscape.connectivity.alignment import align_models

    return align_models(model_a, model_b, spec, seed, batch)


def connect_checkpoints(a: str, b: str, out: str = "landscape_out", *, device: str = "auto", **options: Any) -> Any:
    """What `python -m landscape.connect A B` does, from Python: align (align=True), train the curve and evaluate
    every path; returns the curve file's content (landscape.core.curve_file.Curve; `landscape.barriers(curve)`
    gives its barrier table) on every rank. `options` are the command's flags by their field names: curve="polychain",
    align=True, epochs=50, lr=0.05, points=21, samples=1000, bn_recalibrate=20, model=..., data=..., name=..."""

    for label, path in (("a", a), ("b", b)):
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"{label}: connect_checkpoints takes two checkpoint paths, got {type(path).__name__} "
                              "(for modules in memory, use landscape.connect_models(model_a, model_b, data))")
    return _connect(os.fspath(a), os.fspath(b), out, device, options)


def _connect(a: str, b: str, out: str, device: str, options: dict[str, Any], given: Any = None) -> Any:
    """The connect request of the options (the command's flags by field name), run on every rank."""
    from landscape.base.config import SurfaceConfig
    from landscape.base.curve_config import CurveConfig
    from landscape.pipelines.connect_job import run_connect

    surface_fields = {f.name for f in dataclasses.fields(SurfaceConfig)}
    curve_fields = {f.name for f in dataclasses.fields(CurveConfig)}
    unknown = sorted(set(options) - surface_fields - curve_fields)
    if unknown:
        raise ConfigError(f"connect has no option {unknown[0]!r}; the options are the flags of python -m "
                          "landscape.connect, by field name (curve, align, epochs, lr, points, samples, ...)")
    cfg = SurfaceConfig(checkpoint=a, target=b, out=out, device=device,
                        **{k: v for k, v in options.items() if k in surface_fields and k not in curve_fields})
    curve_cfg = CurveConfig(**{k: v for k, v in options.items() if k in curve_fields})
    info = _dist_info(device)
    run = run_connect(cfg, curve_cfg, info, given)
    return broadcast_object(run.curve)


def hessian(model: nn.Module, data: Any, metrics: str | Metric = "cross_entropy", *,
            params: ParamSelection = None, batch_size: int | None = None, loss_name: str | None = None,
            curvature: str = "hessian", **options: Any) -> Any:
    """The Hessian of the mean loss of `model` over `data` with respect to its parameters (all, or the names or globs
    of `params`), as an operator: `op.matvec(v)` on a flat tensor of `op.dim`, `op.linear_operator()` for
    scipy, `op.as_params(v)` to name a vector's pieces. Taken in eval mode (BatchNorm with running statistics); the
    model, its mode included, is left as it was. `data` and `metrics` as `surface` takes them.

    `curvature`: another curvature with the same interface (landscape.curvature.operators): "ggn" (the generalized
    Gauss-Newton J^T H_out J), "fisher" (Monte Carlo, `draws` and `seed` in `options`), "empirical_fisher".
    `options`: the Hessian's `cache_bytes` (how much its kept gradient graphs may hold)."""
    from landscape.curvature.operators import curvature_operator

    device = next(model.parameters()).device
    chosen = moved_tensors(model, dict(model.named_parameters()), params, False)  # None: every parameter
    return curvature_operator(curvature, model, data, get_metric(metrics), params=chosen,
                              batch_size=resolve_batch_size(batch_size, device), loss_name=loss_name, **options)


def hessian_eigenvalues(model: nn.Module, data: Any, k: int = 1, metrics: str | Metric = "cross_entropy", *,
                        smallest: bool = False, tol: float = 1e-3, seed: int = 0, params: ParamSelection = None,
                        batch_size: int | None = None, curvature: str = "hessian") -> Any:
    """The k largest eigenvalues of `hessian(model, data, metrics)` (and the most negative one with `smallest`), by
    Lanczos to relative error `tol`: landscape.curvature.hessian.Eigen (`top`, `min`, `matvecs`). The same
    numbers as `python -m landscape.sharpness`'s lambda_max and lambda_min on the same weights and samples (and
    `curvature` as its --curvature)."""
    from landscape.curvature.hessian import eigenvalues

    op = hessian(model, data, metrics, params=params, batch_size=batch_size, curvature=curvature, seed=seed)
    return eigenvalues(op, k, tol, seed=seed, smallest=smallest)


def sharpness_table(model: nn.Module, data: Any, metrics: str | Metric = "cross_entropy", *,
                    measures: Sequence[str] = DEFAULT_MEASURES, params: ParamSelection = None,
                    samples: int | None = None, batch_size: int | None = None, seed: int = 0, x: str = WIDTH_AXIS,
                    norm: str = "filter", ignore: str = "biasbn", device: str | torch.device | None = None,
                    log: Callable[[str], None] | None = None, **options: Any) -> list[dict[str, Any]]:
    """`python -m landscape.sharpness`'s table on a module: one row per measure (subset, measure, value, stderr,
    bound, settings), the same numbers as the command's on the same weights and samples. `measures`: of lambda_max,
    lambda_min, trace, density, epsilon, adaptive, average, width; `options`: the other fields of the command's
    SharpnessConfig (per_layer, tol, trace_products, eps, rho, sigma, draws, width_directions, ...); `x` the
    widths' first axis; `log` gets the cost estimates and a line per measure (default: silent). Taken in eval mode;
    the model, its mode included, is left as it was."""
    from landscape.curvature.flat_loss import evaluation_mode
    from landscape.pipelines.sharpness_table import SharpnessConfig, measure_table

    sc = SharpnessConfig(measures=tuple(measures), x=x, **options)
    info = _dist_info(device if device is not None else next(model.parameters()).device)
    source = as_source(data, info.device, resolve_batch_size(batch_size, info.device), samples)
    spec = DirectionSpec("weights", norm, ignore, seed)
    with evaluation_mode(model):
        rows, _ = measure_table(model, source, get_metric(metrics), sc, info=info, spec=spec, loss_name=None,
                                params=(params,) if isinstance(params, str) else params or (), trainable_only=False,
                                log=log or (lambda _: None))
    return rows


def connect_models(model_a: nn.Module, model_b: nn.Module, data: Any, out: str = "landscape_out", *,
                   name: str = "a_to_b", device: str = "auto", **options: Any) -> Any:
    """connect_checkpoints on two modules in memory: the line, the aligned line (align=True) and a trained curve
    between them, evaluated on `data` (what `surface` takes; a dict of them by split name, its "train" entry
    training the curve), into OUT/NAME_connect.h5 beside the bend (a state dict); returns the Curve
    (`landscape.barriers(curve)` for its barriers). `options` as connect_checkpoints takes them (metric is a
    metric's name or package.module:function). The two modules are never modified: the work is done on copies."""
    from landscape.pipelines.connect_job import Given

    for label, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"{label}: connect_models takes two torch.nn.Module objects, got {type(m).__name__} "
                              "(for files, use connect_checkpoints)")
    return _connect("model_a", "model_b", out, device, {"name": name, **options}, Given(model_a, model_b, data))


def barriers(curve: Any) -> list[dict[str, Any]]:
    """The barrier table of a curve (connect_checkpoints' result or read_curve(path)): one row per path and metric,
    max_t L(t) - ((1-t) L(A) + t L(B)), for the losses and the errors (100 - accuracy)."""
    from landscape.connectivity.barriers import barrier_rows

    return barrier_rows(curve)
