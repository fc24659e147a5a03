"""What each sharpness measure will cost, told before it is paid: one forward pass, one gradient and one
Hessian-vector product are timed at the centre, and each measure's estimate is its count of those operations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from landscape.curvature.flat_loss import CurvatureOperator
from landscape.curvature.sharpness import MeanLoss

LANCZOS_PRODUCTS = 12  # a top eigenvalue at tol 1e-3 took 8-16 products on the trained networks measured
LAMBDA_MIN_PRODUCTS = 40  # the shifted run for the most negative eigenvalue: a few dozen
WIDTH_REEVALUATED = 1.3  # curves evaluated again on a wider or finer axis (a basin at the edge, or under two steps)
# Work that grows with the parameters beside the passes, in seconds per parameter, measured on a ResNet-18 (11.2M
# parameters, 2 CPU cores): scipy's L-BFGS-B step (~4 s per evaluation there) and SLQ's full reorthogonalization
# (two products with the basis so far at every step: ~100 s of 200 for 5 runs of 60 steps there)
LBFGS_PER_PARAMETER = 3.6e-7
REORTHOGONALIZATION_PER_PARAMETER = 5e-10  # per basis vector and step


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of one pass over the data at the centre: forward (the loss), gradient, Hessian-vector product;
    and the bytes the Hessian's kept graphs may hold."""

    forward: float
    gradient: float
    product: float
    graph_budget: int
    parameters: int
    on_gpu: bool = False  # SLQ's reorthogonalization then costs little beside the products (H100: 6.6 s in all)
    graph_bytes: int = 0  # what the gradient graphs of all the batches take (kept when within graph_budget)
    cached: bool = False


def time_units(f: MeanLoss, op: CurvatureOperator | None) -> UnitCosts:
    """Time one of each operation (the second call of each, so that first-call set-up is left out)."""
    def seconds(fn) -> float:
        fn()
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    product = 0.0
    if op is not None:
        v = torch.ones(op.dim, dtype=torch.float64)
        product = seconds(lambda: op.matvec(v))
    return UnitCosts(seconds(lambda: f(f.theta0)), seconds(lambda: f.value_and_grad(f.theta0)), product,
                     op.cache_bytes if op is not None else 0, f.dim, on_gpu=f.device.type == "cuda",
                     graph_bytes=op.graph_bytes if op is not None else 0, cached=op is not None and op.cached)


def estimate_text(costs: dict[str, tuple[float, str]], subsets: int) -> str:
    """The lines printed before measuring: each measure's estimate and the total."""
    lines = [f"estimate: {name} ~{_seconds(s * subsets)} ({how}{f', x {subsets} subsets' if subsets > 1 else ''})"
             for name, (s, how) in costs.items()]
    total = sum(s for s, _ in costs.values()) * subsets
    return "\n".join([*lines, f"estimate: ~{_seconds(total)} in all"])


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.0f} min"


def graph_budget_text(u: UnitCosts, budget: int) -> str:
    """The memory line printed before measuring: the budget, and whether the gradient graphs are kept in it."""
    head = f"curvature memory budget {_bytes(budget)} (--curvature-memory):"
    if not u.graph_bytes:
        return f"{head} no graph is kept between products"
    if u.cached:
        return f"{head} the gradient graphs ({_bytes(u.graph_bytes)}) are kept"
    return f"{head} the gradient graphs ({_bytes(u.graph_bytes)}) do not fit and are rebuilt at every product"


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"

