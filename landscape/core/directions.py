"""Random directions in weight space and their normalization (Li et al. 2018, Sec. 4).

Directions are Gaussian, sampled with a seeded CPU generator in float32 (so every device and rank draws the
same numbers), then normalized per filter, per layer, per weight or not at all. 1-D tensors (biases,
BatchNorm) are zeroed by default (`ignore="biasbn"`); otherwise they follow the reference implementation and
take the weights' own values. A second direction can be made orthogonal to the first after normalization.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from landscape.base.config import DIR_TYPES, IGNORES, NORMS, check_choice
from landscape.base.errors import ConfigError
from landscape.core.params import Params, add_scaled, dot

EPS = 1e-10


@dataclass(frozen=True)
class DirectionSpec:
    """How to make random directions; stored in the HDF5 file so a resume can check it."""

    dir_type: str = "weights"  # weights | states
    norm: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0
    orthogonal: bool = False

    def __post_init__(self) -> None:
        check_choice(self.dir_type, DIR_TYPES, "dir_type")
        check_choice(self.norm, NORMS, "norm")
        check_choice(self.ignore, IGNORES, "ignore")


def random_direction(theta: Params, generator: torch.Generator) -> Params:
    """A Gaussian direction shaped like theta, drawn on the CPU in float32 in theta's key order."""
    return {k: torch.randn(v.shape, generator=generator, dtype=torch.float32).to(v.device)
            for k, v in theta.items()}


def output_axes(model: nn.Module) -> dict[str, int]:
    """The weights whose output units lie along another axis than 0, by name: HuggingFace's Conv1D (GPT-2) stores
    its weight as (in, out) and ConvTranspose*d as (in, out / groups, *kernel), so their output units lie along
    axis 1. Every other weight (Linear, Conv*d, embeddings) holds one output unit per slice along axis 0."""
    axes = {}
    for name, module in model.named_modules():
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        hf_conv1d = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
        if (transposed or hf_conv1d) and isinstance(getattr(module, "weight", None), torch.Tensor):
            axes[f"{name}.weight" if name else "weight"] = 1
    return axes


def normalize_direction(d: Params, theta: Params, norm: str = "filter", ignore: str = "biasbn",
                        axes: Mapping[str, int] | None = None) -> Params:
    """Rescale d against theta (new tensors; d is left alone).

    filter: each output unit (a conv filter, a row of a linear layer: a slice along axis 0, or along the axis
            `axes` names for the tensor, see output_axes) gets the norm of the matching slice of theta;
            layer: each tensor gets theta's tensor norm; weight: d * theta elementwise.
    1-D tensors are zeroed with ignore='biasbn', else set to theta (reference semantics) unless norm='none'.
    """
    check_choice(norm, NORMS, "norm")
    check_choice(ignore, IGNORES, "ignore")
    out: Params = {}
    for k, dk in d.items():
        w = theta[k].to(dk.dtype)
        if dk.dim() <= 1:
            out[k] = torch.zeros_like(dk) if ignore == "biasbn" else (dk.clone() if norm == "none" else w.clone())
        elif norm == "filter":
            axis = (axes or {}).get(k, 0)
            du, wu = dk.movedim(axis, 0), w.movedim(axis, 0)  # output units first
            d2, w2 = du.reshape(du.shape[0], -1), wu.reshape(wu.shape[0], -1)
            scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + EPS)
            out[k] = (d2 * scale).reshape(du.shape).movedim(0, axis).contiguous()
        elif norm == "layer":
            out[k] = dk * (w.norm() / (dk.norm() + EPS))
        elif norm == "weight":
            out[k] = dk * w
        else:
            out[k] = dk.clone()
    return out


def orthogonalize(d2: Params, d1: Params) -> Params:
    """d2 minus its projection on d1 (Gram-Schmidt over the whole flattened vector)."""
    coef = dot(d2, d1) / max(dot(d1, d1), EPS)
    return add_scaled(d2, (-coef, d1))


def select_tensors(names: Iterable[str], params: str | Sequence[str] | Callable[[str], bool] | None = None,
                   keep: Collection[str] | None = None) -> set[str]:
    """The tensor names a direction moves: all of `names`, or those matching `params` (fnmatch globs such as
    "blocks.*.attn.*", or a predicate on the name), further limited to `keep` (e.g. the trainable ones).
    A glob that matches no tensor is refused, naming a few real names."""
    names = list(names)
    chosen = set(names)
    if params is not None:
        if callable(params):
            chosen = {k for k in names if params(k)}
        else:
            globs = [params] if isinstance(params, str) else list(params)
            for g in globs:
                if not fnmatch.filter(names, g):
                    raise ConfigError(f"params pattern {g!r} matches no tensor; names look like {', '.join(names[:3])}")
            chosen = {k for k in names if any(fnmatch.fnmatchcase(k, g) for g in globs)}
    if keep is not None:
        chosen &= set(keep)
    if not chosen:
        raise ConfigError("the parameter selection leaves no tensor to move; widen params= or drop trainable_only")
    return chosen


def covered_tensors(theta0: Params, moved: Collection[str] | None, ignore: str = "biasbn") -> list[str]:
    """The names a random direction actually moves: those in `moved` (None: all), without the 1-D tensors
    (biases, BatchNorm) under ignore="biasbn", as normalize_direction zeroes them. Directions derived from
    something else (Hessian eigenvectors, a trajectory's principal components) cover the same tensors."""
    return [k for k, v in theta0.items() if (moved is None or k in moved) and (ignore != "biasbn" or v.dim() > 1)]


def complete(d: Mapping[str, torch.Tensor], theta0: Params) -> Params:
    """d over every tensor of theta0 (float32, CPU): the names it lacks get zeros, so it may cover a subset. Its
    values may be tensors (random_directions) or numpy arrays (read_directions)."""
    return {k: torch.as_tensor(d[k]).detach().to("cpu", torch.float32) if k in d else torch.zeros_like(v)
            for k, v in theta0.items()}


def restrict(d: Params, moved: Collection[str] | None) -> Params:
    """d with zeros outside the `moved` tensor names (None: d itself)."""
    return d if moved is None else {k: v if k in moved else torch.zeros_like(v) for k, v in d.items()}


def create_random_directions(theta0: Params, n: int, spec: DirectionSpec, moved: Collection[str] | None = None,
                             axes: Mapping[str, int] | None = None) -> list[Params]:
    """n normalized random directions from spec.seed; the first ones are the same for any n, so a 1D curve is
    the alpha axis of the 2D surface made with the same seed. Tensors outside `moved` (default: all) get zeros;
    the random draw is the same whatever is moved, so a subset's direction is the full one masked. `axes`: the
    output axis of weights stored (in, out) (output_axes of the model)."""
    if n < 1:
        raise ValueError(f"at least 1 direction, not {n}")
    g = torch.Generator().manual_seed(spec.seed)
    dirs = [normalize_direction(random_direction(theta0, g), theta0, spec.norm, spec.ignore, axes) for _ in range(n)]
    dirs = [restrict(d, moved) for d in dirs]
    if n == 2 and spec.orthogonal:
        dirs[1] = orthogonalize(dirs[1], dirs[0])
    return dirs


def target_direction(theta0: Params, theta1: Params) -> Params:
    """theta1 - theta0, so theta0 + alpha*d is the linear interpolation (1-alpha)*theta0 + alpha*theta1."""
    missing = sorted(set(theta0) ^ set(theta1))
    if missing:
        raise ConfigError(f"the two checkpoints have different tensors (e.g. {missing[:3]}); they must be the same "
                          "architecture")
    bad = [k for k in theta0 if theta0[k].shape != theta1[k].shape]
    if bad:
        raise ConfigError(f"the two checkpoints differ in shape at {bad[:3]}; they must be the same architecture")
    return {k: (theta1[k].to(theta0[k].dtype) - theta0[k]) for k in theta0}


def plane_through(theta0: Params, theta_b: Params, theta_c: Params) -> tuple[list[Params], tuple[float, float]]:
    """The plane through theta0 (A), theta_b (B) and theta_c (C) (Garipov et al. 2018): d1 = B - A, and d2 the
    component of C - A orthogonal to d1 (Gram-Schmidt). A sits at (0, 0), B at (1, 0) and C at the returned
    (alpha, beta) = (<C - A, d1> / |d1|^2, 1)."""
    d1, dc = target_direction(theta0, theta_b), target_direction(theta0, theta_c)
    n1 = dot(d1, d1)
    if n1 <= EPS:
        raise ConfigError("the first two checkpoints of the plane hold the same weights; pick distinct ones")
    alpha = dot(dc, d1) / n1
    d2 = add_scaled(dc, (-alpha, d1))
    if dot(d2, d2) <= EPS * max(dot(dc, dc), 1.0):
        raise ConfigError("the three checkpoints lie on one line, so they span no plane; pick another third one")
    return [d1, d2], (alpha, 1.0)


def check_compatible(direction: Params, theta0: Params, what: str = "direction") -> None:
    """Refuse a direction whose names or shapes do not match the model."""
    if set(direction) != set(theta0):
        extra, missing = sorted(set(direction) - set(theta0)), sorted(set(theta0) - set(direction))
        raise ConfigError(f"the {what} was made for another model (unknown tensors {extra[:3]}, missing "
                          f"{missing[:3]}); make new directions for this checkpoint")
    bad = [k for k in theta0 if tuple(direction[k].shape) != tuple(theta0[k].shape)]
    if bad:
        raise ConfigError(f"the {what} was made for another model (shape differs at {bad[:3]}); make new directions")
