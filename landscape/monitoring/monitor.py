"""`Monitor`: the top Hessian eigenvalue against the optimizer's edge-of-stability threshold, and the gradient noise
scale, every N optimizer steps of any training loop, leaving the training exactly as it would be without it.

    monitor = landscape.Monitor(model, (x_train, y_train), optimizer, every=100, log=print)
    for x, y in loader:
        loss = criterion(model(x), y); optimizer.zero_grad(); loss.backward(); optimizer.step()
        monitor.step()          # measures after every 100th optimizer step; records go to log and monitor.records
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from landscape.base.config import CURVATURES
from landscape.base.errors import ConfigError, UserError, error_message
from landscape.core.grid_eval import select_samples
from landscape.curvature.edge import threshold_of, top_eigenvalue, unwrapped_optimizer
from landscape.curvature.operators import curvature_operator
from landscape.monitoring.noise import b_simple_of, noise_of_batches
from landscape.monitoring.step_gradients import DRAWS, StepGradients
from landscape.runtime.distributed import DistInfo
from landscape.runtime.forward import batchnorm_statistics_kept, forward_batch, modes_kept
from landscape.runtime.metrics import Metric, check_sums, get_metric, loss_key
from landscape.runtime.sources import as_source, map_tensors

MEASURES = ("lambda_max", "noise")
NOISE_FROM = ("auto", "draws")
Record = dict[str, Any]


class Monitor:
    """lambda_max of the data loss on a fixed subset (BatchNorm in eval mode, fp32, Lanczos warm-started from the
    last eigenvector) beside the optimizer's threshold (SGD, heavy ball, Nesterov; Adam/AdamW on the preconditioned
    eigenvalue, read from the optimizer's own state), and B_simple from the gradients the measured step computed
    where it can (landscape.monitoring.step_gradients: each rank's gradient against their mean when `model` is the
    DDP wrapper, each micro-batch's against their sum when one process accumulates), else from the gradients of
    `noise_batches` micro-batches drawn on a generator of its own (in the model's train mode); the record's
    `noise_source` says which ("ddp", "micro-batches", "draws"). Call `step()` after each optimizer step: every
    `every`-th one is measured. The default interval, 1000 steps, costs a torchvision ResNet-18
    (3x32x32, batch 128) 5.9% of its training time on 2 CPU cores (benchmarks/monitor.py): one measurement on
    512 samples takes about as long as 55 of its optimizer steps.

    Args:
      model: the module being trained (a DistributedDataParallel wrapper is unwrapped).
      data: the training data: (inputs, targets) tensors, a Dataset, a DataLoader or a re-iterable of batches.
        Tensors: a fixed random subset of `samples` for lambda_max, split over ranks (rank r takes every
        world_size-th), and random micro-batches for the noise scale. A loader: its first `samples` samples, and
        its first `noise_batches` batches, on each rank (each rank's loader holds its shard).
      optimizer: the torch optimizer (or a framework's wrapper of one); None: lambda_max without a threshold.
      metric: what `landscape.surface` takes (a name, a metric, a Criterion); its loss is the measured one.
      noise_from: "auto" (the step's own gradients where it can, else draws) or "draws" (always; e.g. for SAM, whose
        step takes a second gradient elsewhere, or a loss the micro-batches do not share).
      step_batch: the samples of one optimizer step on this rank, when known; else the model's forward calls
        (in train mode, with gradients on) are counted on a watched step.
      curvature: whose lambda_max: "hessian" (the default), or "ggn", "fisher", "empirical_fisher"
        (landscape.curvature.operators). The record says which (`curvature`), and that its `threshold` is the
        Hessian's (`threshold_for`): Cohen et al.'s edge of stability is about the Hessian; the Gauss-Newton
        sharpness is a cheaper companion, at or below it near a minimum of cross-entropy.
      log: called with each record (a dict); records are kept in `monitor.records` too.
    A measurement leaves the model's mode, its BatchNorm statistics, the RNG streams and the gradients as they
    were. Under DDP every rank calls step(); the eigenvalue and the noise scale are over every rank's data. Given a
    DDP wrapper, the Monitor registers a communication hook on it (DDP takes one, for good): on the steps it does
    not watch, that hook is DDP's default all-reduce, called from Python.
    """

    def __init__(self, model: nn.Module, data: Any, optimizer: Any = None, *, every: int = 1000,
                 measures: Sequence[str] = MEASURES, metric: str | Metric = "cross_entropy", samples: int = 512,
                 noise_batch: int | None = None, noise_batches: int = 8, tol: float = 1e-3,
                 batch_size: int = 256, loss_name: str | None = None, log: Callable[[Record], Any] | None = None,
                 seed: int = 0, noise_from: str = "auto", step_batch: int | None = None, curvature: str = "hessian"):
        check_arguments(every, measures, samples, noise_batches, noise_batch, tol)
        if curvature not in CURVATURES:
            raise ConfigError(f"curvature must be one of {', '.join(CURVATURES)}, got {curvature!r}")
        if noise_from not in NOISE_FROM:
            raise ConfigError(f"noise_from must be one of {', '.join(NOISE_FROM)}, got {noise_from!r}")
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
        self.model = model.module if ddp is not None else model
        self.optimizer, self.every, self.measures = optimizer, every, tuple(measures)
        self.metric, self.loss_name, self.log, self.seed = get_metric(metric), loss_name, log, seed
        self.tol, self.batch_size, self.noise_batches, self.curvature = tol, batch_size, noise_batches, curvature
        self.info = dist_info(self.model)
        self.params = trained_parameters(self.model, optimizer)
        self.steps, self.v = 0, None  # optimizer steps seen; Lanczos's next start
        self.records: list[Record] = []
        self._said: set[str] = set()
        self.subset, self.draws = split_data(data, samples, noise_batch, noise_batches, self.info)
        self._check_data()
        # one process, or the DDP wrapper itself: a rank's micro-batches alone would not say what the step's did
        watch = "noise" in self.measures and noise_from == "auto" and (ddp is not None or not self.info.is_distributed)
        self.watch = StepGradients(self.model, self.params, ddp if self.info.is_distributed else None, step_batch) \
            if watch else None
        self._arm_if_due()

    def step(self, step: int | None = None) -> Record | None:
        """After an optimizer step: count it (or take the framework's count `step`), and measure when it is due."""
        self.steps = self.steps + 1 if step is None else int(step)
        record = self.measure() if self.steps % self.every == 0 else None
        self._arm_if_due()
        return record

    @property
    def step_batch(self) -> int | None:
        """The samples of one optimizer step on this rank (None: counted from the forward calls); settable between
        steps, e.g. by a batch ramp."""
        return self.watch.step_batch if self.watch is not None else None

    @step_batch.setter
    def step_batch(self, samples: int | None) -> None:
        if self.watch is not None:
            self.watch.step_batch = samples

    def _arm_if_due(self) -> None:
        """Watch the next step's gradients when it will be measured (only then: a watched step costs a copy)."""
        if self.watch is not None:
            if (self.steps + 1) % self.every == 0:
                self.watch.arm()
            else:
                self.watch.disarm()

    def measure(self) -> Record:
        """Measure now, at step `self.steps`; the record goes to `log` and `records`."""
        record: Record = {"step": self.steps}
        # what the watched step gave is taken first: the Hessian's own backward passes must not reach the watch
        seen = self.watch.estimate() if self.watch is not None else None
        with kept_as_it_was(self.model, self.info.device):
            if "lambda_max" in self.measures:
                record.update(self._lambda_max())
            if "noise" in self.measures:
                record.update(self._noise(seen))
        self.records.append(record)
        if self.log is not None:
            self.log(record)
        return record

    def state_dict(self) -> dict[str, Any]:
        """What a resumed loop needs to measure as an uninterrupted one: the step count and Lanczos's warm start."""
        return {"steps": self.steps, "v": None if self.v is None else torch.from_numpy(np.asarray(self.v))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.v = None if state.get("v") is None else torch.as_tensor(state["v"]).double().numpy()
        self._arm_if_due()

    # ------------------------------------------------------------------------------------------- measurements

    def _lambda_max(self) -> Record:
        threshold = threshold_of(self.optimizer, self.params) if self.optimizer is not None else None
        op = curvature_operator(self.curvature, self.model, self.subset, self.metric, params=self.param_names,
                                batch_size=self.batch_size, loss_name=self.loss_name, seed=self.seed)
        pre = threshold.preconditioner if threshold is not None else None
        lam, self.v = top_eigenvalue(op, self.v, self.tol, pre, seed=self.seed)
        # the threshold (2/lr, ...) is the Hessian's edge of stability (Cohen et al. 2021); the GGN's lambda_max
        # is a cheaper companion below it near a minimum of cross-entropy, not what the threshold bounds
        out: Record = {"lambda_max": lam, "curvature": self.curvature, "threshold_for": "hessian",
                       "preconditioned": pre is not None}
        if threshold is None:
            return {**out, "threshold": None, "threshold_undefined": "no optimizer given"}
        out.update(lr=threshold.lr, threshold=threshold.value)
        if threshold.undefined:
            out["threshold_undefined"] = threshold.undefined
            self._say_once(f"landscape.Monitor: lambda_max is logged with a null threshold: {threshold.undefined}")
        return out

    def _noise(self, found: tuple[Any, int, int] | None) -> Record:
        source = self.watch.kind if found is not None else DRAWS
        if found is None:
            if self.watch is not None and self.watch.refused:
                self._say_once(f"landscape.Monitor: the noise scale comes from draws of its own: {self.watch.refused}")
            # each rank its own draws (one process: the seed and step alone)
            seed = (self.seed * 1_000_003 + self.steps) * self.info.world_size + self.info.rank
            generator = torch.Generator().manual_seed(seed)
            found = noise_of_batches(self.model, self.draws(generator), self._mean_loss,
                                     reduce=self.info.is_distributed)
        est, small, big = found
        return {"g2": est.g2, "trace_sigma": est.trace_sigma, **b_simple_of(est.g2, est.trace_sigma),
                "b_small": small, "b_big": big, "noise_source": source}

    def _mean_loss(self, model: nn.Module, batch: Any) -> Tensor:
        batch = map_tensors(batch, lambda t: t.to(self.info.device))
        sums = self.metric(forward_batch(model, batch), batch)
        check_sums(self.metric, sums)
        return sums[loss_key(list(sums), self.loss_name)] / sums["count"]

    @property
    def param_names(self) -> list[str]:
        ids = {id(p) for p in self.params}
        return [n for n, p in self.model.named_parameters() if id(p) in ids]

    def _say_once(self, text: str) -> None:
        if text not in self._said and self.info.is_main:
            self._said.add(text)
            print(text, flush=True)

    def _check_data(self) -> None:
        """One forward pass on the subset's first batch (eval mode, no gradient): data the model cannot take is
        refused here, in one line, not at the first measurement."""
        first = next(iter(as_source(self.subset, self.info.device, self.batch_size)), None)
        if first is None:
            raise ConfigError("data: the monitor's data holds no samples; give the training data")
        with kept_as_it_was(self.model, self.info.device), torch.no_grad():
            self.model.eval()
            try:
                self.metric(forward_batch(self.model, first), first)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise ConfigError(f"data: the model cannot take the monitor's batches ({error_message(exc)[:160]}); "
                                  "give the data it trains on, as (inputs, targets) or its DataLoader") from None


def check_arguments(every: int, measures: Sequence[str], samples: int, noise_batches: int,
                    noise_batch: int | None, tol: float) -> None:
    """The Monitor's arguments, refused by name (ConfigError is a ValueError)."""
    if isinstance(measures, str):
        measures = (measures,)
    checks = [(isinstance(every, int) and every >= 1, f"every must be an int >= 1, got {every!r}"),
              (bool(measures) and all(m in MEASURES for m in measures),
               f"measures must be some of {', '.join(MEASURES)}, got {list(measures)}"),
              (samples >= 1, f"samples must be >= 1, got {samples}"),
              (noise_batches >= 2, f"noise_batches must be >= 2 (two batch sizes), got {noise_batches}"),
              (noise_batch is None or noise_batch >= 1, f"noise_batch must be >= 1, got {noise_batch}"),
              (tol > 0 and math.isfinite(tol), f"tol must be a positive number, got {tol}")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def dist_info(model: nn.Module) -> DistInfo:
    """This process's place in the process group the training runs in (one process when there is none)."""
    device = next(model.parameters()).device
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = device.index if device.type == "cuda" and device.index is not None else rank
        return DistInfo(rank, local, world, device)
    return DistInfo(0, 0, 1, device)


def trained_parameters(model: nn.Module, optimizer: Any) -> list[nn.Parameter]:
    """The model's parameters that the optimizer updates (all those with requires_grad when there is none)."""
    if optimizer is None:
        return [p for p in model.parameters() if p.requires_grad]
    held = {id(p) for g in unwrapped_optimizer(optimizer).param_groups for p in g["params"]}
    params = [p for p in model.parameters() if id(p) in held]
    if not params:
        raise ConfigError("optimizer: it updates none of the model's parameters; give the model's own optimizer")
    return params


def split_data(data: Any, samples: int, noise_batch: int | None, noise_batches: int, info: DistInfo
               ) -> tuple[Any, Callable[[torch.Generator], Iterator[Any]]]:
    """(the lambda_max subset, a function from a generator to the noise scale's micro-batches)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ConfigError(f"data: {len(x)} inputs but {len(y)} targets; give (inputs, targets) of one length")
        sx, sy = select_samples(x, y, min(samples, len(x)), "train")
        subset = sx[info.rank::info.world_size], sy[info.rank::info.world_size]
        micro = noise_batch or max(1, min(64, len(x) // noise_batches))
        if micro * noise_batches > len(x):
            raise ConfigError(f"noise_batch: {noise_batches} micro-batches of {micro} need {micro * noise_batches} "
                              f"samples, but data has {len(x)}; give a smaller noise_batch")

        def draws(generator: torch.Generator) -> Iterator[Any]:
            idx = torch.randperm(len(x), generator=generator)[: micro * noise_batches].to(x.device)
            return ((x[chunk], y[chunk]) for chunk in idx.view(noise_batches, micro))

        return subset, draws
    try:
        source = as_source(data, torch.device("cpu"), 256, samples)
    except UserError as exc:
        raise ConfigError(f"data: {error_message(exc)}") from None

    def first_batches(generator: torch.Generator) -> Iterator[Any]:
        with torch.random.fork_rng(devices=[]):  # a shuffling DataLoader draws its order from the global RNG
            for i, batch in enumerate(data):
                if i == noise_batches:
                    return
                yield batch

    return source, first_batches


@contextlib.contextmanager
def kept_as_it_was(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The block leaves the model's train/eval mode (every module's), its BatchNorm statistics, the CPU's and the
    device's RNG states and every .grad as they were."""
    grads = [(p, p.grad) for p in model.parameters()]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), batchnorm_statistics_kept(model), modes_kept(model):
        try:
            yield
        finally:
            for p, g in grads:
                p.grad = g
