"""What a request evaluates, from a SurfaceConfig: the centre model with its weights (read once, hashed from the
same read), the evaluation sets and their metric, the training data (for Hessian directions and BatchNorm
re-estimation), which tensors the directions move, and each rank's share of the data."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.base.config import SurfaceConfig, import_object
from landscape.base.errors import UserError
from landscape.core.directions import select_tensors
from landscape.core.grid_eval import EvalSet, select_samples
from landscape.core.params import Params
from landscape.models.checkpoint_file import build_from_checkpoint, load_data_for, read_checkpoint
from landscape.models.formats import find_format, read_weights_into
from landscape.models.registry import build_model
from landscape.runtime.distributed import print0
from landscape.runtime.metrics import Criterion, make_metric
from landscape.runtime.sources import StreamSource, TensorSource, as_source


@dataclass(frozen=True)
class Centre:
    """A model with the weights of a file, read once: `ckpt` is our checkpoint's dict (None for a weights file of
    the user's model), `sha256` the hash of the bytes that were read."""

    model: nn.Module
    ckpt: dict[str, Any] | None
    sha256: str


def load_centre(cfg: SurfaceConfig, path: str) -> Centre:
    """A model with the weights of `path`: our checkpoint, or --model's module (or the model a HuggingFace folder
    describes) with the weights of a file or folder as researchers save them (landscape.models.formats)."""
    model = build_model(cfg.model, **cfg.model_kwargs) if cfg.model else None
    return centre_of(path, model, strip_prefix=cfg.strip_prefix, ema=cfg.ema)


def centre_of(path: str, model: nn.Module | None = None, *, strip_prefix: str | None = None, ema: bool = False,
              log: Callable[[str], None] = print0) -> Centre:
    """`model` (eval mode) with the weights of `path`, read once; without a model, the one our checkpoint or a
    HuggingFace folder describes. What was found in a weights file (its prefix, tensors left aside) goes to `log`."""
    fmt = find_format(path)
    if model is None and (fmt is None or fmt.build is None):  # our checkpoint describes its own model
        ckpt, sha256 = read_checkpoint(path)
        return Centre(build_from_checkpoint(ckpt), ckpt, sha256)
    model = fmt.build(path) if model is None else model  # a self-describing folder's (HuggingFace's)
    notes, sha256 = read_weights_into(model, path, strip_prefix, ema)
    for note in notes:
        log(note)
    return Centre(model.eval(), None, sha256)


def load_sets(cfg: SurfaceConfig, ckpt: dict[str, Any] | None, device: torch.device, batch_size: int,
              given: Any = None) -> tuple[list[EvalSet], dict[str, Any], str]:
    """The evaluation sets, what describes their data (the user's --data, the data object `given` from Python, or
    the checkpoint's own dataset), and the metric's name: --metric, else the dataset's own (next_token for a
    corpus), else cross_entropy."""
    if cfg.data or given is not None:
        metric = metric_of(cfg, cfg.metric or "cross_entropy")
        if given is None:
            made = import_object(cfg.data, "--data")
            given = made(**cfg.data_kwargs) if callable(made) and not isinstance(made, Iterable) else made
        named = given if isinstance(given, dict) else {"": given}
        sets = evaluation_sets(named, metric, device, batch_size, samples=cfg.samples, max_batches=cfg.max_batches,
                               channels_last=cfg.channels_last)
        return sets, {"name": cfg.data or "python", "kwargs": dict(cfg.data_kwargs)}, None if cfg.criterion else (
            cfg.metric or "cross_entropy")
    if ckpt is None:
        raise UserError("--model needs --data: a package.module:function that returns your DataLoader (or a dict of "
                        "them by split name)")
    data = load_data_for(ckpt, cfg.data_dir, cfg.download)
    name = cfg.metric or data.metric
    metric = metric_of(cfg, name)
    named = {split: select_samples(*data.split(split), cfg.samples, split) for split in cfg.splits}
    sets = evaluation_sets(named, metric, device, batch_size, channels_last=cfg.channels_last)
    return sets, ckpt["data"], None if cfg.criterion else name


def evaluation_sets(named: dict[str, Any], metric: Any, device: torch.device, batch_size: int,
                    *, samples: int | None = None, max_batches: int | None = None,
                    channels_last: bool | None = None) -> list[EvalSet]:
    """The evaluation sets of data by name (tensors, a Dataset, a DataLoader, batches), for the commands and the
    Python API alike: resident image tensors are kept channels_last unless that is refused (False), as the
    evaluator then runs the model (landscape.pipelines.grid_job.evaluation_settings)."""
    return [EvalSet(name, as_source(d, device, batch_size, samples, max_batches,
                                    channels_last=channels_last is not False), metric) for name, d in named.items()]


def metric_of(cfg: SurfaceConfig, name: str) -> Any:
    """What cfg measures: its --criterion (the run says how its sums are made), else the metric `name`."""
    metric = make_metric(name, cfg.criterion, cfg.criterion_kwargs)
    if isinstance(metric, Criterion):
        print0(metric.note)
    return metric


def training_source(cfg: SurfaceConfig, ckpt: dict[str, Any] | None, sets: list[EvalSet], device: torch.device,
                    batch_size: int) -> TensorSource | StreamSource:
    """The training data a request's Hessian directions and BatchNorm re-estimation use: the evaluated set
    named "train" (the checkpoint's train split, --samples applied, or --data's "train" entry), else the
    checkpoint's train split, else the first set of --data."""
    named = {s.name: s.source for s in sets}
    if "train" in named:
        return named["train"]
    if ckpt is None:
        return sets[0].source
    x, y = select_samples(*load_data_for(ckpt, cfg.data_dir, cfg.download).split("train"), cfg.samples, "train")
    return as_source((x, y), device, batch_size)


def moved_tensors(model: nn.Module, theta0: Params, params: Any, trainable_only: bool) -> set[str] | None:
    """The names the directions move (None: all), from name globs or a predicate and/or trainability."""
    if params is None and not trainable_only:
        return None
    keep = {k for k, p in model.named_parameters() if p.requires_grad} if trainable_only else None
    return select_tensors(theta0, params, keep)


def resolve_batch_size(requested: int | None, device: torch.device) -> int:
    """The evaluation batch: as asked, else 1024 samples on CUDA and 256 on a CPU."""
    return requested or (1024 if device.type == "cuda" else 256)


