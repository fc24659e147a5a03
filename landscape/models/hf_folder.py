"""HuggingFace `save_pretrained` folders as a weights format: recognised by their config.json (a run folder of
trainers.train, which has one too, is not one), their weight files (one file, sharded with an index, or
`pytorch_model.bin`), the model their config describes built offline, and their tensors read."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from landscape.base.errors import UserError
from landscape.models.weights import find_state_dict, read_bytes, read_file, short_reason

HF_CONFIG = "config.json"
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # one file, else "<file>.index.json" and its shards


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HF_CONFIG)) and not is_run_folder(path)


def is_run_folder(path: str) -> bool:
    """A run folder of trainers.train: its config.json (the run's, not a model's) holds a train_config."""
    try:
        with open(os.path.join(path, HF_CONFIG)) as f:
            return "train_config" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def refuse_run_folder(path: str) -> None:
    """A run folder given where a model is expected: name the checkpoint to give instead."""
    if os.path.isdir(path) and is_run_folder(path):
        last = os.path.join(path, "last.pt")
        raise UserError(f"{path} is a run folder of trainers.train, not a model; give one of its checkpoints, e.g. "
                        f"{last}")


def hf_weight_files(folder: str) -> list[str]:
    """The weight files of a save_pretrained folder: model.safetensors, its index's shards, or the .bin ones."""
    for name in HF_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
        index = os.path.join(folder, name + ".index.json")
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise UserError(f"{folder} lacks {len(missing)} of the {len(shards)} shards its index names (e.g. "
                                f"{missing[0]}); copy the whole folder")
            return [os.path.join(folder, s) for s in shards]
    raise UserError(f"{folder} holds {HF_CONFIG} but no weights ({' or '.join(HF_FILES)}, or a sharded index); "
                    "save the model with save_pretrained")


def build_hf_model(folder: str) -> nn.Module:
    """The model a save_pretrained folder describes, built from its config alone (offline, random weights): the
    class its config names (`architectures`), else AutoModel. Models that need remote code are refused."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{folder} is a HuggingFace model folder; install transformers (pip install transformers, "
                        "or pip install -e '.[hf]' in the clone) or give --model") from None
    with open(os.path.join(folder, HF_CONFIG)) as f:
        raw = json.load(f)
    if raw.get("auto_map"):
        raise UserError(f"{folder} needs remote code (its config has auto_map); landscape does not run it: build the "
                        "model yourself and give --model package.module:function")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}/{HF_CONFIG} cannot be read by transformers ({short_reason(exc)}); re-save the model "
                        "or give --model") from None
    names = [a for a in (config.architectures or []) if hasattr(transformers, a)]
    cls = getattr(transformers, names[0]) if names else transformers.AutoModel
    model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
    return model.eval()


def hf_state_dict(folder: str, digest: Any = None) -> dict[str, torch.Tensor]:
    """A save_pretrained folder's tensors; `digest` is updated with its config's bytes, then its weight files'."""
    state: dict[str, torch.Tensor] = {}
    if digest is not None:
        digest.update(read_bytes(os.path.join(folder, HF_CONFIG)))
    for path in hf_weight_files(folder):
        part = read_file(path, digest)
        state.update(find_state_dict(part, path))
    return state
