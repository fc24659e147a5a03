"""Sharpness measured, not only drawn: Hessian eigenvalues by Lanczos, the Hutchinson trace, and the width of
a 1D loss curve.

The loss is the mean over a fixed data set: per-batch sums of Hessian-vector products (forward-over-reverse
with torch.func) are added up, reduced across ranks with one SUM per product, and divided by the sample
count, so batches and ranks of any size weigh exactly by their samples. scipy's ARPACK (eigsh) runs the
Lanczos iteration on every rank from the same start vector; the reduced products are identical everywhere,
so every rank follows the same iterations and gets the same answer.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from landscape.distributed import all_reduce_sum
from landscape.metrics import Metric, cross_entropy
from landscape.params import PointSetter, model_tensors


class HessianOperator:
    """v -> H v for the mean loss of `model` over (x, y), with respect to its parameters (all of them, or the
    names in `params`; the others are held fixed).

    Args: x, y: this rank's share of the data (the loss is averaged over every rank's samples together);
    batch_size bounds memory. reduce=False: this rank's data alone, no collective (each rank its own Hessian).
    The model is used in eval mode (BatchNorm with running statistics). Its tensors are read, not copied, at
    every product, so a caller that rewrites them in place (a grid point) gets the Hessian there.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512,
                 metric: Metric = cross_entropy, params: Collection[str] | None = None, reduce: bool = True):
        self.model = model.eval()
        chosen = [n for n, _ in model.named_parameters() if params is None or n in params]
        named = dict(model.named_parameters())
        self.names = chosen
        self.params = {n: named[n].detach() for n in chosen}
        self.fixed = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.shapes = [p.shape for p in self.params.values()]
        self.sizes = [p.numel() for p in self.params.values()]
        self.dim = sum(self.sizes)
        self.batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        self.reduce = reduce
        count = torch.tensor([float(len(x))], dtype=torch.float64, device=x.device)
        self.count = float(all_reduce_sum(count) if reduce else count)
        self.device, self.dtype = x.device, next(iter(self.params.values())).dtype
        self.metric = metric

        def loss_sum(params: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
            out = functional_call(self.model, {**params, **self.fixed, **self.buffers}, (xb,))
            return self.metric(out, (xb, yb))["loss"]

        self._grad = grad(loss_sum)

    def _unflatten(self, v: Tensor) -> dict[str, Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(v, self.sizes), self.shapes)}

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector v (float64 in and out; products are computed in the model's dtype)."""
        tangent = self._unflatten(v.to(self.device, self.dtype))
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with warnings.catch_warnings():  # torch's own forward-AD decompositions still call torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated")  # Future- or Deprecation-
            for xb, yb in self.batches:
                _, hv = jvp(lambda p: self._grad(p, xb, yb), (self.params,), (tangent,))  # noqa: B023
                total += torch.cat([hv[n].reshape(-1) for n in self.names]).double()
        return (all_reduce_sum(total) if self.reduce else total) / self.count

    def linear_operator(self) -> LinearOperator:
        def mv(v: np.ndarray) -> np.ndarray:
            return self.matvec(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).ravel()).cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, dtype=np.float64)


@dataclass(frozen=True)
class Eigen:
    top: list[float]  # largest eigenvalues, descending
    min: float  # the most negative (smallest algebraic) eigenvalue; NaN if Lanczos found no estimate
    min_converged: bool  # False: `min` is ARPACK's best estimate when the restart budget ran out
    matvecs: int


def eigenvalues(op: HessianOperator, k: int = 1, tol: float = 1e-3, seed: int = 0, max_restarts: int = 1000,
                min_restarts: int = 50) -> Eigen:
    """Top-k and smallest eigenvalues by Lanczos (ARPACK's eigsh) on Hessian-vector products.

    ARPACK's tolerance is relative to the eigenvalue, and the low end of a trained network's spectrum is a
    dense cluster near zero: asked directly, it needs ~1,700 products for an MNIST-1D MLP. So the smallest
    eigenvalue is found as the most negative one of H - lambda_max*I, where it is about -lambda_max: the
    answer is then accurate to about tol * lambda_max, in a few dozen products.
    """
    if not 1 <= k < op.dim:
        raise ValueError(f"k must be in 1..{op.dim - 1}, got {k}")
    v0 = np.random.default_rng(seed).standard_normal(op.dim)
    lin = op.linear_operator()
    calls = {"n": 0}

    def product(v: np.ndarray, shift: float = 0.0) -> np.ndarray:
        calls["n"] += 1
        return lin.matvec(v) - shift * np.ravel(v)

    top = eigsh(LinearOperator(lin.shape, matvec=product, dtype=np.float64), k=k, which="LA", v0=v0, tol=tol,
                maxiter=max_restarts, return_eigenvectors=False)
    lam_max = float(np.max(top))
    shifted = LinearOperator(lin.shape, matvec=lambda v: product(v, lam_max), dtype=np.float64)
    try:
        low = eigsh(shifted, k=1, which="SA", v0=v0, tol=tol, maxiter=min_restarts, return_eigenvectors=False)
        lam_min, converged = float(low[0]) + lam_max, True
    except ArpackNoConvergence as exc:
        lam_min = float(exc.eigenvalues[0]) + lam_max if len(exc.eigenvalues) else float("nan")
        converged = False
    return Eigen(sorted((float(t) for t in top), reverse=True), lam_min, converged, calls["n"])


def top_eigenvectors(op: HessianOperator, k: int = 1, tol: float = 1e-4, seed: int = 0, max_restarts: int = 1000
                     ) -> tuple[list[float], list[dict[str, Tensor]]]:
    """The k largest eigenvalues (descending) and their unit eigenvectors, keyed by parameter name (float32, CPU).

    An eigenvector's sign is arbitrary; it is fixed here so that its largest entry is positive, so the same
    Hessian always gives the same direction."""
    if not 1 <= k < op.dim:
        raise ValueError(f"k must be in 1..{op.dim - 1}, got {k}")
    v0 = np.random.default_rng(seed).standard_normal(op.dim)
    values, vectors = eigsh(op.linear_operator(), k=k, which="LA", v0=v0, tol=tol, maxiter=max_restarts)
    order = np.argsort(values)[::-1]
    out = []
    for j in order:
        v = vectors[:, j] / np.linalg.norm(vectors[:, j])
        v = v * np.sign(v[np.argmax(np.abs(v))])
        flat = torch.from_numpy(v.astype(np.float32))
        out.append({n: t.view(s) for n, t, s in zip(op.names, torch.split(flat, op.sizes), op.shapes)})
    return [float(values[j]) for j in order], out


class HessianPointEvaluator:
    """lambda_max and lambda_min of the Hessian at grid points theta0 + sum_i c_i d_i (Li et al. 2018, Sec. 6): the
    `Evaluator` of landscape.engine.compute_surface for Hessian maps. Each rank computes its own points on its
    whole data (x, y), so the points, not the data, are split across ranks; the caller's model is not touched."""

    metric_names = ["lambda_max", "lambda_min"]
    points_per_pass = 1

    def __init__(self, model: nn.Module, theta0: dict[str, Tensor], directions: list[dict[str, Tensor]], x: Tensor,
                 y: Tensor, batch_size: int = 512, metric: Metric = cross_entropy, tol: float = 1e-3, seed: int = 0):
        self.model = copy.deepcopy(model).to(x.device).eval()
        self.setter = PointSetter(model_tensors(self.model, "weights"), theta0, directions)  # re-points the weights
        self.op = HessianOperator(self.model, x, y, batch_size, metric, reduce=False)  # ...so it reads them there
        self.tol, self.seed, self.device = tol, seed, x.device

    def evaluate(self, coords: np.ndarray) -> Tensor:
        rows = []
        for point in coords:
            self.setter(tuple(float(c) for c in point))
            e = eigenvalues(self.op, k=1, tol=self.tol, seed=self.seed)
            rows.append([e.top[0], e.min])
        return torch.tensor(rows, dtype=torch.float64, device=self.device)


def convexity_fraction(lambda_max: np.ndarray, lambda_min: np.ndarray, slack: float = 0.01) -> float:
    """The share of (finite) points where the surface is convex up to `slack`: lambda_min >= -slack * lambda_max,
    i.e. negative curvature at most that fraction of the positive one (Lanczos finds lambda_min to about tol *
    lambda_max, so an exact zero cannot be asked for)."""
    ok = np.isfinite(lambda_max) & np.isfinite(lambda_min)
    if not ok.any():
        return float("nan")
    return float(np.mean(lambda_min[ok] >= -slack * np.abs(lambda_max[ok])))


@dataclass(frozen=True)
class Trace:
    estimate: float
    stderr: float
    samples: int


def hutchinson_trace(op: HessianOperator, samples: int = 100, seed: int = 0) -> Trace:
    """tr(H) ~ mean of v^T H v over Rademacher v, with its standard error (std / sqrt(samples))."""
    if samples < 2:
        raise ValueError("at least 2 Hutchinson samples are needed for a standard error")
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(samples):
        v = torch.randint(0, 2, (op.dim,), generator=g, dtype=torch.float64) * 2 - 1
        vals.append(float(v @ op.matvec(v).cpu()))
    arr = np.asarray(vals)
    return Trace(float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(samples)), samples)


def width_1d(alpha: Sequence[float], loss: Sequence[float], threshold: float) -> float:
    """Width of the basin of a 1D curve: the length of the alpha interval around the minimum where the loss
    stays below min + threshold, with the crossings linearly interpolated. A side that never crosses is cut
    at the grid's edge (the width is then a lower bound)."""
    a, f = np.asarray(alpha, float), np.asarray(loss, float)
    f = np.where(np.isfinite(f), f, np.inf)
    i0 = int(np.argmin(f))
    level = f[i0] + threshold

    def crossing(step: int) -> float:
        i = i0
        while 0 <= i + step < len(a) and f[i + step] <= level:
            i += step
        j = i + step
        if not 0 <= j < len(a):
            return float(a[i])
        if not np.isfinite(f[j]):
            return float(a[i])
        return float(a[i] + (a[j] - a[i]) * (level - f[i]) / (f[j] - f[i]))

    return crossing(1) - crossing(-1)
