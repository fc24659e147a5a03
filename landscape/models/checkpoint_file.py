"""Self-describing checkpoints: written atomically, read with `torch.load(weights_only=True)` only.

A checkpoint is a dict of plain tensors, dicts, lists, strings and numbers:
  format, format_version, package_version, model {name, kwargs}, data {name, kwargs},
  train_config {...}, plan {...}, epoch, step, metrics {train_loss, train_acc, test_loss, test_acc},
  state_dict, optimizer, scheduler, rng.
`model` and `data` are enough to rebuild the network and its dataset from the file alone.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn

from landscape import __version__
from landscape.base.errors import UserError
from landscape.base.files import atomic_path
from landscape.data.datasets import Dataset, load_dataset
from landscape.models.hf_folder import HF_CONFIG, HF_FILES
from landscape.models.registry import build_model
from landscape.models.weights import read_file

FORMAT = "landscape-checkpoint"
FORMAT_VERSION = 1


def make_checkpoint(model: nn.Module, model_name: str, model_kwargs: dict[str, Any], data_name: str,
                    data_kwargs: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The checkpoint dict for a model (pass the unwrapped, uncompiled module); `extra` adds training state."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
            "model": {"name": model_name, "kwargs": dict(model_kwargs)},
            "data": {"name": data_name, "kwargs": dict(data_kwargs or {})},
            "metrics": dict(metrics or {}),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **extra}


def save_checkpoint(ckpt: dict[str, Any], path: str) -> None:
    """Write atomically (landscape.base.files.atomic_path): a kill leaves either the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True; every failure is a one-line UserError naming the fix."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str) -> tuple[dict[str, Any], str]:
    """A checkpoint (as load_checkpoint reads it) and the sha256 of its bytes, taken from the same read."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}; check the path (the trainer writes DIR/last.pt)")
    if os.path.isdir(path):
        weights = [f for f in HF_FILES if os.path.exists(os.path.join(path, f))]
        if weights:
            raise UserError(f"{path} holds {weights[0]} but is a folder without {HF_CONFIG}; save the model with "
                            "save_pretrained (which writes it), or give the file with --model")
        raise UserError(f"{path} is a folder; give the checkpoint file in it (e.g. {os.path.join(path, 'last.pt')})")
    digest = hashlib.sha256()
    ckpt = read_file(path, digest)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a landscape checkpoint (no format={FORMAT!r}); wrap your state_dict "
                        "with landscape.models.checkpoint_file.make_checkpoint and save_checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer landscape (format {ckpt['format_version']}); upgrade")
    return ckpt, digest.hexdigest()


def build_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model described by a checkpoint and load its weights (strictly), in eval mode."""
    model = build_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"the checkpoint's weights do not fit model {ckpt['model']['name']!r}: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    return model.eval()


def load_model(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode, on CPU) and the checkpoint dict, from the file alone."""
    ckpt = load_checkpoint(path)
    return build_from_checkpoint(ckpt), ckpt


def load_data_for(ckpt: dict[str, Any], data_dir: str | None = None, download: bool = False) -> Dataset:
    """The dataset the checkpoint was trained on (see landscape.data.datasets.load_dataset)."""
    return load_dataset(ckpt["data"]["name"], data_dir=data_dir, download=download, **ckpt["data"]["kwargs"])
