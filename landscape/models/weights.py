"""Weights files as researchers save them, read safely: plain state dicts and the dicts training scripts nest them
in (torchvision's references, Lightning, the paper's code) and `.safetensors` files; and the tensors found in them
matched to a model's own names. Which reader a path gets is landscape.models.formats's choice.

Pickled files are read with `torch.load(weights_only=True)` under a short allow-list of harmless classes
(argparse.Namespace, Lightning's AttributeDict, paths), scoped to that one read; any other class is refused in one
line that names it. The tensors are matched to the model's own names: a prefix that holds every tensor the model
needs (`model.` of a LightningModule) is found and said, or chosen with `strip_prefix`; weights the model ties to
another (a language model's head) are not missing when the file leaves them out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from landscape.base.errors import UserError, error_message

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")  # how training scripts nest it
EMA_KEYS = ("model_ema", "ema_state_dict", "ema")  # torchvision's references: an AveragedModel's state
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel and AveragedModel, torch.compile


# Harmless classes that training scripts pickle beside their tensors, by the name the pickle gives them. Lightning's
# AttributeDict (hyper_parameters) is read as a plain dict: the weights-only unpickler fills dicts of exact type only,
# and a dict is what it is.
ALLOWED_GLOBALS = [
    (argparse.Namespace, "argparse.Namespace"),
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (dict, "lightning.pytorch.utilities.parsing.AttributeDict"),
    (pathlib.PosixPath, "pathlib.PosixPath"),
    (pathlib.PurePosixPath, "pathlib.PurePosixPath"),
]


def _allowed() -> contextlib.AbstractContextManager:
    """torch.load's allow-list for this read only (torch >= 2.5; older torch refuses such files)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped(ALLOWED_GLOBALS) if scoped is not None else contextlib.nullcontext()


def _unsafe_globals(data: bytes) -> list[str]:
    """The classes and functions a pickled file's bytes name that the allow-list does not hold."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is None:
        return []
    try:
        names = find(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - a file too broken to list is reported by the caller
        return []
    allowed = {name for _, name in ALLOWED_GLOBALS}
    return [n for n in names if n not in allowed]


def torch_load(path: str, data: bytes | None = None) -> Any:
    """A pickled file (.pt, .pth, .ckpt, .bin) read with weights_only=True and the allow-list, from its bytes when
    they were read already; a refused class or a broken file is a one-line UserError naming it."""
    data = read_bytes(path) if data is None else data
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (a pickle before 1.6)
        raise UserError(f"{path} is truncated, corrupt or not a PyTorch checkpoint (neither a zip archive nor a "
                        f"pickle: it starts with {data[:12]!r}); give a file written by torch.save")
    try:
        with _allowed():
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(data)
        if unsafe or "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            what = ", ".join(unsafe[:4]) or "Python objects"
            raise UserError(f"{path} holds pickled {what}, which loading with weights_only=True refuses (only "
                            f"tensors, containers, numbers, strings and {', '.join(n for _, n in ALLOWED_GLOBALS[:2])} "
                            "are read); save the state_dict alone, e.g. torch.save(model.state_dict(), path)") from None
        raise UserError(f"{path} is corrupt or not a PyTorch checkpoint ({short_reason(exc)}); re-create it") from None
    except Exception as exc:  # noqa: BLE001 - whatever torch's unpickler makes of these bytes (a text file gives
        # IndexError, a cut zip BadZipFile or RuntimeError): the file is the problem, and the user can fix it
        raise UserError(f"{path} is truncated, corrupt or not a PyTorch checkpoint ({short_reason(exc)}); re-create it "
                        "or restore it from a copy") from None


def short_reason(exc: BaseException) -> str:
    """An exception's first sentence, without terminal colour codes, for a one-line message."""
    text = error_message(exc)
    for code in ("\x1b[1m", "\x1b[0m", "\x1b[31m", "\x1b[32m", "\x1b[33m"):
        text = text.replace(code, "")
    return text.split(". ")[0][:240]


def read_safetensors(path: str, data: bytes | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_bytes(path) if data is None else data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable .safetensors file ({short_reason(exc)}); re-create it") from None


def read_bytes(path: str) -> bytes:
    """A file's bytes, read once: parsed from memory and hashed from the same read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({short_reason(exc)}); check the path and its permissions") from None


def read_file(path: str, digest: Any = None) -> Any:
    """A weights file's content: a .safetensors file's tensors, or a pickled file's object. `digest` (a hashlib
    object) is updated with the bytes read."""
    if not os.path.exists(path):
        raise UserError(f"weights file not found: {path}; check the path")
    data = read_bytes(path)
    if digest is not None:
        digest.update(data)
    if path.endswith(".safetensors"):
        return read_safetensors(path, data)
    return torch_load(path, data)


# ----------------------------------------------------------------------------- finding and matching the tensors

def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path: str, ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a file's content: the content itself, or one nested under a usual key; with `ema`, the
    averaged model of torchvision's references (`model_ema`, whose `n_averaged` counter is not a weight)."""
    keys = EMA_KEYS if ema else STATE_DICT_KEYS
    if isinstance(obj, Mapping) and (ema or not _tensor_dict(obj)):
        nested = [obj[k] for k in keys if _tensor_dict(obj.get(k))]
        if not nested:
            where = "averaged model (model_ema)" if ema else "state dict"
            raise UserError(f"{path} holds a dict with keys {sorted(map(str, obj))[:6]} but no {where} (under "
                            f"{', '.join(keys)}{'' if ema else ', or at the top'}); save model.state_dict()")
        obj = nested[0]
    if not _tensor_dict(obj):
        raise UserError(f"{path} holds {type(obj).__name__}, not a state dict; save model.state_dict()")
    state = {}
    for k, v in obj.items():
        for prefix in WRAPPER_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    if ema:
        state.pop("n_averaged", None)
    return state


def tied_keys(model: nn.Module) -> dict[str, set[str]]:
    """For each state-dict name, the other names of the same tensor (weights the model ties, e.g. a language
    model's head and its embedding)."""
    by_tensor: dict[int, set[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(v), set()).add(k)
    return {k: names - {k} for names in by_tensor.values() for k in names}


def _covers(state: Mapping[str, torch.Tensor], prefix: str, needed: list[str], ties: dict[str, set[str]]) -> bool:
    return all(prefix + k in state or any(prefix + t in state for t in ties[k]) for k in needed)


def choose_prefix(state: Mapping[str, torch.Tensor], model: nn.Module, path: str,
                  strip_prefix: str | None = None) -> str:
    """The prefix under which the file holds every tensor the model needs: `strip_prefix` if given (it must match
    some key), else "" when the names match as they are, else the one prefix that works (a LightningModule's
    `model.`, say). Several that work are refused as ambiguous; none that works returns "" and leaves the mismatch
    to be reported by name."""
    needed, ties = list(model.state_dict()), tied_keys(model)
    if strip_prefix is not None:
        if not any(k.startswith(strip_prefix) for k in state):
            raise UserError(f"--strip-prefix {strip_prefix!r} matches no tensor in {path}; its names look like "
                            f"{', '.join(list(state)[:3])}")
        return strip_prefix
    if not needed or _covers(state, "", needed, ties):
        return ""
    probe = needed[0]
    candidates = {k[:-len(probe)] for k in state if k.endswith("." + probe)}
    working = sorted(p for p in candidates if _covers(state, p, needed, ties))
    if len(working) > 1:
        raise UserError(f"{path} holds every tensor of the model under {len(working)} prefixes ("
                        f"{', '.join(repr(p) for p in working[:4])}); choose one with --strip-prefix (strip_prefix=)")
    return working[0] if working else ""


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, strip_prefix: str | None = None
                  ) -> list[str]:
    """Load a file's tensors into `model` by name and return what to tell the user (the prefix used, the tensors
    left aside). Missing, unexpected (with no prefix) or misshapen tensors are refused with their first names."""
    prefix = choose_prefix(state, model, path, strip_prefix)
    own = model.state_dict()
    ties = tied_keys(model)
    picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    others = [k for k in state if not k.startswith(prefix)]
    missing = [k for k in own if k not in picked and not any(t in picked for t in ties[k])]
    extra = [k for k in picked if k not in own]
    shapes = [f"{k} {tuple(picked[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in picked and picked[k].shape != own[k].shape]
    if prefix:
        others += [prefix + k for k in extra]
        extra = []
    problems = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
                f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
    if any(problems):
        hint = " or --strip-prefix" if missing and not prefix else ""
        raise UserError(f"the weights in {path} do not fit the model: {'; '.join(p for p in problems if p)}; "
                        f"check --model and --model-kwargs{hint}")
    model.load_state_dict({k: v for k, v in picked.items() if k in own}, strict=False)
    notes = []
    if prefix:
        notes.append(f"weights: the model's tensors are under {prefix!r} in {path}")
    if others:
        notes.append(f"weights: {len(others)} other tensor(s) in {path} left aside (e.g. {', '.join(others[:3])})")
    return notes
