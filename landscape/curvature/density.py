"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019): Lanczos from random
unit vectors gives, per run, Ritz values (nodes) and the squared first components of their eigenvectors
(weights), a quadrature rule for v^T f(H) v; the density is that rule smoothed by a Gaussian, averaged over runs.

scipy's ARPACK does not return its tridiagonal matrix, so the m-step Lanczos recurrence (with full
reorthogonalization, as the quadrature needs) is written here; scipy diagonalizes the tridiagonal matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from landscape.base.errors import ConfigError
from landscape.curvature.hessian import HessianOperator


@dataclass(frozen=True)
class Density:
    nodes: np.ndarray  # (runs, steps) Ritz values
    weights: np.ndarray  # (runs, steps), each row sums to 1

    def moment(self, k: int) -> np.ndarray:
        """Per run, sum_i w_i nodes_i^k: an estimate of tr(H^k)/n (exact for v^T H^k v, k < 2 * steps)."""
        return (self.weights * self.nodes**k).sum(1)

    def smoothed(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """The density on `grid`: each node a Gaussian of width sigma, weighted, averaged over runs."""
        z = (grid[:, None, None] - self.nodes[None]) / sigma
        return (self.weights[None] * np.exp(-0.5 * z**2)).sum(2).mean(1) / (sigma * np.sqrt(2 * np.pi))


def lanczos(op: HessianOperator, v: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The m x m Lanczos tridiagonal matrix (its diagonal and off-diagonal) of H from the unit vector v, stopped
    early if the Krylov space closes (an invariant subspace: the quadrature is then exact). The basis is kept in
    the operator's dtype and on its device (steps x parameters x 4 bytes in fp32); the recurrence is in float64."""
    basis = torch.zeros(steps, len(v), dtype=op.dtype, device=op.device)
    alpha, beta = [], []
    q = torch.from_numpy(v / np.linalg.norm(v)).to(op.device)
    for j in range(steps):
        basis[j] = q.to(op.dtype)
        w = op.matvec(q)
        alpha.append(float(q @ w))
        for _ in range(2):  # full reorthogonalization, twice for safety
            w -= (basis[:j + 1].T @ (basis[:j + 1] @ w.to(op.dtype))).double()
        b = float(torch.linalg.vector_norm(w))
        if j == steps - 1 or b < 1e-10 * max(abs(alpha[0]), 1e-30):
            break
        beta.append(b)
        q = w / b
    return np.array(alpha), np.array(beta)


def spectral_density(op: HessianOperator, runs: int = 5, steps: int = 60, seed: int = 0) -> Density:
    """SLQ with `runs` Rademacher start vectors of `steps` Lanczos steps each (the same on every rank)."""
    if runs < 1 or steps < 2:
        raise ConfigError(f"the spectral density needs runs >= 1 and steps >= 2 (got {runs}, {steps})")
    steps = min(steps, op.dim)
    rng = np.random.default_rng(seed)
    nodes, weights = np.zeros((runs, steps)), np.zeros((runs, steps))
    for r in range(runs):
        alpha, beta = lanczos(op, rng.choice([-1.0, 1.0], op.dim), steps)
        theta, vecs = eigh_tridiagonal(alpha, beta)
        m = len(theta)  # fewer than `steps` when the space closed: the rest weigh nothing
        nodes[r, :m], weights[r, :m] = theta, vecs[0] ** 2
        nodes[r, m:] = theta[-1]
    return Density(nodes, weights)
