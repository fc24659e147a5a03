"""The edge of stability (Cohen et al. 2021, 2022): during training the top eigenvalue of the loss's Hessian rises
until it hovers at the largest value for which the optimizer's step is stable on a quadratic, a threshold set by
the optimizer and its learning rate. For Adam the eigenvalue is the preconditioned one, of P^-1 H with Adam's
P = diag(sqrt(v_hat) + eps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from landscape.base.errors import ConfigError
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


def unwrapped_optimizer(opt: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate's AcceleratedOptimizer, Lightning's
    LightningOptimizer: both keep it as `.optimizer` / `._optimizer`)."""
    for _ in range(4):  # AcceleratedOptimizer is an Optimizer itself, of no class the thresholds know: look inside
        inner = getattr(opt, "optimizer", None) or getattr(opt, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        opt = inner
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError("optimizer: not a torch.optim.Optimizer (nor a wrapper holding one as .optimizer)")
    return opt


@dataclass(frozen=True)
class Threshold:
    """The edge-of-stability threshold of an optimizer at its current lr: the value (None where none is known, and
    `undefined` says why), the lr, and Adam's preconditioner (None for the others, and before Adam's first step)."""

    value: float | None
    lr: float
    preconditioner: np.ndarray | None = None
    undefined: str | None = None


def threshold_of(opt: Any, params: list[torch.nn.Parameter]) -> Threshold:
    """The threshold of a torch optimizer object, read from its param groups and state: SGD (plain, heavy ball,
    Nesterov) and Adam/AdamW (on the eigenvalue preconditioned by P = sqrt(v_hat) + eps over `params`)."""
    opt = unwrapped_optimizer(opt)
    groups = opt.param_groups
    lr = float(groups[0]["lr"])
    if any(float(g["lr"]) != lr for g in groups):
        return Threshold(None, lr, undefined="its param groups have different learning rates")
    if not lr > 0:  # the end of a linear decay: no step is taken, so none is unstable
        return Threshold(None, lr, undefined=f"the learning rate is {lr:g}")
    if isinstance(opt, torch.optim.SGD):
        momentum, nesterov = float(groups[0].get("momentum", 0.0)), bool(groups[0].get("nesterov", False))
        if groups[0].get("dampening", 0) or any(g.get("momentum", 0) != momentum for g in groups):
            return Threshold(None, lr, undefined="dampening, or momenta that differ between param groups")
        return Threshold(stability_threshold("sgd", lr, momentum, nesterov), lr)
    if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        pre = adam_preconditioner(opt, params)
        if pre is None:
            return Threshold(None, lr, undefined="Adam has taken no step yet (no second moments)")
        return Threshold(stability_threshold("adam", lr, beta1=float(groups[0]["betas"][0])), lr, pre)
    return Threshold(None, lr, undefined=f"no stability threshold is known for {type(opt).__name__} (SGD, Adam and "
                                         "AdamW have one; LARS and LAMB step each layer by its own size)")
