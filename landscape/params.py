"""Named tensors (`Params = dict[str, Tensor]`): which tensors a direction covers, whole-model vector math,
and the fused in-place update theta = theta0 + alpha*d1 + beta*d2 used at every grid point.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]

DIR_TYPES = ("weights", "states")


def model_tensors(model: nn.Module, dir_type: str = "weights") -> Params:
    """The live tensors a direction moves: parameters ('weights') or every float entry of the state dict
    including BatchNorm running statistics ('states'). Values are the model's own storage (not copies)."""
    if dir_type == "weights":
        return dict(model.named_parameters())
    if dir_type == "states":
        return {k: v for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()}
    raise ValueError(f"unknown direction type {dir_type!r}: use weights or states")


def snapshot(params: Params, dtype: torch.dtype | None = torch.float32, device: torch.device | str | None = None
             ) -> Params:
    """Detached copies (by default float32), e.g. theta0 taken from a model before it is moved."""
    return {k: v.detach().to(device=device or v.device, dtype=dtype or v.dtype, copy=True) for k, v in params.items()}


def dot(a: Params, b: Params) -> float:
    """Inner product of two named-tensor vectors (float64 accumulation)."""
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def norm(a: Params) -> float:
    return dot(a, a) ** 0.5


def add_scaled(base: Params, *terms: tuple[float, Params]) -> Params:
    """base + sum(c * d) as new tensors."""
    out = {k: v.clone() for k, v in base.items()}
    for c, d in terms:
        for k in out:
            out[k].add_(d[k], alpha=c)
    return out


class PointSetter:
    """Writes theta0 + alpha*d1 (+ beta*d2) into a model's own tensors, with fused foreach kernels.

    Works in place on the model it is given (the surface engine gives it a private copy), so each grid
    point costs three fused ops over the parameter list rather than a state_dict load or a deepcopy.
    """

    def __init__(self, targets: Params, theta0: Params, directions: list[Params]):
        missing = [k for k in theta0 if k not in targets]
        if missing:
            raise ValueError(f"the model has no tensors named {missing[:3]}; directions were made for another model")
        names = list(theta0)
        self.targets = [targets[k].data for k in names]
        dev = self.targets[0].device
        cast = lambda p: [p[k].to(device=dev, dtype=t.dtype) for k, t in zip(names, self.targets)]  # noqa: E731
        self.theta0 = cast(theta0)
        self.dirs = [cast(d) for d in directions]

    @torch.no_grad()
    def __call__(self, coords: tuple[float, ...]) -> None:
        if len(coords) != len(self.dirs):
            raise ValueError(f"{len(coords)} coordinates for {len(self.dirs)} directions")
        torch._foreach_copy_(self.targets, self.theta0)
        for c, d in zip(coords, self.dirs):
            if c != 0.0:
                torch._foreach_add_(self.targets, d, alpha=float(c))
