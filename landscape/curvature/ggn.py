"""Curvature beyond the Hessian, as operators with HessianOperator's interface (`matvec`, `dim`, `products`,
`linear_operator`, `as_params`): the generalized Gauss-Newton G = J^T H_out J, the Monte-Carlo Fisher (labels drawn
from the model's predictive distribution, seeded) and the empirical Fisher (the data's labels), each averaged over
the data's count exactly as the Hessian's loss is, and summed across ranks.

J, the Jacobian of the model's outputs (its logits) with respect to the chosen weights, is applied by forward-mode
AD (J v, the tangent of a dual forward pass) and reverse mode (J^T u, that pass's backward), never materialized.
H_out, the loss's Hessian with respect to the outputs, is in closed form for the built-in cross-entropy (softmax's
diag(p) - p p^T) and MSE (2 I), and by autograd for any other loss that is a function of the outputs alone. A
Fisher needs a predictive distribution: cross-entropy (classification and token losses: a categorical one) and MSE
(a Gaussian of variance 1/2, whose score gives its 2 I).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

from landscape.base.errors import ConfigError
from landscape.curvature.flat_loss import CurvatureOperator, evaluation_mode, twice_differentiable
from landscape.runtime.distributed import all_reduce_sum
from landscape.runtime.forward import forward_batch
from landscape.runtime.metrics import (
    LABEL_KEYS,
    Metric,
    TokenCrossEntropy,
    cross_entropy,
    inputs_of,
    logits_of,
    mse,
    targets_of,
)

WITH_DISTRIBUTION = "cross_entropy, the token losses (causal_lm, masked_lm, next_token) and mse"


class OutputCurvature(CurvatureOperator):
    """v -> C v with C = (1/count) sum over the data of J^T M J, M a matrix in the space of the outputs that each
    subclass applies (`output_product`). Args as HessianOperator's; the model is read in eval mode, never written."""

    def __init__(self, model: nn.Module, data: Any, metric: str | Metric = cross_entropy,
                 *, params: Collection[str] | None = None, reduce: bool = True, batch_size: int = 512,
                 loss_name: str | None = None):
        super().__init__(model, data, metric, params, batch_size, loss_name)
        self.reduce, self.products = reduce, 0  # nothing kept between products: J is applied afresh
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for batch in self.source:
                count += self.sums(batch)["count"].double()
        self.count = float(all_reduce_sum(count) if reduce else count)
        if not self.count > 0:
            raise ConfigError("the data has a count of 0 (no samples or tokens); pass data with targets")
        self._check_loss()

    def refresh(self) -> None:
        """Nothing to rebuild: each product reads the model's current weights (the Hessian's rebuilds its graphs)."""

    def _check_loss(self) -> None:
        """Refuse a loss that is not a function of the outputs (logits) alone: G and F need its derivatives there."""
        batch = next(iter(self.source))
        with torch.no_grad():
            z = self._forward(batch)(self.weights())
        z = z.detach().requires_grad_()
        try:
            loss = self.loss_of(self.metric(z, batch))
        except Exception as exc:  # noqa: BLE001 - whatever the user's metric does with a bare tensor
            raise ConfigError(f"the metric's loss is not a function of the model's outputs alone ({exc}); the GGN "
                              "and the Fishers need one: use the Hessian (curvature hessian)") from None
        if not loss.requires_grad:
            raise ConfigError("the metric's loss does not depend on the model's outputs (logits); the GGN and the "
                              "Fishers need one that does: use the Hessian (curvature hessian)")

    def _forward(self, batch: Any) -> Callable[[Tensor], Tensor]:
        """flat weights -> the batch's logits, the other parameters and the buffers as the model holds them."""
        fixed = {n: p.detach() for n, p in self.named.items()}
        fixed.update((n, b.detach()) for n, b in self.model.named_buffers())

        def f(flat: Tensor) -> Tensor:
            tensors = {**fixed, **dict(zip(self.names, self.unflatten(flat)))}
            return logits_of(forward_batch(lambda *a, **k: functional_call(self.model, tensors, a, k), batch))

        return f

    def output_product(self, z: Tensor, u: Tensor, batch: Any, index: int) -> Tensor:
        """M u in the outputs' space, for batch number `index`'s logits z and a tangent u of their shape."""
        raise NotImplementedError

    def product(self, v: Tensor) -> Tensor:
        """C v in the model's dtype and on its device. One forward pass per batch gives both J v (its forward-mode
        tangent) and the graph that J^T u is the backward of, so a product costs a forward with its tangent and a
        backward: about half the Hessian's rebuilt product, and no graph is kept between products."""
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with evaluation_mode(self.model), twice_differentiable(self.model):
            for index, batch in enumerate(self.source):
                leaf = self.weights().requires_grad_()
                with forward_ad.dual_level():
                    z, jv = forward_ad.unpack_dual(self._forward(batch)(forward_ad.make_dual(leaf, v)))
                    jv = jv.detach()
                if not z.requires_grad:  # the outputs never read these weights: nothing to add
                    continue
                mu = self.output_product(z.detach(), jv, batch, index).to(z.dtype)
                del jv
                total += torch.autograd.grad(z, leaf, mu, allow_unused=True, materialize_grads=True)[0]
                del z, leaf, mu
        self.products += 1
        return (all_reduce_sum(total) if self.reduce else total).div_(self.count)

    def _loss_hvp(self, z: Tensor, u: Tensor, batch: Any) -> Tensor:
        """H_out u by autograd: the loss's Hessian in the outputs, for any loss of the outputs alone."""
        z = z.detach().double().requires_grad_()
        with torch.enable_grad():
            g = torch.autograd.grad(self.loss_of(self.metric(z, batch)), z, create_graph=True)[0]
            return torch.autograd.grad(g, z, u.double(), allow_unused=True, materialize_grads=True)[0]

    def _loss_grad(self, z: Tensor, batch: Any, targets: Tensor | None = None) -> Tensor:
        """d loss / d z, each sample's (or token's) own row since the loss sums over them; with `targets`, as if
        the batch had those labels."""
        if targets is not None:
            batch = _with_targets(batch, targets)
        z = z.detach().double().requires_grad_()
        with torch.enable_grad():
            return torch.autograd.grad(self.loss_of(self.metric(z, batch)), z)[0]


class GGNOperator(OutputCurvature):
    """v -> G v, the generalized Gauss-Newton matrix J^T H_out J of the mean loss: positive semi-definite for a
    convex loss of the outputs (cross-entropy, MSE); equal to the Hessian for a linear model under MSE."""

    def output_product(self, z: Tensor, u: Tensor, batch: Any, index: int) -> Tensor:
        kind = _distribution(self.metric)
        if kind == "categorical" and self.metric is cross_entropy:  # softmax's Hessian: (diag(p) - p p^T) per row
            p = torch.softmax(z.double(), dim=-1)
            return p * u.double() - p * (p * u.double()).sum(-1, keepdim=True)
        if kind == "gaussian":
            return 2.0 * u.double()
        return self._loss_hvp(z, u, batch)  # a token loss (its shift and ignored labels), or the user's


class EmpiricalFisherOperator(OutputCurvature):
    """v -> F v with F = (1/count) sum_i g_i g_i^T, g_i the gradient of sample (or token) i's loss at its own label:
    the per-sample gradients' second moment, whose trace the gradient noise scale divides by."""

    def output_product(self, z: Tensor, u: Tensor, batch: Any, index: int) -> Tensor:
        return _outer_rows(self._loss_grad(z, batch), u)


class FisherOperator(OutputCurvature):
    """v -> F v, the Fisher of the model's predictive distribution, estimated by Monte Carlo: `draws` labels per
    sample drawn from it, each sample's score outer-multiplied. Its expectation is the GGN for cross-entropy and
    MSE. A sample's draws are a function of `seed` and of the sample itself (a hash of its inputs, and of the
    position for token losses), not of its batch or rank: the same at every product, for any batch size and any
    number of processes."""

    def __init__(self, model: nn.Module, data: Any, metric: str | Metric = cross_entropy, *, draws: int = 1,
                 seed: int = 0, **options: Any):
        super().__init__(model, data, metric, **options)
        if _distribution(self.metric) is None:
            raise ConfigError(f"the Fisher needs a loss with a predictive distribution: {WITH_DISTRIBUTION}; this "
                              "metric has none (use curvature ggn or empirical_fisher)")
        if draws < 1:
            raise ConfigError(f"draws must be >= 1, got {draws}")
        self.draws, self.seed = draws, seed

    def output_product(self, z: Tensor, u: Tensor, batch: Any, index: int) -> Tensor:
        keys = sample_keys(batch, self.seed)
        out = torch.zeros_like(u, dtype=torch.float64)
        for draw in range(self.draws):
            out += _outer_rows(self._score(z, batch, keys, draw), u)
        return out / self.draws

    def _score(self, z: Tensor, batch: Any, keys: Tensor, draw: int) -> Tensor:
        """d loss / d z at labels drawn from the model's predictive distribution (draw number `draw`)."""
        if _distribution(self.metric) == "gaussian":  # N(z, 1/2): loss (y - z)^2 has score 2 (z - y)
            u1, u2 = (keyed_uniforms(keys, z.shape, 2 * draw + k).to(z.device) for k in (0, 1))
            normal = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * torch.pi * u2)  # Box-Muller
            return 2.0 * (-(0.5 ** 0.5) * normal)  # 2 (z - y) with y = z + sqrt(1/2) N(0, 1)
        logits = z.double()
        shift = isinstance(self.metric, TokenCrossEntropy) and self.metric.shift
        probs = torch.softmax(logits, dim=-1)
        uniform = keyed_uniforms(keys, probs.shape[:-1], draw).to(probs.device)
        drawn = (torch.cumsum(probs, -1) < uniform[..., None]).sum(-1).clamp_(max=probs.shape[-1] - 1)  # inverse CDF
        if shift:  # position t predicts label t+1: the drawn label of position t goes to t+1
            labels = torch.cat([torch.zeros_like(drawn[..., :1]), drawn[..., :-1]], dim=-1)
            kept = targets_of(batch).to(labels.device) != self.metric.ignore_index
            labels = torch.where(kept, labels, targets_of(batch).to(labels.device))
        else:
            labels = drawn
            if isinstance(self.metric, TokenCrossEntropy):
                t = targets_of(batch).to(labels.device)
                labels = torch.where(t != self.metric.ignore_index, labels, t)
        return self._loss_grad(z, batch, labels)


_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 bit patterns (multiplication wraps, as the hash wants)."""
    x = (x ^ _shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def sample_keys(batch: Any, seed: int) -> Tensor:
    """One int64 key per sample (the batch's first dimension), a hash of its input tensors and `seed`: the same for
    the same sample in any batch, on any rank."""
    args, kwargs = inputs_of(batch)
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
    key = torch.full((tensors[0].shape[0],), _signed(0x9E3779B97F4A7C15 * (seed + 1) & _MASK64), dtype=torch.int64)
    for t in tensors:
        bits = t.detach().cpu().reshape(t.shape[0], -1).double().contiguous().view(torch.int64)
        salt = _mix(torch.arange(bits.shape[1], dtype=torch.int64) + 1)  # each position hashed apart, then summed:
        key = _mix(key ^ _mix(bits ^ salt).sum(1))                       # int64 sums wrap exactly, in any order
    return key


def keyed_uniforms(keys: Tensor, shape: torch.Size | tuple[int, ...], draw: int) -> Tensor:
    """Uniforms in [0, 1) of `shape` (samples first), float64: a hash of each sample's key, the position within
    the sample (a token's, an output's) and the draw number."""
    inner = int(torch.Size(shape[1:]).numel())
    positions = torch.arange(inner, dtype=torch.int64) + (draw + 1) * inner * 0x10001
    bits = _mix(_mix(keys[:, None] ^ _mix(positions[None, :])))
    return (_shr(bits, 11).double() / float(1 << 53)).view(shape)


def _distribution(metric: Any) -> str | None:
    """The predictive distribution a built-in loss is the negative log-likelihood of (up to constants)."""
    if metric is cross_entropy or isinstance(metric, TokenCrossEntropy):
        return "categorical"
    if metric is mse:
        return "gaussian"
    return None


def _outer_rows(r: Tensor, u: Tensor) -> Tensor:
    """Per sample (or token) row: r (r . u), the product with each row's own outer product r r^T."""
    r, u = r.double(), u.double()
    return r * (r * u).sum(-1, keepdim=True)


def _with_targets(batch: Any, targets: Tensor) -> Any:
    if isinstance(batch, dict):
        key = next(k for k in LABEL_KEYS if k in batch)
        return {**batch, key: targets}
    return (*batch[:-1], targets)
