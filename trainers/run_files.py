"""A run's files: its checkpoints (with what a resume restores: optimizer, schedule, step, RNG states), the check
that a resumed run is the same run, and its metrics log (one JSON line per epoch)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
from torch import Tensor, nn

from landscape.base.errors import UserError
from landscape.base.files import strict_json, write_text
from landscape.data.datasets import Dataset
from landscape.models import checkpoint_file as ckpt_io
from landscape.models.registry import builder_kwargs
from landscape.optim.builders import BatchPlan
from landscape.runtime.distributed import print0
from trainers.config import TrainConfig, plain


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global RNG states a resume restores (dropout and the like draw from them): the CPU's, and the rank's
    own CUDA device's. Every rank seeds them alike and draws alike, so rank 0's state serves every rank."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng_state(rng: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if device.type == "cuda" and isinstance(cuda, list):  # landscape 0.1 saved every visible device's state
        cuda = cuda[device.index] if device.index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def run_checkpoint(model: nn.Module, cfg: TrainConfig, plan: BatchPlan, data: Dataset, *, epoch: int, step: int,
                   metrics: dict[str, float], opt: torch.optim.Optimizer, sched: Any, device: torch.device,
                   run_epochs: int | None = None, tracking: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of epoch `epoch` of a run of `run_epochs` (default --epochs): the weights and what describes
    them (landscape.models.checkpoint_file), plus what a resume restores: optimizer, schedule, step and RNG states."""
    rng = rng_state(device)
    return ckpt_io.make_checkpoint(
        model, cfg.model, plain(model_kwargs_of(cfg, data)), cfg.dataset, plain(cfg.data_kwargs), metrics,
        train_config=plain(dataclasses.asdict(cfg)), plan=dataclasses.asdict(plan), epoch=epoch, step=step,
        optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=rng, run_epochs=run_epochs or cfg.epochs,
        **({"tracking": tracking} if tracking else {}))


def model_kwargs_of(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    """The kwargs the run's model is built with (and its checkpoints rebuilt with): --model-kwargs, plus the data's
    num_classes and input_shape where the builder declares them."""
    return builder_kwargs(cfg.model, dict(cfg.model_kwargs), num_classes=data.num_classes,
                          input_shape=list(data.input_shape))


def resume_state(cfg: TrainConfig) -> dict[str, Any] | None:
    """The last checkpoint to continue from, after checking it belongs to this very run."""
    last = os.path.join(cfg.out, "last.pt")
    if not os.path.exists(last):
        if cfg.resume:
            print0(f"--resume: no {last} yet, starting from scratch")
        return None
    if not cfg.resume:
        raise UserError(f"{cfg.out} already holds a run (last.pt); pass --resume to continue it or choose "
                        "another --out")
    state = ckpt_io.load_checkpoint(last)
    stored = TrainConfig(**{**state["train_config"], "out": cfg.out,
                            "milestones": tuple(state["train_config"]["milestones"])}).identity()
    diff = sorted(k for k, v in cfg.identity().items() if stored.get(k) != v)
    if diff:
        detail = ", ".join(f"{k}: {stored.get(k)!r} there vs {cfg.identity()[k]!r} now" for k in diff)
        raise UserError(f"--resume: {last} was trained with other settings ({detail}); use the same flags "
                        "or another --out")
    return state


def append_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    """Append records as lines of strict JSON (an undefined value is null, never NaN or Infinity), flushed to
    disk before returning."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def read_log(run: str) -> list[dict[str, Any]]:
    """A run's metrics.jsonl, one record a line in order: epoch records (no "kind") and tracked ones ("kind":
    "noise", "sharpness"); [] before the run has logged anything."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def truncate_log(path: str, keep_step: int) -> None:
    """On resume from the checkpoint of optimizer step `keep_step`, drop the log's records past it (a kill after
    they were written and before the checkpoint: they are about to be redone), and a last line torn by a kill in
    the middle of an append."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= keep_step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    write_text(path, "".join(kept))
