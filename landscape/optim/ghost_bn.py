"""Ghost Batch Normalization (Hoffer et al. 2017): in train mode every BatchNorm layer normalizes over consecutive
chunks of `ghost_size` samples of each forward, and its running statistics are updated once per chunk, in order,
so a large batch sees the normalization noise of small ones. Eval mode is plain BatchNorm, and the layers keep
their names, parameters and buffers: a checkpoint of a model trained this way loads into the plain model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.base.errors import ConfigError


class GhostBatchNorm(_BatchNorm):
    """A BatchNorm layer (1d, 2d or 3d: the input's dimensions are checked by the class it replaced) whose train-mode
    statistics are those of chunks of `ghost_size` samples."""

    ghost_size: int
    plain: type[_BatchNorm]

    def _check_input_dim(self, input: Tensor) -> None:
        self.plain._check_input_dim(self, input)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.ghost_size:
            return super().forward(input)
        if input.shape[0] % self.ghost_size:
            raise ConfigError(f"a batch of {input.shape[0]} samples does not split into ghost batches of "
                              f"{self.ghost_size}; choose a --ghost-batch-size that divides the micro-batch")
        return torch.cat([super(GhostBatchNorm, self).forward(chunk) for chunk in input.split(self.ghost_size)])


def ghost_batchnorm(model: nn.Module, ghost_size: int) -> nn.Module:
    """`model` with every BatchNorm layer normalizing over ghost batches of `ghost_size` samples in train mode, in
    place (the layers' classes change; their tensors, names and state-dict keys do not). Refused for a model without
    BatchNorm, which would train exactly as without the flag."""
    if ghost_size < 1:
        raise ConfigError(f"--ghost-batch-size must be >= 1, got {ghost_size}")
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        raise ConfigError(f"--ghost-batch-size needs BatchNorm layers and {type(model).__name__} has none; leave "
                          "the flag out, or pick a model with BatchNorm")
    for m in layers:
        plain = m.plain if isinstance(m, GhostBatchNorm) else type(m)
        if plain not in _GHOSTS:
            _GHOSTS[plain] = type(f"Ghost{plain.__name__}", (GhostBatchNorm, plain), {"plain": plain})
        m.__class__ = _GHOSTS[plain]
        m.ghost_size = ghost_size
    return model


_GHOSTS: dict[type, type] = {}  # one ghost class per BatchNorm class, made on first use
