"""PCA of an optimizer's trajectory in weight space (Li et al. 2018, Sec. 7), with memory that does not grow with
the number of checkpoints.

The checkpoints' differences from the final weights, diff_i = theta_i - theta_final, are never stacked into a
matrix: their Gram matrix G_ij = <diff_i, diff_j> is built from a few of them at a time, and everything else
comes from G. As in the paper's code (scikit-learn's PCA), the differences are centred before the PCA; with
J = I - 11^T/n, the eigenpairs (lambda_k, u_k) of JGJ give the unit directions
v_k = sum_i c_ik diff_i with c_k = J u_k / sqrt(lambda_k), the explained-variance ratios lambda_k / sum(lambda),
and each checkpoint's coordinates <diff_i, v_k> = (G c_k)_i, with the final weights at the origin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from landscape.base.errors import ConfigError
from landscape.core.params import Params, dot

BLOCK = 4  # differences held at once while the Gram matrix is built: n + n^2 / (2 BLOCK) checkpoint reads


@dataclass(frozen=True)
class TrajectoryPCA:
    directions: list[Params]  # the leading unit principal directions, zero outside the chosen tensors
    explained_variance_ratio: np.ndarray  # (n,) every component's share, descending
    coords: np.ndarray  # (n, len(directions)): checkpoint i projected on the directions
    reads: int  # how many checkpoint reads it took


def gram_matrix(diff: Callable[[int], Params], n: int, block: int = BLOCK) -> tuple[np.ndarray, int]:
    """G (n, n), float64, from `diff(i)` (which reads checkpoint i); at most `block` + 1 differences in memory."""
    g, reads = np.zeros((n, n)), 0
    held: dict[int, Params] = {}
    for start in range(0, n, block):
        held.clear()  # before the next block is read, not after
        held.update((i, diff(i)) for i in range(start, min(n, start + block)))
        reads += len(held)
        for j in range(start, n):
            dj = held.get(j)
            if dj is None:
                dj, reads = diff(j), reads + 1
            for i, di in held.items():
                if i <= j:
                    g[i, j] = g[j, i] = dot(di, dj)
            del dj
    return g, reads


def trajectory_pca(diff: Callable[[int], Params], n: int, like: Params, components: int = 2,
                   block: int = BLOCK) -> TrajectoryPCA:
    """The leading `components` principal directions of the n differences `diff(i)`, their explained-variance
    ratios and the differences' coordinates along them. `like` gives the directions' names and shapes."""
    if n < components + 1:
        raise ConfigError(f"a trajectory PCA with {components} components needs at least {components + 1} "
                          f"checkpoints besides the final one, got {n}; save more often (--save-every 1)")
    g, reads = gram_matrix(diff, n, block)
    j = np.eye(n) - 1.0 / n
    lam, u = np.linalg.eigh(j @ g @ j)
    lam, u = np.clip(lam[::-1], 0.0, None), u[:, ::-1]
    if lam[components - 1] <= 1e-12 * max(lam[0], 1e-300):
        raise ConfigError("the checkpoints do not span a plane (they differ along fewer than "
                          f"{components} directions); use checkpoints from different epochs of one run")
    coef = j @ u[:, :components] / np.sqrt(lam[:components])  # (n, components)
    acc = [{k: torch.zeros_like(v, dtype=torch.float64) for k, v in like.items()} for _ in range(components)]
    for i in range(n):
        d = diff(i)
        for c, a in enumerate(acc):
            for k in a:
                a[k].add_(d[k].double(), alpha=float(coef[i, c]))
        del d
    reads += n
    dirs = [{k: v.float() for k, v in a.items()} for a in acc]
    return TrajectoryPCA(dirs, lam / lam.sum(), g @ coef, reads)
