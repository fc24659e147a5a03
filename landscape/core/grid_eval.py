"""Grid evaluation: the per-point engine (PointEvaluator) and the resumable, distributed sweep over a grid
(compute_surface), which meet the model and the file through two small protocols, Evaluator and Sink.

Flat point i of the grid belongs to rank i % world_size among the points not yet done. Every rank evaluates
the whole fixed evaluation set at each of its points. Ranks meet only once per flush (every ~`flush_seconds`
of work, agreed after the first round), where rank 0 gathers the finished rows by a SUM reduction and writes
them to the sink (the HDF5 file). No collective runs per point.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm import tqdm

from landscape.base.config import COMPILE_AFTER_S, check_points_per_pass
from landscape.base.errors import ConfigError, error_message
from landscape.core.params import Params, PointSetter, model_tensors
from landscape.runtime.distributed import DistInfo, all_reduce_sum, broadcast_object
from landscape.runtime.forward import (
    autocast_context,
    batchnorm_layers,
    forward_batch,
    means_of,
    recalibrate_batchnorm,
    source_sums,
)
from landscape.runtime.metrics import Metric, cross_entropy, loss_key, metric_names
from landscape.runtime.sources import StreamSource, TensorSource


class Evaluator(Protocol):
    """What compute_surface needs of a model evaluator: metric values for a few grid points at a time."""

    metric_names: list[str]
    points_per_pass: int  # the most points one call of `evaluate` takes

    def evaluate(self, coords: np.ndarray) -> Tensor:
        """Values (K, len(metric_names)) for the K points of `coords` (K, n_directions), K <= points_per_pass."""
        ...


class Sink(Protocol):
    """Where compute_surface stores finished rows (landscape.core.surface_file.SurfaceWriter is one)."""

    def done_points(self) -> np.ndarray:
        """Flat bool mask of the points already stored."""
        ...

    def write(self, flat_idx: np.ndarray, rows: np.ndarray) -> None:
        """Store rows (len(flat_idx), n_metrics) at these flat point indices, then mark them done."""
        ...


@dataclass
class EvalSet:
    """One data set to evaluate at every point: its name (the prefix of its metrics; "" for none), where its
    batches come from (landscape.runtime.sources), and what is measured on them (landscape.runtime.metrics)."""

    name: str
    source: TensorSource | StreamSource
    metric: Metric = cross_entropy

    def __post_init__(self) -> None:
        self.keys: list[str] | None = None  # the names of the metric's sums, known once it has run (PointEvaluator)
        self.names: list[str] = []  # what it reports: the sums' means, then what its `finish` adds


def select_samples(x: Tensor, y: Tensor, samples: int | None, split: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The whole split, or a fixed pseudo-random subset of `samples` points (same on every run and rank)."""
    if samples is None:
        return x, y
    if samples < 1 or samples > len(x):
        raise ConfigError(f"--samples {samples} is outside 1..{len(x)} (the size of the {split} split); "
                          f"pick a value in that range, or leave it out for the whole split")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    return x[idx], y[idx]


def compile_mode(device: torch.device) -> str | None:
    """On CUDA, autotuned kernels: measured on an H100 (benchmarks/gpu.py), ResNet-56 in bf16 ran 1.7x as fast as
    with the default mode, for about 80 s of autotuning once per run. CUDA graphs are left out: the grid's weights
    change between calls. On a CPU, the default mode."""
    return "max-autotune-no-cudagraphs" if device.type == "cuda" else None


class PointEvaluator:
    """Evaluates the metrics of theta0 + sum_i c_i d_i on fixed data sets.

    The model is deep-copied once; the copy's tensors are rewritten in place at each point (PointSetter), so
    the caller's model is never perturbed and nothing is allocated per point.

    With `points_per_pass` K > 1, `evaluate` takes K points per forward pass: torch.func.vmap over K stacked
    weight sets (functional_call), the metric vmapped alike. It pays where one point leaves the device idle
    (small models on a GPU); on a CPU, sequential points are faster (benchmarks/surface.py measures both).

    With `bn` = (source, N), BatchNorm's running statistics are re-estimated at every point from the first N
    batches of `source` (landscape.runtime.forward.recalibrate_batchnorm) before the point is evaluated.

    `compile`: True compiles the model's forward now, False never; None (auto) leaves it eager until
    `choose_compile` is told how much work lies ahead. `loss_name` picks each set's loss among its metric's sums
    (landscape.runtime.metrics.loss_key); `loss_names` are those metrics, prefixed.
    """

    def __init__(self, model: nn.Module, theta0: Params, directions: list[Params], sets: list[EvalSet], *,
                 dir_type: str = "weights", precision: str = "fp32", channels_last: bool = False,
                 compile: bool | None = False, points_per_pass: int = 1,
                 bn: tuple[TensorSource | StreamSource, int] | None = None, loss_name: str | None = None):
        check_points_per_pass(points_per_pass, compile)
        if bn is not None:
            check_recalibration(model, bn[1], points_per_pass)
        self.bn = bn
        device = sets[0].source.device
        self.model = copy.deepcopy(model).to(device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.setter = PointSetter(model_tensors(self.model, dir_type), theta0, directions)
        self.forward: nn.Module = torch.compile(self.model, mode=compile_mode(device)) if compile else self.model
        self.sets, self.precision, self.points_per_pass = sets, precision, points_per_pass
        self.compile = compile if points_per_pass == 1 else False  # vmapped passes never use self.forward
        self.metric_names = [f"{s.name}_{m}" if s.name else m for s in sets for m in self._probe(s)]
        # which of them are losses (one per set): what auto axes, widths and --loss-max read
        self.loss_names = [f"{s.name}_{loss_key(s.keys, loss_name)}" if s.name else loss_key(s.keys, loss_name)
                           for s in sets]

    def choose_compile(self, eager_seconds: float) -> str:
        """Auto compile (compile=None): torch.compile the forward when `eager_seconds`, the estimated eager time
        of this process's points, is at least COMPILE_AFTER_S; returns the line that says what was chosen. The
        first compiled pass runs here; if compiling fails (no C compiler, an op it cannot trace), the line says
        so and the evaluation stays eager."""
        if self.compile is not None:
            return ""
        self.compile = eager_seconds >= COMPILE_AFTER_S
        why = f"about {eager_seconds:.0f} s of eager work per process, {'>=' if self.compile else '<'} " \
              f"{COMPILE_AFTER_S:.0f} s"
        if not self.compile:
            return f"torch.compile: off ({why})"
        device = self.sets[0].source.device
        compiled = torch.compile(self.model, mode=compile_mode(device))
        try:
            for s in self.sets:  # compiles for the first batch's shape
                with torch.inference_mode(), autocast_context(device, self.precision):
                    forward_batch(compiled, next(iter(s.source)))
        except Exception as exc:  # noqa: BLE001 - any failure of the compiler leaves the eager forward in place
            self.compile = False
            return f"torch.compile: failed ({error_message(exc)[:200]}), evaluating eagerly"
        self.forward = compiled
        return f"torch.compile: on ({why})"

    def _probe(self, s: EvalSet) -> list[str]:
        """The names a set's metric reports, from its first batch at the centre."""
        batch = next(iter(s.source))
        with torch.inference_mode(), autocast_context(s.source.device, self.precision):
            sums = s.metric(forward_batch(self.forward, batch), batch)
        s.names = metric_names(s.metric, sums)  # checks the sums first
        s.keys = [k for k in sums if k != "count"]
        return s.names

    def __call__(self, coords: tuple[float, ...]) -> Tensor:
        """The metrics of every set, concatenated: a float64 tensor on the device (no host sync).

        Kept to a handful of kernel launches, since for small models launches are what a point costs."""
        self.setter(coords)
        if self.bn is not None:
            source, n = self.bn
            recalibrate_batchnorm(self.model, itertools.islice(source, n), self.precision)
        values = []
        for s in self.sets:
            sums, s.keys = source_sums(self.forward, s.source, s.metric, self.precision, s.keys)
            values.append(means_of(s.metric, sums, s.keys))
        return values[0] if len(values) == 1 else torch.cat(values)

    def evaluate(self, coords: np.ndarray) -> Tensor:
        """(K, n_metrics) for the K points of `coords` (K, n_directions): one point at a time through the model's
        own weights, or all K in one vmapped pass per batch when points_per_pass > 1."""
        if self.points_per_pass == 1:
            rows = [self(tuple(float(c) for c in point)) for point in coords]
            return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)  # a view for the usual 1 point
        weights = self.setter.stacked(torch.as_tensor(coords))
        values = []
        for s in self.sets:
            def forward_many(*args: Any, **kwargs: Any) -> Any:
                return vmap(lambda w: functional_call(self.model, w, args, kwargs))(weights)

            sums, s.keys = source_sums(forward_many, s.source, vmap(s.metric, in_dims=(0, None)), self.precision,
                                       s.keys, vmapped=True)
            values.append(means_of(s.metric, sums, s.keys))
        return torch.cat(values, dim=1)


def check_recalibration(model: nn.Module, n_batches: int, points_per_pass: int) -> None:
    """Refuse a BatchNorm re-estimation that cannot happen or cannot mean anything."""
    if n_batches < 1:
        raise ConfigError(f"--bn-recalibrate must be >= 1 batches, got {n_batches}")
    if not batchnorm_layers(model):
        raise ConfigError("--bn-recalibrate: the model has no BatchNorm running statistics to re-estimate; leave "
                          "the flag out")
    if points_per_pass > 1:
        raise ConfigError("--bn-recalibrate and --points-per-pass > 1 do not combine; pick one")


def compute_surface(evaluator: Evaluator, points: np.ndarray, sink: Sink | None, info: DistInfo,
                    flush_seconds: float = 2.0, progress: bool = True) -> int:
    """Evaluate every point of `points` (P, n_directions) that the sink does not hold yet and store it; returns
    how many points were computed, on all ranks together.

    Rank 0, and only rank 0, passes the sink; it tells the other ranks which points are done. Pending points
    are dealt round-robin; in each round every rank evaluates up to k of its points, then one SUM reduction
    (each row is non-zero on one rank only) brings the round's rows and the ranks' seconds per point to
    rank 0, which hands them to the sink.
    k starts at one pass and is re-chosen after every round so that a round takes about `flush_seconds`; all
    ranks derive it from the same reduced number, so they always agree on the number of rounds. The evaluator
    is called on up to `points_per_pass` points at a time, and k is a whole number of passes.
    """
    if (sink is not None) != info.is_main:
        raise ValueError("rank 0, and only rank 0, passes compute_surface a sink")
    done = broadcast_object(sink.done_points() if sink is not None else None)
    pending = np.flatnonzero(~done)
    mine = pending[info.rank::info.world_size]
    per_rank = math.ceil(len(pending) / info.world_size)
    n_metrics, group = len(evaluator.metric_names), evaluator.points_per_pass
    bar = tqdm(total=len(points), initial=len(points) - len(pending), desc="surface", unit="pt",
               disable=not (progress and info.is_main), dynamic_ncols=True)
    start, k = 0, group
    while start < per_rank:
        # Every rank evaluates all of its points of the round, so every row of the chunk gets filled.
        chunk = pending[start * info.world_size:(start + k) * info.world_size]
        payload = torch.zeros(len(chunk) * n_metrics + 1, dtype=torch.float64, device=info.device)
        rows = payload[:-1].view(len(chunk), n_metrics)
        t0 = time.perf_counter()
        todo = mine[start:start + k]
        for j in range(0, len(todo), group):
            ids = todo[j:j + group]
            values = evaluator.evaluate(points[ids])
            if len(ids) == 1:  # plain row assignment: no index tensor built per point
                rows[j * info.world_size + info.rank] = values[0]
            else:
                at = np.arange(j, j + len(ids)) * info.world_size + info.rank
                rows[torch.as_tensor(at, device=rows.device)] = values
        payload[-1] = (time.perf_counter() - t0) / max(1, len(todo))
        all_reduce_sum(payload)  # the only collective of the round
        if sink is not None:
            sink.write(chunk, rows.cpu().numpy())
            bar.update(len(chunk))
        start += k
        per_point = float(payload[-1]) / info.world_size
        k = int(max(1, min(4096, flush_seconds / max(per_point, 1e-9))))
        k = -(-k // group) * group  # whole passes
    bar.close()
    return len(pending)
