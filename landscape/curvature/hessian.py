"""The Hessian of the mean loss as an operator, and what is read off it: extreme eigenvalues (and eigenvectors)
by Lanczos, the trace by Hutchinson and Hutch++, and the Hessian's eigenvalues at the points of a grid.

The loss is a metric's sums over a fixed data set divided by its count (samples or tokens), so batches and ranks
of any size weigh exactly. A product H v is the backward pass of v through the graph of the gradient (reverse
over reverse, as PyHessian does). Those graphs are built once per batch and kept while they fit a memory budget
(`cache_bytes`); past it they are rebuilt for every product. Each product is reduced across ranks with one SUM;
scipy's ARPACK (eigsh) then runs the same iterations on every rank from the same start vector.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from scipy.stats import sem
from torch import Tensor, nn

from landscape.base.errors import ConfigError
from landscape.core.params import Params, PointSetter, model_tensors
from landscape.curvature.flat_loss import CurvatureOperator, twice_differentiable
from landscape.runtime.distributed import all_reduce_sum
from landscape.runtime.metrics import Metric, cross_entropy
from landscape.runtime.sources import batch_size_of


def graph_budget(device: torch.device) -> int:
    """Bytes the gradient graphs may keep: half the free GPU memory, or a quarter of the free host memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # not Linux
        return 2 << 30


class HessianOperator(CurvatureOperator):
    """v -> H v for the mean loss of `model` over `data`, with respect to its parameters (all of them, or the
    names in `params`; the others are held fixed).

    Args: data: this rank's share, anything landscape.runtime.sources.as_source takes ((inputs, targets) tensors, a
    DataLoader, an iterable of tuple or dict batches); the loss is averaged over every rank's data together.
    reduce=False: this rank's data alone, no collective (each rank its own Hessian). cache_bytes: how much the
    kept gradient graphs may hold (default: graph_budget). The model is used in eval mode (BatchNorm with
    running statistics) and is not copied: after its weights change in place, `refresh()` rebuilds the graphs.
    """

    def __init__(self, model: nn.Module, data: Any, metric: str | Metric = cross_entropy,
                 *, params: Collection[str] | None = None, reduce: bool = True, batch_size: int = 512,
                 cache_bytes: int | None = None, loss_name: str | None = None):
        super().__init__(model, data, metric, params, batch_size, loss_name)
        self.reduce = reduce
        self.cache_bytes = graph_budget(self.device) if cache_bytes is None else cache_bytes
        self.products = 0
        self.refresh()

    def _graph(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(leaf, gradient of the batch's loss sum with its graph, count) at the current weights. The chosen
        weights are one flat leaf, so a product passes one tensor in and gets one out, with no split or concat."""
        leaf = self.weights().requires_grad_()
        with twice_differentiable(self.model):
            sums = self.sums(batch, leaf)
            loss = self.loss_of(sums)
            if not loss.requires_grad:  # the loss never reads these weights: their Hessian is 0
                return leaf, torch.zeros_like(leaf), sums["count"].detach()
            grad = torch.autograd.grad(loss, leaf, create_graph=True, allow_unused=True,  # weights the
                                       materialize_grads=True)[0]                      # loss never reads: zero rows
        return leaf, grad, sums["count"].detach()

    def refresh(self) -> None:
        """Count the data and build the gradient graphs at the model's current weights, keeping them while they
        fit cache_bytes (the first batch's saved tensors are measured and scaled by the samples)."""
        saved = {"bytes": 0}

        def pack(t: Tensor) -> Tensor:
            saved["bytes"] += t.numel() * t.element_size()
            return t

        graphs: list[tuple[Tensor, Tensor]] | None = []
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        per_sample, samples = 0.0, 0
        for i, batch in enumerate(self.source):
            if graphs is None:
                with torch.no_grad():
                    count += self.sums(batch)["count"].double()
                continue
            if i == 0:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    leaf, grad, n = self._graph(batch)
            else:
                leaf, grad, n = self._graph(batch)
            count += n.double()
            samples += batch_size_of(batch)
            per_sample = per_sample or saved["bytes"] / max(samples, 1)
            graphs.append((leaf, grad))
            if per_sample * samples > self.cache_bytes:
                graphs = None  # too large to keep: rebuilt at every product
        self._graphs = graphs
        self.count = float(all_reduce_sum(count) if self.reduce else count)
        if not self.count > 0:
            raise ConfigError("the data has a count of 0 (no samples or tokens); pass data with targets")

    @property
    def cached(self) -> bool:
        return self._graphs is not None

    def _graphs_now(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._graphs is not None:
            yield from self._graphs
            return
        for batch in self.source:
            leaf, grad, _ = self._graph(batch)
            yield leaf, grad

    def matvec(self, v: Tensor) -> Tensor:
        """H v for a flat vector v (float64 in and out; products are computed in the model's dtype)."""
        v = v.to(self.device, self.dtype)
        total = None
        for leaf, grad in self._graphs_now():
            if not grad.requires_grad:  # a gradient constant in the weights (a linear model's) adds nothing
                continue
            hv = torch.autograd.grad(grad, leaf, v, retain_graph=self.cached, allow_unused=True,
                                     materialize_grads=True)[0].double()
            total = hv if total is None else total.add_(hv)
        if total is None:
            total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        self.products += 1
        return (all_reduce_sum(total) if self.reduce else total).div_(self.count)


@dataclass(frozen=True)
class Eigen:
    top: list[float]  # largest eigenvalues, descending
    min: float  # the most negative (smallest algebraic) eigenvalue; NaN when not asked for, or not found
    min_converged: bool  # False: `min` was not asked for, or is ARPACK's best estimate when its budget ran out
    matvecs: int
    vectors: list[Params] | None = None  # unit eigenvectors of `top` (when asked for), the largest entry positive


def krylov_size(k: int, dim: int) -> int:
    """ARPACK's Lanczos basis size: k + 6. Its default, max(2k+1, 20), makes a top eigenvalue cost at least 20
    products; with k + 6, 8 to 16 products reach tol = 1e-3 on the trained networks of benchmarks/hessian.py."""
    return min(dim, max(2 * k + 1, k + 6))


def eigenvalues(op: HessianOperator, k: int = 1, tol: float = 1e-3, *, seed: int = 0, smallest: bool = False,
                vectors: bool = False, max_restarts: int = 1000, min_restarts: int = 50,
                v0: np.ndarray | None = None) -> Eigen:
    """The k largest eigenvalues by Lanczos (ARPACK's eigsh) on Hessian-vector products; with `smallest`, the
    most negative one too, and with `vectors`, the top eigenvectors.

    ARPACK stops when the Ritz residual |H v - theta v| <= tol * |theta|, which bounds the eigenvalue's relative
    error by tol (the default: 0.1%). The low end of a trained network's spectrum is a dense cluster near zero:
    asked directly, ARPACK needs ~1,700 products for an MNIST-1D MLP's smallest eigenvalue. So the smallest
    eigenvalue is found as the most negative one of H - lambda_max*I, where it is about -lambda_max: the
    answer is then accurate to about tol * lambda_max, in a few dozen products. `v0` (dim,) starts Lanczos there
    instead of at a random vector of `seed`: a warm start from an earlier eigenvector.
    """
    if not 1 <= k < op.dim:
        raise ValueError(f"k must be in 1..{op.dim - 1}, got {k}")
    v0 = np.random.default_rng(seed).standard_normal(op.dim) if v0 is None else np.asarray(v0, np.float64)
    lin = op.linear_operator()
    start = op.products
    found = eigsh(lin, k=k, which="LA", v0=v0, tol=tol, ncv=krylov_size(k, op.dim), maxiter=max_restarts,
                  return_eigenvectors=vectors)
    values, vecs = found if vectors else (found, None)
    order = np.argsort(values)[::-1]
    top = [float(values[j]) for j in order]
    lam_min, converged = float("nan"), False
    if smallest:
        shifted = LinearOperator(lin.shape, matvec=lambda v: lin.matvec(v) - top[0] * np.ravel(v), dtype=np.float64)
        try:
            low = eigsh(shifted, k=1, which="SA", v0=v0, tol=tol, maxiter=min_restarts, return_eigenvectors=False)
            lam_min, converged = float(low[0]) + top[0], True
        except ArpackNoConvergence as exc:
            lam_min = float(exc.eigenvalues[0]) + top[0] if len(exc.eigenvalues) else float("nan")
    unit = None
    if vecs is not None:
        unit = []
        for j in order:
            unit.append(op.as_params(unit_vector(vecs[:, j])))
    return Eigen(top, lam_min, converged, op.products - start, unit)


def unit_vector(v: np.ndarray) -> np.ndarray:
    """An eigenvector of unit norm with the sign it lacks fixed: its largest entry positive."""
    v = v / np.linalg.norm(v)
    return v * np.sign(v[np.argmax(np.abs(v))])


class HessianPointEvaluator:
    """lambda_max and lambda_min of the Hessian at grid points theta0 + sum_i c_i d_i (Li et al. 2018, Sec. 6): the
    `Evaluator` of landscape.core.grid_eval.compute_surface for Hessian maps. Each rank computes its own points on its
    whole data, so the points, not the data, are split across ranks; the caller's model is not touched."""

    metric_names = ["lambda_max", "lambda_min"]
    points_per_pass = 1

    def __init__(self, model: nn.Module, theta0: Params, directions: list[Params], data: Any,
                 *, metric: str | Metric = cross_entropy, tol: float = 1e-3, seed: int = 0, batch_size: int = 512,
                 loss_name: str | None = None):
        self.model = copy.deepcopy(model).eval()
        self.setter = PointSetter(model_tensors(self.model, "weights"), theta0, directions)  # re-points the weights
        self.op = HessianOperator(self.model, data, metric, reduce=False, batch_size=batch_size,  # ...read there
                                  loss_name=loss_name)
        self.tol, self.seed = tol, seed

    def evaluate(self, coords: np.ndarray) -> Tensor:
        rows = []
        for point in coords:
            self.setter(tuple(float(c) for c in point))
            self.op.refresh()
            e = eigenvalues(self.op, k=1, tol=self.tol, seed=self.seed, smallest=True)
            rows.append([e.top[0], e.min])
        return torch.tensor(rows, dtype=torch.float64, device=self.op.device)


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
    products: int


def _rademacher(g: torch.Generator, n: int, k: int) -> Tensor:
    return (torch.randint(0, 2, (n, k), generator=g, dtype=torch.float64) * 2 - 1)


def hutchinson_trace(op: HessianOperator, samples: int = 100, seed: int = 0) -> Trace:
    """tr(H) ~ mean of v^T H v over Rademacher v, with its standard error (std / sqrt(samples))."""
    if samples < 2:
        raise ConfigError("at least 2 Hutchinson samples are needed for a standard error")
    v = _rademacher(torch.Generator().manual_seed(seed), op.dim, samples)
    vals = np.array([float(v[:, j] @ op.matvec(v[:, j]).cpu()) for j in range(samples)])
    return Trace(float(vals.mean()), float(sem(vals)), samples)


def hutchpp_trace(op: HessianOperator, products: int = 99, seed: int = 0) -> Trace:
    """tr(H) by Hutch++ (Meyer et al. 2021): a third of the products find the dominant subspace Q (from H S),
    a third take tr(Q^T H Q) exactly, and a third estimate the rest by Hutchinson on vectors projected off Q.
    The standard error is that of the last part, the only random one given Q.

    Memory: Q and H S are k = products // 3 vectors in the operator's dtype and on its device (k x parameters x
    4 bytes in fp32); the random vectors are drawn one at a time."""
    k = products // 3
    if k < 2:
        raise ConfigError(f"Hutch++ needs at least 6 products for a standard error, got {products}")
    g = torch.Generator().manual_seed(seed)
    sketch = torch.empty(op.dim, k, dtype=op.dtype, device=op.device)
    for j in range(k):
        sketch[:, j] = op.matvec(_rademacher(g, op.dim, 1)[:, 0]).to(op.dtype)
    q = torch.linalg.qr(sketch).Q
    del sketch
    exact = sum(float(q[:, j].double() @ op.matvec(q[:, j].double())) for j in range(k))
    vals = []
    for _ in range(k):
        r = _rademacher(g, op.dim, 1)[:, 0].to(op.device)
        r -= (q @ (q.T @ r.to(op.dtype))).double()
        vals.append(float(r @ op.matvec(r)))
    return Trace(exact + float(np.mean(vals)), float(sem(vals)), 3 * k)
