"""Sharpness as the large-batch literature measures it, on the mean loss as a function of the weights: Keskar et
al.'s (2017) epsilon-sharpness, worst-case adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023) with
m-sharpness, average-case sharpness, and the width of a 1D basin with the spread of widths over directions.

`MeanLoss` is the loss over a fixed data set (a metric's sums over its count) at a flat float64 vector of the
chosen parameters, the others held fixed; its value and gradient are summed across ranks with one SUM, so every
rank takes the same steps and gets the same answer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import sem
from torch import Tensor, nn

from landscape.base.errors import ConfigError
from landscape.curvature.flat_loss import FlatLoss
from landscape.runtime.distributed import all_reduce_sum
from landscape.runtime.metrics import Metric, cross_entropy


class MeanLoss(FlatLoss):
    """theta -> the mean loss of `model` over `data` with the parameters `params` (default: all) set to theta.

    Args: data: this rank's share (anything landscape.runtime.sources.as_source takes); reduce=False: this rank's data
    alone. The model is used in eval mode and never modified. `theta0` is the model's own weights, flat.
    """

    def __init__(self, model: nn.Module, data: Any, metric: str | Metric = cross_entropy,
                 *, params: Collection[str] | None = None, reduce: bool = True, batch_size: int = 512,
                 loss_name: str | None = None):
        super().__init__(model, data, metric, params, batch_size, loss_name)
        self.theta0 = self.weights().double().cpu().numpy()
        self.reduce, self.evaluations = reduce, 0

    def _reduced(self, total: Tensor) -> Tensor:
        self.evaluations += 1
        return all_reduce_sum(total) if self.reduce else total

    def __call__(self, theta: np.ndarray) -> float:
        flat = torch.from_numpy(np.asarray(theta, np.float64)).to(self.device, self.dtype)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for batch in self.source:
                sums = self.sums(batch, flat)
                total += torch.stack([self.loss_of(sums).double(), sums["count"].double()])
        loss, count = self._reduced(total).tolist()
        return loss / count

    def value_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        flat = torch.from_numpy(np.asarray(theta, np.float64)).to(self.device, self.dtype).requires_grad_()
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in self.source:
            sums = self.sums(batch, flat)
            value = self.loss_of(sums)
            if value.requires_grad:  # else the loss never reads these weights: no gradient to add
                value.backward()  # one batch's graph at a time
            loss += value.detach().double()
            count += sums["count"].detach().double()
        grad = flat.grad if flat.grad is not None else torch.zeros_like(flat)
        total = self._reduced(torch.cat([grad.double(), loss[None], count[None]]))
        n = float(total[-1])
        return float(total[-2]) / n, (total[:-2] / n).cpu().numpy()


@dataclass(frozen=True)
class Measured:
    """One sharpness number: its value, its standard error (NaN when the measure is deterministic), and the
    settings that produced it."""

    value: float
    stderr: float = float("nan")
    settings: dict[str, Any] = field(default_factory=dict)
    argmax: np.ndarray | None = None  # the perturbation found (worst-case measures)
    lower_bound: bool = False  # the true value is at least this (a basin that reached the axis's edge)


def epsilon_sharpness(f: MeanLoss, eps: float = 1e-3, subspace: int | None = None, maxiter: int = 10,
                      seed: int = 0) -> Measured:
    """Keskar et al.'s sharpness, in percent: 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x)).

    A = I (full space) or, with `subspace` = p, a random n x p matrix with orthonormal columns (so its
    pseudo-inverse is A^T); C_eps is the box |y_i| <= eps * (|(A^+ x)_i| + 1). The maximum is sought with
    L-BFGS-B (scipy) for `maxiter` iterations from a random point of the box (at an exact minimum a start at
    y = 0 has a zero gradient and would not move); the largest loss seen is kept.
    """
    if not eps > 0 or maxiter < 1 or (subspace is not None and subspace < 1):
        raise ConfigError(f"epsilon-sharpness needs eps > 0, iterations >= 1 and p >= 1 (got {eps}, {maxiter}, "
                          f"{subspace})")
    x, rng = f.theta0, np.random.default_rng(seed)
    a = None if subspace is None else np.linalg.qr(rng.standard_normal((len(x), subspace)))[0]
    bound = eps * (np.abs(x if a is None else a.T @ x) + 1)
    fx = f(x)
    best = {"f": fx, "y": np.zeros_like(bound)}

    def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
        value, g = f.value_and_grad(x + (y if a is None else a @ y))
        if value > best["f"]:
            best.update(f=value, y=y.copy())
        return -value, -(g if a is None else a.T @ g)

    y0 = rng.uniform(-bound, bound)
    res = minimize(negative, y0, jac=True, method="L-BFGS-B", bounds=np.stack([-bound, bound], 1),
                   options={"maxiter": maxiter})
    settings = {"eps": eps, "subspace": subspace or "full", "maxiter": maxiter, "seed": seed, "loss": fx,
                "loss_max": best["f"], "evaluations": int(res.nfev), "start": "uniform in the box"}
    return Measured(100 * (best["f"] - fx) / (1 + fx), settings=settings, argmax=best["y"])


def _ascent_step(gu: np.ndarray, p: str, rho: float, rng: np.random.Generator) -> np.ndarray:
    """The step of length rho in the steepest direction for the l_p ball: g/|g|_2, or sign(g) for p = inf."""
    if not np.any(gu):  # a zero gradient (an exact minimum): a random direction
        gu = rng.standard_normal(len(gu))
    return rho * (gu / np.linalg.norm(gu) if p == "2" else np.sign(gu))


def _project(u: np.ndarray, p: str, rho: float) -> np.ndarray:
    if p == "2":
        n = np.linalg.norm(u)
        return u if n <= rho else u * (rho / n)
    return np.clip(u, -rho, rho)


def worst_case_increase(f: MeanLoss, rho: float, p: str = "2", steps: int = 10, seed: int = 0
                        ) -> tuple[float, np.ndarray]:
    """max f(w + delta) - f(w) over ||delta / |w|||_p <= rho, by `steps` projected normalized-gradient ascent
    steps on u = delta / |w| from u = 0 (the first step is the first-order solution); the largest loss seen."""
    w, rng = f.theta0, np.random.default_rng(seed)
    scale = np.abs(w)
    u = np.zeros_like(w)
    fw, best, best_u = None, -np.inf, u
    for _ in range(steps):
        value, g = f.value_and_grad(w + scale * u)
        fw = value if fw is None else fw
        if value > best:
            best, best_u = value, u
        u = _project(u + _ascent_step(scale * g, p, rho, rng), p, rho)
    value = f(w + scale * u)
    if value > best:
        best, best_u = value, u
    return best - fw, scale * best_u


def adaptive_sharpness(losses: Sequence[MeanLoss], rho: float, p: str = "2", steps: int = 10, seed: int = 0,
                       chunks_reduced: bool = False) -> Measured:
    """Worst-case adaptive sharpness, averaged over data chunks of m samples (m-sharpness; one chunk: the whole
    data). `losses`: this rank's chunks; chunks_reduced: they are this rank's alone (reduce=False), so the
    average is taken over every rank's chunks. The standard error is over chunks."""
    if p not in ("2", "inf") or not rho > 0 or steps < 1:
        raise ConfigError(f"adaptive sharpness needs p in 2, inf, rho > 0 and steps >= 1 (got {p}, {rho}, {steps})")
    found = [worst_case_increase(f, rho, p, steps, seed + i) for i, f in enumerate(losses)]
    inc = np.array([v for v, _ in found])
    stats = torch.tensor([inc.sum(), (inc**2).sum(), len(inc)], dtype=torch.float64)
    total, sq, n = (all_reduce_sum(stats) if chunks_reduced else stats).tolist()
    mean = total / n
    stderr = float(np.sqrt(max(sq - n * mean**2, 0.0) / (n - 1) / n)) if n > 1 else float("nan")  # sem, from sums
    settings = {"rho": rho, "p": p, "steps": steps, "seed": seed, "chunks": int(n)}
    return Measured(mean, stderr, settings, found[0][1] if len(found) == 1 else None)


def average_sharpness(f: MeanLoss, sigma: float, draws: int = 20, seed: int = 0) -> Measured:
    """E f(w + delta) - f(w) for Gaussian delta with standard deviation sigma * |w_i| per weight, estimated from
    `draws` draws (the same on every rank), with the standard error of that mean."""
    if draws < 2 or not sigma > 0:
        raise ConfigError(f"average sharpness needs sigma > 0 and at least 2 draws (got {sigma}, {draws})")
    w, rng = f.theta0, np.random.default_rng(seed)
    fw = f(w)
    inc = np.array([f(w + sigma * np.abs(w) * rng.standard_normal(len(w))) - fw for _ in range(draws)])
    settings = {"sigma": sigma, "draws": draws, "seed": seed}
    return Measured(float(inc.mean()), float(sem(inc)), settings)


@dataclass(frozen=True)
class Basin:
    """The alpha interval around a 1D curve's minimum where the loss stays within a threshold of it. `capped`: a
    side reached the axis's edge without crossing, so the width is a lower bound."""

    left: float
    right: float
    capped: bool

    @property
    def width(self) -> float:
        return self.right - self.left


def basin_1d(alpha: Sequence[float], loss: Sequence[float], threshold: float) -> Basin:
    """The basin of a 1D curve: where the loss stays below min + threshold around the minimum, the crossings
    linearly interpolated. A side that never crosses is cut at the grid's edge and marked `capped`."""
    a, f = np.asarray(alpha, float), np.asarray(loss, float)
    f = np.where(np.isfinite(f), f, np.inf)
    i0 = int(np.argmin(f))
    level = f[i0] + threshold

    def crossing(step: int) -> tuple[float, bool]:
        i = i0
        while 0 <= i + step < len(a) and f[i + step] <= level:
            i += step
        j = i + step
        if not 0 <= j < len(a):
            return float(a[i]), True
        if not np.isfinite(f[j]):
            return float(a[i]), False  # diverged between the two points: the basin ends there
        return float(a[i] + (a[j] - a[i]) * (level - f[i]) / (f[j] - f[i])), False

    (left, cap_left), (right, cap_right) = crossing(-1), crossing(1)
    return Basin(left, right, cap_left or cap_right)


def width_1d(alpha: Sequence[float], loss: Sequence[float], threshold: float) -> float:
    """The width of a 1D curve's basin (basin_1d): a lower bound when a side reaches the grid's edge."""
    return basin_1d(alpha, loss, threshold).width


def next_axis(alpha: np.ndarray, basin: Basin, limit: float) -> np.ndarray | None:
    """Where to evaluate a curve again so that its width is a width: the axis twice as wide when the basin
    reached its edge (up to +-limit), or as many points over a narrower span (+-2 widths) when the width is under
    two grid steps; None when the curve is fine as it is or cannot be improved."""
    half, n = float(np.max(np.abs(alpha))), len(alpha)
    step = (alpha[-1] - alpha[0]) / (n - 1)
    if basin.capped:
        return np.linspace(-2 * half, 2 * half, n) if 2 * half <= limit else None
    if basin.width < 2 * step:
        narrow = max(2 * basin.width, step / 4)
        return np.linspace(-narrow, narrow, n) if narrow < half else None
    return None


def spread(values: Sequence[float], settings: dict[str, Any] | None = None, lower_bound: bool = False) -> Measured:
    """The mean of measurements with its standard error, the range and the values in the settings; a lower bound
    when any of them is one."""
    v = np.asarray(values, float)
    stderr = float(sem(v)) if len(v) > 1 else float("nan")
    return Measured(float(v.mean()), stderr, {**(settings or {}), "n": len(v), "min": float(v.min()),
                                               "max": float(v.max()), "values": [float(x) for x in v]},
                    lower_bound=lower_bound)
