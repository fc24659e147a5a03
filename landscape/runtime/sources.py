"""Where the evaluation data comes from, the same at every grid point and on every rank.

`as_source(data, ...)` takes a pair of tensors (moved to the device once and sliced: the fast path), a map-style
`Dataset` (wrapped in a DataLoader that keeps the order), a `DataLoader`, or any re-iterable of batches (tuples,
lists or dicts of tensors). A streamed source is never held whole: batches are copied to the device from pinned
memory on a side stream, one batch ahead of the model, and each pass is checked to yield as many samples as the
first one did.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from landscape.base.errors import ConfigError, UserError

if TYPE_CHECKING:
    from landscape.runtime.distributed import DistInfo


def map_tensors(batch: Any, fn: Any) -> Any:
    """fn applied to every tensor of a (nested) tuple, list or dict batch."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: the length of its first tensor."""
    if isinstance(batch, Tensor):
        return len(batch) if batch.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        n = batch_size_of(v)
        if n:
            return n
    return 0


def _pinned(t: Tensor) -> Tensor:
    """A CPU tensor in page-locked memory, so its copy to the GPU can overlap compute; others as they are."""
    return t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t


class TensorSource:
    """(x, y) resident on the device, sliced into batches: no copy per point."""

    streamed = False

    def __init__(self, x: Tensor, y: Tensor, device: torch.device, batch_size: int):
        if len(x) != len(y):
            raise UserError(f"inputs and targets differ in length ({len(x)} vs {len(y)}); pass matching tensors")
        if len(x) == 0:
            raise UserError("the data has no samples; pass a non-empty data set")
        self.x, self.y, self.device = x.to(device), y.to(device), device
        self.batch_size, self.samples = batch_size, len(x)
        # the batches as views, made once: slicing at every point costs more than a small model's metric
        self.batches = list(zip(self.x.split(batch_size), self.y.split(batch_size)))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.batches)


class StreamSource:
    """Batches from an iterable, prefetched to the device; `max_batches`/`samples` cut every pass alike."""

    streamed = True

    def __init__(self, batches: Iterable, device: torch.device, max_batches: int | None = None,
                 samples: int | None = None):
        if isinstance(batches, DataLoader) and isinstance(batches.sampler, RandomSampler) and (max_batches or samples):
            raise ConfigError("the DataLoader shuffles, so max_batches/samples would take other samples at every "
                              "point; build it with shuffle=False")
        self.batches, self.device, self.max_batches, self.limit = batches, device, max_batches, samples
        self.samples: int | None = None  # known after the first pass

    def _cut(self) -> Iterator[Any]:
        taken = 0
        for i, batch in enumerate(self.batches):
            if self.max_batches is not None and i >= self.max_batches:
                break
            n = batch_size_of(batch)
            if n == 0:
                raise UserError(f"batch {i} of the data holds no samples (type {type(batch).__name__}); yield "
                                "tensors, or tuples/lists/dicts of tensors, with at least one sample")
            if self.limit is not None and taken + n > self.limit:
                keep = self.limit - taken
                batch = map_tensors(batch, lambda t, k=keep: t[:k] if t.ndim else t)
                n = keep
            taken += n
            yield batch
            if self.limit is not None and taken >= self.limit:
                break
        if self.samples is None:
            self.samples = taken
            if taken == 0:
                raise UserError("the data yielded no batches; pass a non-empty DataLoader or iterable")
        elif taken != self.samples:
            raise UserError(f"the data yielded {taken} samples on this pass but {self.samples} on the first; a "
                            "surface needs the same samples at every point: use a re-iterable source in a fixed "
                            "order (a DataLoader with shuffle=False and drop_last=False, not a generator)")

    def __iter__(self) -> Iterator[Any]:
        if self.device.type != "cuda":
            yield from self._cut()
            return
        stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self._cut():
            with torch.cuda.stream(stream):  # copy this batch while the model works on the previous one
                loaded = map_tensors(batch, lambda t: _pinned(t).to(self.device, non_blocking=True))
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            map_tensors(loaded, lambda t: t.record_stream(torch.cuda.current_stream(self.device)))
            pending = loaded
        if pending is not None:
            yield pending


def as_source(data: Any, device: torch.device, batch_size: int, samples: int | None = None,
              max_batches: int | None = None, channels_last: bool = False) -> TensorSource | StreamSource:
    """A data source for grid evaluation from what the user has (see the module docstring). With
    `channels_last`, resident image tensors (N, C, H, W) are kept in that memory format: convolutions on a CPU
    run ~1.6x faster on them."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if samples is not None:
            x, y = x[:samples], y[:samples]
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return TensorSource(x, y, device, batch_size)
    if isinstance(data, Dataset) and not isinstance(data, Iterable) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    one_shot = not isinstance(data, DataLoader) and isinstance(data, Iterable) and iter(data) is data
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable) or one_shot:
        raise UserError(f"data of type {type(data).__name__} is not a data source; pass (inputs, targets) tensors, "
                        "a Dataset, a DataLoader, or a re-iterable of batches (not a one-shot generator)")
    return StreamSource(data, device, max_batches, samples)


def rank_share(source: TensorSource | StreamSource, info: DistInfo) -> Any:
    """This rank's share of a source, for a computation whose sums are reduced across ranks (a Hessian): every
    world_size-th sample of resident tensors, every world_size-th batch of a stream."""
    if isinstance(source, TensorSource):
        shard = slice(info.rank, None, info.world_size)
        return source.x[shard], source.y[shard]
    return EveryNth(source, info.rank, info.world_size)


class EveryNth:
    """Batches start, start + step, ... of a re-iterable."""

    def __init__(self, batches: Iterable, start: int, step: int):
        self.batches, self.start, self.step = batches, start, step

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.batches), self.start, None, self.step)
