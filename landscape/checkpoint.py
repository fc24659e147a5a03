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
import pickle
import zipfile
from typing import Any

import torch
from torch import nn

from landscape import __version__
from landscape.data import Dataset, load_dataset
from landscape.errors import UserError
from landscape.files import atomic_path
from landscape.models import build_model

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
    """Write atomically (landscape.files.atomic_path): a kill leaves either the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True; every failure is a one-line UserError naming the fix."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint not found: {path}; check the path (the trainer writes DIR/last.pt)")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give the checkpoint file in it (e.g. {os.path.join(path, 'last.pt')})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise UserError(f"{path} holds pickled Python objects, which are refused (loaded with "
                            "weights_only=True); save only tensors, dicts, lists, strings and numbers") from None
        raise UserError(f"{path} is corrupt or not a PyTorch checkpoint ({exc}); re-create it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path} is truncated, corrupt or not a PyTorch checkpoint ({reason}); re-create it "
                        "or restore it from a copy") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a landscape checkpoint (no format={FORMAT!r}); wrap your state_dict "
                        "with landscape.checkpoint.make_checkpoint and save_checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer landscape (format {ckpt['format_version']}); upgrade")
    return ckpt


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
    """The dataset the checkpoint was trained on (see landscape.data.load_dataset)."""
    return load_dataset(ckpt["data"]["name"], data_dir=data_dir, download=download, **ckpt["data"]["kwargs"])


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")  # how training scripts nest it
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict in a weights file: a plain state dict, one nested under a usual key (our checkpoints,
    the paper's code and many training scripts nest it), with any DDP `module.` or compile `_orig_mod.` prefix
    stripped. Read with weights_only=True."""
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's problem, reported in one line
        reason = " ".join(str(exc).split())[:160]
        raise UserError(f"{path} cannot be read with weights_only=True ({reason}); save a plain state_dict "
                        "(torch.save(model.state_dict(), path))") from None
    if isinstance(obj, dict) and not _tensor_dict(obj):
        nested = [obj[k] for k in STATE_DICT_KEYS if _tensor_dict(obj.get(k))]
        if not nested:
            raise UserError(f"{path} holds a dict with keys {sorted(map(str, obj))[:6]} but no state dict (under "
                            f"{', '.join(STATE_DICT_KEYS)}, or at the top); save model.state_dict()")
        obj = nested[0]
    if not _tensor_dict(obj):
        raise UserError(f"{path} holds {type(obj).__name__}, not a state dict; save model.state_dict()")
    out = {}
    for k, v in obj.items():
        for prefix in PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load `state` into `model`, refusing missing, unexpected or misshapen tensors with their first names."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
                f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
    if any(problems):
        raise UserError(f"the weights in {path} do not fit the model: {'; '.join(p for p in problems if p)}; "
                        "check --model and --model-kwargs")
    model.load_state_dict(state)

