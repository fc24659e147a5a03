"""Metrics as exact sums: a metric maps (model outputs, batch) to named float64 sums plus a `count` (samples, or
tokens), so every reported value is a sample- or token-weighted mean over any batching and any number of ranks.

A metric is any callable `metric(outputs, batch) -> {"name": sum, ..., "count": n}`; each reported value is
sum / count, and a metric may add derived values with a `finish(means) -> means` method (perplexity from the
mean token loss). Built in: cross_entropy (loss, acc %), mse, and for language models (token loss, acc %, ppl):
causal_lm (labels are the inputs, shifted here), masked_lm, and next_token (labels are already the next tokens,
as in landscape's corpora).
Outputs that are objects or dicts with `logits` (HuggingFace models) are read through `logits_of`; batches are
tuples/lists (inputs first, targets last) or dicts (targets under `labels`).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.base.config import import_object
from landscape.base.errors import UnknownNameError, UserError

Sums = dict[str, Tensor]
Metric = Callable[[Any, Any], Sums]
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def logits_of(outputs: Any) -> Tensor:
    """The logits of a model's outputs: a tensor itself, or the `logits` of a dict or an output object."""
    if isinstance(outputs, Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if logits is None:
        raise UserError(f"the model returned {type(outputs).__name__}, with no tensor and no `logits`; pass a metric "
                        "that reads its outputs (metrics=your_function)")
    return logits


def targets_of(batch: Any) -> Tensor:
    """A batch's targets: the last item of a tuple or list, or a dict's `labels` (or label/targets/target/y)."""
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if key in batch:
                return batch[key]
        raise UserError(f"the batch is a dict with keys {sorted(batch)[:6]} and no {' / '.join(LABEL_KEYS)}; add the "
                        "targets under 'labels' or pass a metric that finds them")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[-1]
    raise UserError(f"a batch of type {type(batch).__name__} carries no targets; yield (inputs, targets) pairs or "
                    "dicts with 'labels'")


def inputs_of(batch: Any) -> tuple[tuple, dict]:
    """The model's arguments for a batch: (inputs,) of a pair, all but the last of a longer tuple, or a dict's
    entries other than its targets as keyword arguments."""
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if k not in LABEL_KEYS}
    if isinstance(batch, (tuple, list)):
        return tuple(batch[:-1]) if len(batch) > 1 else tuple(batch), {}
    return (batch,), {}


def _fp32(t: Tensor) -> Tensor:
    """Losses in fp32 even under bf16 autocast (fp64 models stay fp64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _count(n: int, like: Tensor) -> Tensor:
    """n as a float64 scalar on like's device, by a fill kernel: torch.tensor(n, device=cuda) would copy from the host
    and wait for it at every point."""
    return like.new_full((), float(n), dtype=torch.float64)


def cross_entropy(outputs: Any, batch: Any) -> Sums:
    """Classification: summed cross-entropy and percent correct over the samples."""
    logits, y = _fp32(logits_of(outputs)), targets_of(batch)
    # per-sample losses summed in float64: a float32 sum over 50,000 samples would lose digits
    return {"loss": F.cross_entropy(logits, y, reduction="none").sum(dtype=torch.float64),
            "acc": (logits.argmax(-1) == y).sum(dtype=torch.float64).mul_(100.0), "count": _count(len(y), logits)}


def mse(outputs: Any, batch: Any) -> Sums:
    """Regression: the squared error summed over outputs, per sample; no accuracy (NaN, as in schema 1 files)."""
    out, y = logits_of(outputs), targets_of(batch)
    err = out.double() - y.double().view_as(out)
    return {"loss": err.pow(2).sum(), "acc": torch.full((), math.nan, dtype=torch.float64, device=out.device),
            "count": _count(len(y), out)}


class TokenCrossEntropy:
    """Language models: cross-entropy per token over logits (B, T, V) and labels (B, T), tokens labelled
    `ignore_index` left out; `shift` predicts token t+1 from position t (causal LMs, as HuggingFace computes it).
    The loss is token-weighted over the whole data set; perplexity is exp of that loss."""

    def __init__(self, shift: bool = True, ignore_index: int = -100):
        self.shift, self.ignore_index = shift, ignore_index

    def __call__(self, outputs: Any, batch: Any) -> Sums:
        logits, labels = _fp32(logits_of(outputs)), targets_of(batch).long()  # shards may hold uint16 tokens
        if self.shift:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        keep = labels != self.ignore_index
        losses = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        correct = (logits.argmax(-1) == labels) & keep
        return {"loss": losses.sum(dtype=torch.float64), "acc": correct.sum(dtype=torch.float64) * 100.0,
                "count": keep.sum(dtype=torch.float64)}

    def finish(self, means: dict[str, Tensor]) -> dict[str, Tensor]:
        return {**means, "ppl": means["loss"].exp()}


class Criterion:
    """A loss as researchers write it, `fn(outputs, targets)` returning the batch's mean, as a metric (exact sums).

    The rule: a loss object with a `reduction` attribute (the torch.nn losses) is copied and set to
    reduction="sum", so the sums are exact whatever it weighs; any other callable's value is taken as the mean
    over the batch's samples and multiplied by their number. That is exact for per-sample means and approximate
    for means over something else (a class-weighted mean, ignored targets, tokens). The outputs are read through
    `logits_of`; for logits (N, C) and integer targets (N,) the accuracy is added.

    Args: fn: a callable, or a class instantiated with `kwargs` (torch.nn:CrossEntropyLoss, label_smoothing=0.1).
    """

    def __init__(self, fn: Any, name: str | None = None, **kwargs: Any):
        if isinstance(fn, type):
            fn = fn(**kwargs)
        elif kwargs:
            fn = functools.partial(fn, **kwargs)
        self.summed = isinstance(getattr(fn, "reduction", None), str)
        if self.summed:
            fn = copy.copy(fn)  # the caller's loss object keeps its own reduction
            fn.reduction = "sum"
        self.fn = fn
        self.__name__ = name or getattr(fn, "__name__", type(fn).__name__)

    @property
    def note(self) -> str:
        """How the sums are made, for the run's output."""
        if self.summed:
            weighted = any(getattr(self.fn, a, None) is not None for a in ("weight", "pos_weight"))
            return (f"criterion {self.__name__}: reduction='sum' over each batch, divided by the samples"
                    + (" (class weights: the mean over samples, not torch's mean over the weights)" if weighted
                       else ""))
        return (f"criterion {self.__name__}: the batch mean x its samples; exact for per-sample means, approximate "
                "for class-weighted, masked or token means")

    def __call__(self, outputs: Any, batch: Any) -> Sums:
        logits, y = _fp32(logits_of(outputs)), targets_of(batch)
        value = self.fn(logits, y)
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise UserError(f"criterion {self.__name__} returned {shape}, not one number; a criterion returns the "
                            "batch's mean loss (reduction='mean'); for per-sample values write a metric instead")
        n = len(y)
        loss = value.reshape(()).to(torch.float64)
        sums = {"loss": loss if self.summed else loss * n}
        if logits.ndim == 2 and y.ndim == 1 and not y.is_floating_point() and len(logits) == n:
            sums["acc"] = (logits.argmax(-1) == y).sum(dtype=torch.float64).mul_(100.0)
        sums["count"] = _count(n, logits)
        return sums


def make_metric(metric: str | Metric | None = None, criterion: str | Any = None,
                criterion_kwargs: Mapping[str, Any] | None = None) -> Metric:
    """What a command or the API measures: a criterion (a `package.module:name` or an object, see Criterion), else
    a metric (get_metric), else cross_entropy."""
    if criterion is not None:
        fn = import_object(criterion, "--criterion") if isinstance(criterion, str) else criterion
        if not callable(fn):
            raise UnknownNameError(f"--criterion {criterion!r} is not callable; name a loss function or class")
        name = criterion.rpartition(":")[2] if isinstance(criterion, str) else None
        return Criterion(fn, name, **dict(criterion_kwargs or {}))
    return get_metric(metric or "cross_entropy")


def loss_key(names: Sequence[str], loss_name: str | None = None) -> str:
    """Which of a metric's sums is its loss, the one curvature, widths and auto axes use: `loss_name` when
    given (it must be one of them), else "loss", else the one name ending in "loss", else the first."""
    names = [n for n in names if n != "count"]
    if loss_name is not None:
        if loss_name not in names:
            raise UserError(f"--loss-name {loss_name!r} is not one of the metric's sums ({', '.join(names)}); pick "
                            "one of those")
        return loss_name
    if "loss" in names:
        return "loss"
    ending = [n for n in names if n.endswith("loss")]
    return ending[0] if ending else names[0]


METRICS: dict[str, Callable[[], Metric]] = {
    "cross_entropy": lambda: cross_entropy, "mse": lambda: mse,
    "causal_lm": lambda: TokenCrossEntropy(shift=True), "masked_lm": lambda: TokenCrossEntropy(shift=False),
    "next_token": lambda: TokenCrossEntropy(shift=False)}


def get_metric(spec: str | Metric) -> Metric:
    """A built-in metric by name, `package.module:callable` (a metric, or a class to instantiate), or a callable."""
    if callable(spec):
        return spec
    if spec in METRICS:
        return METRICS[spec]()
    if ":" not in spec:
        raise UnknownNameError(f"unknown metric {spec!r}; choose one of: {', '.join(METRICS)}, or give "
                               "package.module:function")
    obj = import_object(spec, "--metric")
    return obj() if isinstance(obj, type) else obj


def metric_names(metric: Metric, sums: Sums) -> list[str]:
    """The names a metric reports, from one call's sums: its sums' names, then what `finish` adds."""
    check_sums(metric, sums)
    means = {k: v for k, v in sums.items() if k != "count"}
    return list(finish(metric, means))


def check_sums(metric: Metric, sums: Any) -> None:
    name = getattr(metric, "__name__", type(metric).__name__)
    if not isinstance(sums, Mapping) or not all(isinstance(v, Tensor) for v in sums.values()):
        raise UserError(f"metric {name} returned {type(sums).__name__}; a metric returns a dict of tensors: named "
                        "sums over the batch plus 'count'")
    if "count" not in sums:
        raise UserError(f"metric {name} returned {sorted(sums)} without 'count'; add the number of samples (or "
                        "tokens) the sums are over")
    if len(sums) < 2:
        raise UserError(f"metric {name} returned only a count; add at least one named sum")
    bad = [k for k, v in sums.items() if v.numel() != 1]
    if bad:
        raise UserError(f"metric {name} returned non-scalar sums {bad}; sum them over the batch")


def finish(metric: Metric, means: dict[str, Tensor]) -> dict[str, Tensor]:
    fin = getattr(metric, "finish", None)
    return fin(means) if fin is not None else means
