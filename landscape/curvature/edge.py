"""The edge of stability (Cohen et al. 2021, 2022): during training the top eigenvalue of the loss's Hessian rises
until it hovers at the largest value for which the optimizer's step is stable on a quadratic, a threshold set by
the optimizer and its learning rate. For Adam the eigenvalue is the preconditioned one, of P^-1 H with Adam's
P = diag(sqrt(v_hat) + eps)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from landscape.curvature.hessian import HessianOperator, krylov_size, unit_vector


def stability_threshold(optimizer: str, lr: float, momentum: float = 0.0, nesterov: bool = False,
                        beta1: float = 0.9) -> float | None:
    """The threshold the top eigenvalue is measured against: 2/lr for gradient descent, 2(1+beta)/lr with heavy-ball
    momentum beta, (2+2beta)/((1+2beta) lr) with Nesterov momentum, and (2+2beta1)/((1-beta1) lr) for Adam and AdamW
    (on the preconditioned eigenvalue). None for LARS and LAMB: their step size differs per layer, so no one
    threshold applies."""
    if optimizer == "sgd":
        if nesterov and momentum > 0:
            return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr)
        return 2 * (1 + momentum) / lr
    if optimizer in ("adam", "adamw"):
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    return None


def adam_preconditioner(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> np.ndarray | None:
    """Adam's diagonal P = sqrt(v_hat) + eps over `params`, flat (float64), in their order; None before its first
    step (no second moments yet)."""
    parts = []
    for group in opt.param_groups:
        eps, beta2 = group["eps"], group["betas"][1]
        for p in group["params"]:
            state = opt.state.get(p, {})
            if "exp_avg_sq" not in state:
                return None
            step = float(state["step"])
            parts.append((p, (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt().add(eps)))
    by_param = {id(p): d for p, d in parts}
    return torch.cat([by_param[id(p)].reshape(-1).double().cpu() for p in params]).numpy()


def top_eigenvalue(op: HessianOperator, v0: np.ndarray | None = None, tol: float = 1e-3,
                   preconditioner: np.ndarray | None = None, seed: int = 0) -> tuple[float, np.ndarray]:
    """The largest eigenvalue of H (or of P^-1 H, as the symmetric P^-1/2 H P^-1/2) and its unit eigenvector, by
    Lanczos started at `v0` (a warm start from the last one) or at a random vector of `seed`."""
    hessian = lin = op.linear_operator()
    if preconditioner is not None:
        scale = 1.0 / np.sqrt(preconditioner)
        lin = LinearOperator(hessian.shape, matvec=lambda v: scale * hessian.matvec(scale * np.ravel(v)),
                             dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(op.dim) if v0 is None else np.asarray(v0, np.float64)
    values, vectors = eigsh(lin, k=1, which="LA", v0=start, tol=tol, ncv=krylov_size(1, op.dim), maxiter=1000)
    return float(values[0]), unit_vector(vectors[:, 0])
