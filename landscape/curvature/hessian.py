"""The Hessian of the mean loss as an operator, and what is read off it: extreme eigenvalues (and eigenvectors)
by Lanczos, the trace by Hutchinson and Hutch++, and the Hessian's eigenvalues at the points of a grid.

The loss is a metric's sums over a fixed data set divided by its count (samples or tokens), so batches and ranks
of any size weigh exactly. A product H v is the backward pass of v through the graph of the gradient (reverse
over reverse, as PyHessian does). Those graphs are built once per batch and kept while they fit a memory budget
(`cache_bytes`); past it they are rebuilt for every product. Each product is reduced across ranks with one SUM;
scipy's ARPACK (eigsh) then runs the same iterations on every rank from the same start vector.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from scipy.stats import sem
from torch import Tensor, nn

from landscape.base.errors import ConfigError
from landscape.core.params import Params
from landscape.curvature.flat_loss import CurvatureOperator, twice_differentiable
from landscape.runtime.distributed import all_reduce_sum
from landscape.runtime.metrics import Metric, cross_entropy
from landscape.runtime.sources import batch_size_of

CPU_KEPT_BYTES = 256 << 20  # on CPU, what the kept graphs (and Hutch++'s vectors) may hold by default


def graph_budget(device: torch.device) -> int:
    """Bytes the curvature may keep beside one batch's graph (kept gradient graphs, Hutch++'s vectors): half the
    free GPU memory; on CPU, 256 MiB (at most a quarter of the free memory). On CPU a kept graph saves the
    forward and first backward of each product, but past a few hundred MB it costs more memory than it saves
    time (a ResNet-18 on 128 samples: 0.8 GB kept for 17 % less time per product), so larger ones are rebuilt."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # not Linux
        free = 2 << 30
    return min(free, CPU_KEPT_BYTES)


class HessianOperator(CurvatureOperator):
    """v -> H v for the mean loss of `model` over `data`, with respect to its parameters (all of them, or the
    names in `params`; the others are held fixed).

    Args: data: this rank's share, anything landscape.runtime.sources.as_source takes ((inputs, targets) tensors, a
    DataLoader, an iterable of tuple or dict batches); the loss is averaged over every rank's data together.
    reduce=False: this rank's data alone, no collective (each rank its own Hessian). cache_bytes: how much the
    kept gradient graphs may hold (default: graph_budget); past it each batch's graph is built, used and freed
    at every product, so one batch's graph is the most held. `graph_bytes` is what all of them take (measured
    on the first batch, scaled by the samples). The model is used in eval mode (BatchNorm with running
    statistics) and is not copied: after its weights change in place, `refresh()` rebuilds the graphs.
    """

    def __init__(self, model: nn.Module, data: Any, metric: str | Metric = cross_entropy,
                 *, params: Collection[str] | None = None, reduce: bool = True, batch_size: int = 512,
                 cache_bytes: int | None = None, loss_name: str | None = None):
        super().__init__(model, data, metric, params, batch_size, loss_name)
        self.reduce = reduce
        self.cache_bytes = graph_budget(self.device) if cache_bytes is None else cache_bytes
        self.products, self.graph_bytes = 0, 0
        self.refresh()

    def _graph(self, batch: Any) -> tuple[list[Tensor], list[Tensor] | None, Tensor]:
        """(leaves, gradients of the batch's loss sum with their graph, count) at the current weights: one leaf
        per chosen parameter (a flat leaf would add a copy of the weights and of the gradient to every graph);
        gradients None when the loss never reads these weights (their Hessian is 0)."""
        leaves = [self.named[n].detach().requires_grad_() for n in self.names]
        with twice_differentiable(self.model):
            sums = self.sums(batch, leaves)
            loss = self.loss_of(sums)
            if not loss.requires_grad:
                return leaves, None, sums["count"].detach()
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True,  # weights the
                                        materialize_grads=True)                         # loss never reads: 0
        return leaves, list(grads), sums["count"].detach()

    def refresh(self) -> None:
        """Count the data and build the gradient graphs at the model's current weights, keeping them while they
        fit cache_bytes (the first batch's saved tensors are measured and scaled by the samples)."""
        saved = {"bytes": 0}

        def pack(t: Tensor) -> Tensor:
            saved["bytes"] += t.numel() * t.element_size()
            return t

        self._graphs = None  # the old graphs go before the new ones are built
        graphs: list[tuple[list[Tensor], list[Tensor] | None]] | None = []
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        per_sample, samples = 0.0, 0
        for i, batch in enumerate(self.source):
            samples += batch_size_of(batch)
            if graphs is None:
                with torch.no_grad():
                    count += self.sums(batch)["count"].double()
                continue
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if i == 0 else contextlib.nullcontext():
                leaves, grads, n = self._graph(batch)
            count += n.double()
            per_sample = per_sample or saved["bytes"] / max(samples, 1)
            graphs.append((leaves, grads))
            del leaves, grads
            if per_sample * samples > self.cache_bytes:
                graphs = None  # too large to keep: rebuilt at every product
        self._graphs = graphs
        self.graph_bytes = int(per_sample * samples)
        self.count = float(all_reduce_sum(count) if self.reduce else count)
        if not self.count > 0:
            raise ConfigError("the data has a count of 0 (no samples or tokens); pass data with targets")

    @property
    def cached(self) -> bool:
        return self._graphs is not None

    def product(self, v: Tensor) -> Tensor:
        """H v in the model's dtype and on its device, for v of that dtype (the memory-lean path the eigensolver
        and the trace use: no float64 copies of the weights' size)."""
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        parts, tangents = self.unflatten(total), self.unflatten(v)
        graphs = self._graphs if self._graphs is not None else self._rebuilt()
        for leaves, grads in graphs:
            used = [i for i, g in enumerate(grads or ()) if g.requires_grad]  # a gradient constant in the
            if not used:                                                     # weights (a linear model's) adds 0
                continue
            hv = torch.autograd.grad([grads[i] for i in used], leaves, [tangents[i] for i in used],
                                     retain_graph=self._graphs is not None, allow_unused=True, materialize_grads=True)
            for part, h in zip(parts, hv):
                part += h
            del hv, leaves, grads
        self.products += 1
        return (all_reduce_sum(total) if self.reduce else total).div_(self.count)

    def _rebuilt(self) -> Iterator[tuple[list[Tensor], list[Tensor] | None]]:
        """One batch's graph at a time, built for the product and freed after it."""
        for batch in self.source:
            leaves, grads, _ = self._graph(batch)
            yield leaves, grads
            del leaves, grads


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
    start = op.products
    if k == 1 and not vectors and not smallest:  # the common ask: three vectors held, not ARPACK's k + 9
        return Eigen([lean_lanczos_top(op, tol, seed=seed, v0=v0)], float("nan"), False, op.products - start)
    v0 = np.random.default_rng(seed).standard_normal(op.dim) if v0 is None else np.asarray(v0, np.float64)
    lin = op.linear_operator()
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


def lean_lanczos_top(op: CurvatureOperator, tol: float = 1e-3, *, seed: int = 0, v0: np.ndarray | None = None,
                     max_steps: int = 300) -> float:
    """The largest eigenvalue by Lanczos without a stored basis: two vectors in the model's dtype on its device
    beside the product's (ARPACK holds k + 9 in float64: 1 GB more on a ResNet-18), and the tridiagonal matrix's
    eigenvalues by scipy's eigh_tridiagonal at each step. It stops on the bound ARPACK uses, |H y - theta y| =
    beta_m |s_m| <= tol * theta for the top Ritz pair (theta, y = Q s); without reorthogonalization lost
    orthogonality only adds copies of converged eigenvalues (Paige 1976), never a wrong largest one. Starts at
    `v0`, else a normal vector of `seed`."""
    if v0 is None:
        q = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed), dtype=op.dtype).to(op.device)
    else:
        q = torch.as_tensor(np.asarray(v0)).to(op.device, op.dtype)
    q /= torch.linalg.vector_norm(q)
    q_prev = torch.zeros_like(q)
    alphas: list[float] = []
    betas: list[float] = []
    theta = float("nan")
    for _ in range(min(max_steps, op.dim)):
        w = q_prev.mul_(-betas[-1] if betas else 0.0).add_(op.product(q))  # q_prev's memory becomes w
        alphas.append(float(torch.dot(w, q)))
        w.add_(q, alpha=-alphas[-1])
        beta = float(torch.linalg.vector_norm(w))
        values, vecs = eigh_tridiagonal(np.array(alphas), np.array(betas))
        theta = float(values[-1])
        if beta * abs(vecs[-1, -1]) <= tol * abs(theta) or beta <= 1e-12 * max(abs(theta), 1.0):
            return theta
        betas.append(beta)
        q_prev, q = q, w.div_(beta)
    return theta


def unit_vector(v: np.ndarray) -> np.ndarray:
    """An eigenvector of unit norm with the sign it lacks fixed: its largest entry positive."""
    v = v / np.linalg.norm(v)
    return v * np.sign(v[np.argmax(np.abs(v))])


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
    method: str = "Hutch++"


def _rademacher(g: torch.Generator, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randint(0, 2, (n,), generator=g).to(dtype).mul_(2).sub_(1)


def hutchinson_trace(op: CurvatureOperator, samples: int = 100, seed: int = 0) -> Trace:
    """tr(H) ~ mean of v^T H v over Rademacher v, with its standard error (std / sqrt(samples)). One random
    vector is held at a time, in the model's dtype on its device."""
    if samples < 2:
        raise ConfigError("at least 2 Hutchinson samples are needed for a standard error")
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(samples):
        v = _rademacher(g, op.dim, op.dtype).to(op.device)
        vals.append(float(torch.dot(v, op.product(v))))
    return Trace(float(np.mean(vals)), float(sem(vals)), samples, "Hutchinson")


def hutchpp_bytes(op: CurvatureOperator, products: int) -> int:
    """What Hutch++ holds beside the products: its k = products // 3 sketch vectors and their orthonormal basis."""
    return 2 * (products // 3) * op.dim * torch.finfo(op.dtype).bits // 8


def hutchpp_trace(op: CurvatureOperator, products: int = 99, seed: int = 0) -> Trace:
    """tr(H) by Hutch++ (Meyer et al. 2021): a third of the products find the dominant subspace Q (from H S),
    a third take tr(Q^T H Q) exactly, and a third estimate the rest by Hutchinson on vectors projected off Q.
    The standard error is that of the last part, the only random one given Q.

    Memory: Q and H S are k = products // 3 vectors in the operator's dtype and on its device (hutchpp_bytes:
    2 x k x parameters x 4 bytes in fp32); the random vectors are drawn one at a time."""
    k = products // 3
    if k < 2:
        raise ConfigError(f"Hutch++ needs at least 6 products for a standard error, got {products}")
    g = torch.Generator().manual_seed(seed)
    sketch = torch.empty(op.dim, k, dtype=op.dtype, device=op.device)
    for j in range(k):
        sketch[:, j] = op.product(_rademacher(g, op.dim, op.dtype).to(op.device))
    q = torch.linalg.qr(sketch).Q
    del sketch
    exact = sum(float(torch.dot(q[:, j], op.product(q[:, j].contiguous()))) for j in range(k))
    vals = []
    for _ in range(k):
        r = _rademacher(g, op.dim, op.dtype).to(op.device)
        r -= q @ (q.T @ r)
        vals.append(float(torch.dot(r, op.product(r))))
    return Trace(exact + float(np.mean(vals)), float(sem(vals)), 3 * k)


def trace_estimate(op: CurvatureOperator, products: int, seed: int = 0, budget: int | None = None) -> Trace:
    """The trace with `products` products: Hutch++ when its vectors fit `budget` bytes (default: graph_budget),
    else Hutchinson (one vector held at a time), whose standard error is then the larger."""
    budget = graph_budget(op.device) if budget is None else budget
    if products >= 6 and hutchpp_bytes(op, products) <= budget:
        return hutchpp_trace(op, products, seed)
    return hutchinson_trace(op, max(products, 2), seed)
