"""The loss of a model over fixed data as a function of one flat vector of chosen weights: which parameters it
covers, flattening and unflattening them, and a batch's metric sums at given values of them (the other parameters
and the buffers as the model holds them now). landscape.curvature.hessian and landscape.curvature.sharpness build on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.base.errors import ConfigError
from landscape.core.params import Params
from landscape.runtime.forward import forward_batch, modes_kept
from landscape.runtime.metrics import Metric, Sums, check_sums, cross_entropy, get_metric, loss_key
from landscape.runtime.sources import as_source


@contextlib.contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """Forward passes whose backward can itself be differentiated (Hessian-vector products): attention by the
    math kernel of scaled_dot_product_attention (the fused CPU and GPU kernels have no double backward) and, for
    recurrent layers on CUDA, without cuDNN (whose RNN backward has none either)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        if any(isinstance(m, nn.RNNBase) for m in model.modules()):
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        yield


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, every module's own mode restored after it."""
    with modes_kept(model):
        model.eval()
        yield


class FlatLoss:
    """The chosen parameters of `model` (all of them, or the names in `params`) as one flat vector, and the sums
    of `metric` over the batches of `data` (anything landscape.runtime.sources.as_source takes) at any value of it.
    `metric` is what `surface` takes: a built-in name, a metric function or object, or a runtime.metrics.Criterion;
    its loss is the sum `loss_of` picks (`loss_name`, else "loss", else the one ending in "loss", else the first).

    The model is used in eval mode (BatchNorm with running statistics) and read, never written: `weights()` and
    the fixed tensors are its current values. Its own train/eval mode is left as it was (eval holds only while a
    batch's sums are taken)."""

    def __init__(self, model: nn.Module, data: Any, metric: str | Metric = cross_entropy,
                 params: Collection[str] | None = None, batch_size: int = 512, loss_name: str | None = None):
        self.model = model
        self.named = dict(model.named_parameters())
        self.names = [n for n in self.named if params is None or n in params]
        if not self.names:
            raise ConfigError("the loss was asked over no parameters; check --params against the model's names")
        first = self.named[self.names[0]]
        self.device, self.dtype = first.device, first.dtype
        self.shapes = [self.named[n].shape for n in self.names]
        self.sizes = [self.named[n].numel() for n in self.names]
        self.dim = sum(self.sizes)
        self.source = as_source(data, self.device, batch_size)
        self.metric = get_metric(metric)
        self.loss_name, self._loss_key = loss_name, None

    def loss_of(self, sums: Sums) -> Tensor:
        """The metric's loss sum (landscape.runtime.metrics.loss_key: `loss_name`, else "loss", ...)."""
        if self._loss_key is None:
            self._loss_key = loss_key(list(sums), self.loss_name)
        return sums[self._loss_key]

    def weights(self) -> Tensor:
        """The chosen parameters' current values, flat (a copy, in the model's dtype and on its device)."""
        return torch.cat([self.named[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Views of a flat vector shaped as the chosen parameters, in their order."""
        return [t.view(s) for t, s in zip(torch.split(flat, self.sizes), self.shapes)]

    def as_params(self, v: np.ndarray) -> Params:
        """A flat vector as named tensors (float32, CPU)."""
        flat = torch.from_numpy(np.asarray(v, dtype=np.float32))
        return dict(zip(self.names, self.unflatten(flat)))

    def sums(self, batch: Any, flat: Tensor | list[Tensor] | None = None) -> Sums:
        """The metric's sums over one batch with the chosen parameters at `flat` (one flat vector, or a tensor per
        chosen parameter; None: as the model has them)."""
        tensors = {n: p.detach() for n, p in self.named.items()}
        if flat is not None:
            tensors.update(zip(self.names, flat if isinstance(flat, list) else self.unflatten(flat)))
        tensors.update((n, b.detach()) for n, b in self.model.named_buffers())
        with evaluation_mode(self.model):
            sums = self.metric(forward_batch(lambda *a, **k: functional_call(self.model, tensors, a, k), batch),
                               batch)
        check_sums(self.metric, sums)
        return sums


class CurvatureOperator(FlatLoss):
    """A symmetric matrix over the flat weights, known by its products, which the Hessian and the Gauss-Newton and
    Fisher operators implement: `product` in the model's dtype and on its device (what the memory-lean solvers
    use), `matvec` in float64; `linear_operator` hands it to scipy's solvers. `cache_bytes`, `graph_bytes` and
    `cached`: the budget for graphs kept between products, what they take, and whether they are kept (none, unless
    a subclass keeps some)."""

    cache_bytes, graph_bytes, cached = 0, 0, False

    def product(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def matvec(self, v: Tensor) -> Tensor:
        """C v for a flat vector v (float64 in and out; the product is computed in the model's dtype)."""
        return self.product(v.to(self.device, self.dtype)).double()

    def linear_operator(self) -> LinearOperator:
        def mv(v: np.ndarray) -> np.ndarray:
            return self.matvec(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).ravel()).cpu().numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, dtype=np.float64)
