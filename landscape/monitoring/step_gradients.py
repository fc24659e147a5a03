"""The noise scale from the gradients a training step computes anyway, caught while it computes them.

The two-batch estimate (landscape.monitoring.noise) needs gradients at two batch sizes. A step already holds them:
- under DDP, each rank's own gradient (small batch: the rank's samples) and the all-reduced mean (big batch: every
  rank's): a communication hook squares each bucket before the all-reduce and again after it, so both norms are in
  the same units (a GradScaler's scale cancels in B_simple);
- in one process that accumulates over K >= 2 micro-batches, each micro-batch's gradient (the growth of .grad at
  that backward, caught by a hook on each parameter; one gradient-sized copy, on measured steps only, taken from
  the second micro-batch on, so a step of one micro-batch copies nothing) and the step's sum of them.
The samples of a step are given (`step_batch`, what the trainer knows of its plan), else counted by a forward
pre-hook on the model (calls in train mode with gradients on: an evaluation between steps is not counted; a
training_step that calls a submodule instead of the module itself is not seen, and the step is then not read).
Only a step that is about to be measured is watched (`arm`/`disarm`); one the gradients cannot say (one process
and one micro-batch, nothing seen) gives None, and the Monitor draws batches of its own instead. A step's gradients
are taken to start from zero (zero_grad before its first micro-batch, as every accumulating loop does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from landscape.monitoring.noise import NoiseEstimate, two_batch_estimate
from landscape.runtime.distributed import all_reduce_sum
from landscape.runtime.sources import batch_size_of

DDP, MICRO_BATCHES, DRAWS = "ddp", "micro-batches", "draws"  # where a record's noise scale came from


class StepGradients:
    """Watches one optimizer step of `model` (the module inside any DDP wrapper) at a time, when armed; `ddp` is
    the DistributedDataParallel wrapper (None in one process). `estimate()` gives the step's two-batch estimate,
    or None where the step could not give one (one process and a single micro-batch, no forward seen, ...)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], ddp: nn.Module | None = None,
                 step_batch: int | None = None):
        self.model, self.params, self.step_batch = model, params, step_batch
        self.kind: str | None = DDP if ddp is not None else MICRO_BATCHES
        self.refused: str | None = None  # why the step's gradients cannot be read (the records say "draws")
        self._handles: list[Any] = []
        self._reset()
        if ddp is not None:
            try:
                ddp.register_comm_hook(self, StepGradients._allreduce)
            except RuntimeError as exc:  # a hook of the user's own is there already: DDP takes one
                self.kind, self.refused = None, f"the DDP model has a communication hook already ({exc})"

    def _reset(self) -> None:
        self.samples = 0
        self.backwards: dict[int, int] = {}  # per parameter, the backward passes that reached it
        self.local_sq = torch.zeros((), dtype=torch.float64)
        self.reduced_sq = torch.zeros((), dtype=torch.float64)
        self.syncs, self.forwards = 0, 0
        self.growth_sq: Tensor | float = 0.0
        self.last: dict[int, Tensor] = {}
        self.armed = False

    def arm(self) -> None:
        """Watch the next optimizer step."""
        if self.armed or self.kind is None:
            return
        self._reset()
        self.armed = True
        if self.step_batch is None:
            self._handles.append(self.model.register_forward_pre_hook(self._count, with_kwargs=True))
        elif self.kind == MICRO_BATCHES:  # the caller knows its step: read every micro-batch from the first
            self._watch_gradients()

    def _watch_gradients(self) -> None:
        self._handles += [p.register_post_accumulate_grad_hook(self._grew) for p in self.params]

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.armed = False

    def _count(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A training forward call: its samples; at the second one of the step (it accumulates), the first
        micro-batch's gradient is taken from .grad and the later ones are watched. A step of one micro-batch
        copies nothing."""
        if not (module.training and torch.is_grad_enabled()):
            return
        self.samples += batch_size_of(args) or batch_size_of(kwargs)
        self.forwards += 1
        if self.kind == MICRO_BATCHES and self.forwards == 2:
            for p in self.params:  # zeros are no micro-batch's gradient (a zero_grad that keeps the tensors)
                if p.grad is not None and bool(p.grad.any()):
                    self._grew(p)  # the first micro-batch's growth: all of .grad
            self._watch_gradients()

    def _grew(self, p: Tensor) -> None:
        """After a backward accumulated into p.grad: the square of what this micro-batch added (summed in float64),
        and .grad kept in the parameter's one copy for the next."""
        g = p.grad.detach()
        before = self.last.get(id(p))
        grown = g if before is None else g - before
        self.growth_sq = self.growth_sq + grown.pow(2).sum(dtype=torch.float64)
        if before is None:
            self.last[id(p)] = g.clone()
        else:
            before.copy_(g)
        self.backwards[id(p)] = self.backwards.get(id(p), 0) + 1

    @staticmethod
    def _allreduce(state, bucket):  # no annotations: DDP checks them against its own classes, and ours are strings
        """DDP's default all-reduce; on a watched step, the bucket's squared norm before it and after it."""
        if not state.armed:
            return default_hooks.allreduce_hook(None, bucket)
        state.local_sq = state.local_sq + bucket.buffer().detach().double().pow(2).sum().cpu()
        state.syncs += 1

        def reduced(fut: Any) -> Tensor:
            mean = fut.value()
            state.reduced_sq = state.reduced_sq + mean.detach().double().pow(2).sum().cpu()
            return mean

        return default_hooks.allreduce_hook(None, bucket).then(reduced)

    def estimate(self) -> tuple[NoiseEstimate, int, int] | None:
        """(estimate, small, big) of the watched step, or None; disarms. Under DDP every rank calls it (a reduce)."""
        watched = self.armed
        self.disarm()
        samples = self.step_batch if self.step_batch is not None else self.samples
        if self.kind == DDP:
            seen = float(watched and self.syncs > 0 and samples > 0)
            counts = torch.tensor([float(self.local_sq), float(samples), seen], dtype=torch.float64,
                                  device=self.params[0].device)
            all_reduce_sum(counts)
            world = torch.distributed.get_world_size()
            if int(counts[2]) != world or world < 2:
                return None
            big = int(counts[1])
            return two_batch_estimate(float(counts[0]) / world, float(self.reduced_sq), big // world, big), \
                big // world, big
        k = max(self.backwards.values(), default=0)
        last, self.last = self.last, {}  # the copies are let go at once
        if not watched or k < 2 or samples < k or samples % k:
            return None
        final = float(sum(t.pow(2).sum(dtype=torch.float64) for t in last.values()))
        # with the loss divided by K (the usual accumulation), micro-batch k's gradient is K times its growth; a
        # loss left undivided scales both terms alike, and B_simple with them
        return two_batch_estimate(k * float(self.growth_sq), final, samples // k, samples), samples // k, samples
