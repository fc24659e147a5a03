"""Where a model's weights come from, registered: each `WeightsFormat` owns how a path is recognised, which files
are its content (hashed), how its tensors are read (the readers own the nesting and wrapper-prefix rules), and,
for a self-describing folder, the model it describes. The tensors are then matched to the model by name
(landscape.models.weights.load_matching). A new format is one module with its reader, one `register_format` call
and a test; the formats registered last are tried first, so a user's format takes precedence over the built-ins.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape.base.errors import UserError
from landscape.base.registry import Registry
from landscape.models import hf_folder
from landscape.models.weights import find_state_dict, load_matching, read_bytes, read_safetensors, torch_load

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightsFormat:
    """One way weights are saved. `detect(path)`: whether a path is one; `files(path)`: the files whose bytes are
    its content; `read(path, digest, ema)`: its tensors by name, `digest` (hashlib) updated with each file's bytes,
    `ema` asking for an averaged model where the format holds one; `build(path)`: the model a self-describing
    format describes (None: the user gives the model)."""

    name: str
    detect: Callable[[str], bool]
    files: Callable[[str], list[str]]
    read: Callable[[str, Any, bool], Tensors]
    build: Callable[[str], nn.Module] | None = None


FORMATS = Registry("weights format")
register_format = FORMATS.add


def find_format(path: str) -> WeightsFormat | None:
    """The format of `path`, the last registered first; None when none recognises it."""
    return next((f for f in reversed(FORMATS.values()) if f.detect(path)), None)


def format_of(path: str) -> WeightsFormat:
    """find_format, or a one-line error that says what to give instead."""
    fmt = find_format(path)
    if fmt is not None:
        return fmt
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder without {hf_folder.HF_CONFIG}; give the weights file in it, or a "
                        "HuggingFace save_pretrained folder")
    raise UserError(f"weights file not found: {path}; check the path")


def read_weights_into(model: nn.Module, path: str, strip_prefix: str | None = None, ema: bool = False
                      ) -> tuple[list[str], str]:
    """Read `path` (a weights file or folder of any registered format) into `model`, each file once; the notes to
    print and the content hash of what was read (weights_sha256's, without a second read)."""
    digest = hashlib.sha256()
    state = format_of(path).read(path, digest, ema)
    return load_matching(model, state, path, strip_prefix), digest.hexdigest()


def load_weights_into(model: nn.Module, path: str, strip_prefix: str | None = None, ema: bool = False
                      ) -> list[str]:
    """Read `path` (a weights file or a save_pretrained folder) into `model`; the notes to print."""
    return read_weights_into(model, path, strip_prefix, ema)[0]


def weights_sha256(path: str) -> str:
    """A content hash of the files of `path`'s format (a weights file, or a save_pretrained folder's config and
    weight files)."""
    h = hashlib.sha256()
    for name in format_of(path).files(path):
        with open(name, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _file_reader(parse: Callable[[str, bytes], Any]) -> Callable[[str, Any, bool], Tensors]:
    """A one-file format's reader: its bytes read once (hashed from the same read), parsed, the state dict found."""
    def read(path: str, digest: Any, ema: bool) -> Tensors:
        data = read_bytes(path)
        if digest is not None:
            digest.update(data)
        return find_state_dict(parse(path, data), path, ema)

    return read


def _refuse_run_folder(path: str, *_: Any) -> Any:
    hf_folder.refuse_run_folder(path)


register_format(WeightsFormat(  # .pt, .pth, .ckpt, .bin: torch.save's pickles, read weights_only
    "torch", detect=os.path.isfile, files=lambda path: [path], read=_file_reader(torch_load)))
register_format(WeightsFormat(
    "safetensors", detect=lambda path: os.path.isfile(path) and path.endswith(".safetensors"),
    files=lambda path: [path], read=_file_reader(read_safetensors)))
register_format(WeightsFormat(  # a run folder holds checkpoints, not weights: its refusal names the one to give
    "run_folder", detect=lambda path: os.path.isdir(path) and hf_folder.is_run_folder(path),
    files=lambda path: [], read=_refuse_run_folder, build=_refuse_run_folder))
register_format(WeightsFormat(
    "huggingface", detect=hf_folder.is_hf_folder,
    files=lambda path: [os.path.join(path, hf_folder.HF_CONFIG), *hf_folder.hf_weight_files(path)],
    read=lambda path, digest, ema: hf_folder.hf_state_dict(path, digest), build=hf_folder.build_hf_model))
