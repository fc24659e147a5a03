"""Named tensors (`Params = dict[str, Tensor]`): which tensors a direction covers, whole-model vector math,
and the flat-buffer update theta = theta0 + alpha*d1 + beta*d2 used at every grid point.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor, nn

from landscape.base.errors import ConfigError

Params = dict[str, Tensor]


def model_tensors(model: nn.Module, dir_type: str = "weights") -> Params:
    """The live tensors a direction moves: parameters ('weights') or every float entry of the state dict
    including BatchNorm running statistics ('states'). Values are the model's own storage (not copies)."""
    if dir_type == "weights":
        return dict(model.named_parameters())
    if dir_type == "states":  # a tensor shared by two modules (tied weights) is listed once, as parameters are
        seen: set[int] = set()
        return {k: v for k, v in model.state_dict(keep_vars=True).items()
                if v.is_floating_point() and not (id(v) in seen or seen.add(id(v)))}
    raise ValueError(f"unknown direction type {dir_type!r}: use weights or states")


def snapshot(params: Params, dtype: torch.dtype | None = torch.float32, device: torch.device | str | None = None
             ) -> Params:
    """Detached copies (by default float32), e.g. theta0 taken from a model before it is moved."""
    return {k: v.detach().to(device=device or v.device, dtype=dtype or v.dtype, copy=True) for k, v in params.items()}


def to_numpy(p: Params) -> dict[str, np.ndarray]:
    """float32 numpy copies on the CPU: what an HDF5 file stores (core.surface_file takes arrays, not tensors)."""
    return {k: v.detach().to("cpu", torch.float32).numpy() for k, v in p.items()}


def from_numpy(arrays: dict[str, np.ndarray]) -> Params:
    return {k: torch.from_numpy(np.asarray(a)) for k, a in arrays.items()}


def digest(p: Params) -> str:
    """A content hash of named tensors (names, shapes, float32 bytes): tells whether two sets of weights are one."""
    h = hashlib.sha256()
    for k in sorted(p):
        a = p[k].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}/{tuple(a.shape)}".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


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
    """Writes theta0 + alpha*d1 (+ beta*d2) into a model's own tensors.

    The model it is given (the surface engine gives it a private copy) has its covered tensors re-pointed
    into one flat buffer, so a grid point costs one `torch.add(..., out=)` plus one `add_` per extra
    direction, instead of a state_dict load, a deepcopy, or three kernels per tensor.
    """

    def __init__(self, targets: Params, theta0: Params, directions: list[Params]):
        missing = [k for k in theta0 if k not in targets]
        if missing:
            raise ValueError(f"the model has no tensors named {missing[:3]}; directions were made for another model")
        names = list(theta0)
        tensors = [targets[k] for k in names]
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1:
            raise ConfigError(f"the covered tensors mix dtypes {sorted(map(str, dtypes))}; cast the model to one dtype")
        dtype, device = dtypes.pop(), tensors[0].device
        sizes = [t.numel() for t in tensors]
        self.layout = [(k, t.shape) for k, t in zip(names, tensors)]
        self.flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        with torch.no_grad():
            for t, view in zip(tensors, torch.split(self.flat, sizes)):
                view.copy_(t.reshape(-1))
                t.data = view.view_as(t)  # the model now reads its weights from self.flat

        def flatten(p: Params) -> torch.Tensor:
            return torch.cat([p[k].reshape(-1).to(device=device, dtype=dtype) for k in names])

        self.theta0 = flatten(theta0)
        self.dirs = [flatten(d) for d in directions]

    @torch.no_grad()
    def __call__(self, coords: tuple[float, ...]) -> None:
        if len(coords) != len(self.dirs):
            raise ValueError(f"{len(coords)} coordinates for {len(self.dirs)} directions")
        if not coords or coords[0] == 0.0:
            self.flat.copy_(self.theta0)
        else:
            torch.add(self.theta0, self.dirs[0], alpha=float(coords[0]), out=self.flat)
        for c, d in zip(coords[1:], self.dirs[1:]):
            if c != 0.0:
                self.flat.add_(d, alpha=float(c))

    @torch.no_grad()
    def stacked(self, coords: Tensor) -> Params:
        """theta0 + sum_i c_i d_i for K points at once, as named (K, *shape) views of one new (K, P) buffer.

        `coords` is (K, n_directions); one broadcast multiply-add per direction. The model is not touched."""
        if coords.ndim != 2 or coords.shape[1] != len(self.dirs):
            raise ValueError(f"coordinates of shape {tuple(coords.shape)} for {len(self.dirs)} directions")
        c = coords.to(device=self.flat.device, dtype=self.flat.dtype)
        buf = self.theta0.expand(len(c), -1).clone()
        for j, d in enumerate(self.dirs):
            buf.addcmul_(c[:, j:j + 1], d)
        out, start = {}, 0
        for name, shape in self.layout:
            n = shape.numel()
            out[name] = buf[:, start:start + n].view(len(c), *shape)
            start += n
        return out
