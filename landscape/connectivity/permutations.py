"""Permutation specs: which axes of which tensors a hidden-unit permutation reorders, so that permuting them all
leaves the network's function unchanged (Ainsworth et al. 2023's "permutation spec").

A spec maps a state-dict name to one entry per axis: None (not permuted), a permutation's name, or
`{"perm": name, "outer": O, "inner": I}` for an axis laid out as (O, n, I) whose middle part the permutation
reorders: a Linear after Flatten reads channel c at columns c*I ... c*I + I - 1, and an attention layer's qkv rows
are (3, heads, head_dim). Tensors the spec leaves out are not permuted (the input layer's inputs, the logits).

`spec_for(model)` knows our registry's models (chains of Linear/Conv/BatchNorm such as mlp, cnn1d, cnn2d and
vgg9; the CIFAR ResNets with their residual streams; the Transformer's residual stream, MLP units and heads) and
torchvision's (and timm's plain) ResNets, and takes a user's spec as JSON or as `package.module:function` called
with the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from landscape.base.config import import_object
from landscape.base.errors import ConfigError, UserError
from landscape.models.lm import Transformer
from landscape.models.registry import BasicBlock, CifarResNet


@dataclass(frozen=True)
class Axis:
    """One permuted axis: laid out as (outer, n, inner), the permutation `perm` reorders its n middle parts."""

    perm: str
    outer: int = 1
    inner: int = 1


@dataclass(frozen=True)
class PermutationSpec:
    """Per tensor name, each axis's Axis (or None); `sizes` gives each permutation's number of units."""

    axes: dict[str, tuple[Axis | None, ...]]
    sizes: dict[str, int]

    def uses(self, perm: str) -> list[tuple[str, int]]:
        """The (tensor, axis) pairs that `perm` reorders."""
        return [(name, i) for name, axes in self.axes.items() for i, a in enumerate(axes)
                if a is not None and a.perm == perm]


ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Identity,
               nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
SPEC_HELP = ("give --align-spec FILE.json or package.module:function returning {tensor name: [permutation name or "
             "null, per axis]} (README: Aligning your own model)")


def spec_for(model: nn.Module, spec: str | Mapping[str, Any] | None = None) -> PermutationSpec:
    """The permutation spec of `model`: `spec` when given (a JSON file, `package.module:function` called with the
    model, or the mapping itself), else the one of a registry model, checked against the model's state dict."""
    if spec is None:
        raw = known_spec(model)
    elif isinstance(spec, str) and spec.endswith(".json"):
        raw = spec_file(spec)
    elif isinstance(spec, str):
        made = import_object(spec, "--align-spec")
        raw = made(model) if callable(made) else made
    else:
        raw = spec
    return checked(raw, model)


def spec_file(path: str) -> Any:
    """The JSON of a --align-spec file; a missing, unreadable or malformed file is one line naming it."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "file not found"
        raise UserError(f"--align-spec {path}: {what}; give a JSON file of {{tensor name: [axes]}}")
    try:
        with open(path) as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise UserError(f"--align-spec {path} is not a text file; give a JSON file of {{tensor name: [axes]}}"
                        ) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--align-spec {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                        "fix the file") from None
    except OSError as exc:
        raise UserError(f"--align-spec {path} cannot be read ({exc.strerror}); check its permissions") from None


def known_spec(model: nn.Module) -> dict[str, list]:
    """The spec of a model of ours, or of any chain of Linear/Conv/BatchNorm layers; a one-line refusal naming
    what is missing otherwise."""
    if isinstance(model, CifarResNet):
        return resnet_spec(model)
    if isinstance(model, Transformer):
        return transformer_spec(model)
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "fc")):
        return torchvision_resnet_spec(model)
    if type(model).__name__ in HF_SPECS:  # by name: transformers is not imported here
        return HF_SPECS[type(model).__name__](model)
    return chain_spec(model)


def chain_spec(model: nn.Module) -> dict[str, list]:
    """A network whose modules run in the order they are registered (nested nn.Sequential): each hidden
    Linear/Conv layer's outputs get a permutation, carried through BatchNorm, activations, pooling and Flatten
    into the next weighted layer's inputs; the last layer's outputs (the logits) stay in place."""
    kind = type(model).__name__
    if not isinstance(model, nn.Sequential):
        raise UserError(f"cannot align {kind}: no permutation spec is known for it and it is not an nn.Sequential "
                        f"chain of Linear/Conv/BatchNorm layers; {SPEC_HELP}")
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    weighted = [n for n, m in leaves if isinstance(m, WEIGHTED)]
    raw: dict[str, list] = {}
    flowing: tuple[str, int] | None = None  # the permutation on the features flowing, and its size
    for name, m in leaves:
        prefix = f"{name}." if name else ""
        if isinstance(m, WEIGHTED):
            if getattr(m, "groups", 1) != 1:
                raise UserError(f"cannot align {kind}: {name} is a grouped convolution; {SPEC_HELP}")
            fan_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            inp = None
            if flowing is not None:  # after Flatten a Linear reads each channel's positions side by side
                inp = {"perm": flowing[0], "inner": fan_in // flowing[1]}
            out = None if name == weighted[-1] else f"{prefix}out"
            raw[f"{prefix}weight"] = [out, inp, *[None] * (m.weight.ndim - 2)]
            if m.bias is not None:
                raw[f"{prefix}bias"] = [out]
            flowing = None if out is None else (out, m.weight.shape[0])
        elif isinstance(m, NORMS):
            if flowing is not None:
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, t, None) is not None:
                        raw[f"{prefix}{t}"] = [flowing[0]]
        elif isinstance(m, nn.Unflatten) and flowing is not None or not isinstance(
                m, (*ELEMENTWISE, nn.Flatten, nn.Unflatten)):
            raise UserError(f"cannot align {kind}: its {type(m).__name__} at {name!r} is not a layer a chain's "
                            f"permutation passes through; {SPEC_HELP}")
    return raw


def resnet_spec(model: CifarResNet) -> dict[str, list]:
    """A CIFAR ResNet: one permutation per residual stream (blocks joined by identity shortcuts share it, a 1x1
    projection shortcut starts a new one) and one per block's inner channels; without shortcuts every block's
    output is a stream of its own."""
    raw: dict[str, list] = {"conv1.weight": ["s0", None, None, None],
                            **{f"bn1.{t}": ["s0"] for t in ("weight", "bias", "running_mean", "running_var")}}
    stream = "s0"
    for i, block in enumerate(model.layers):
        assert isinstance(block, BasicBlock)
        p = f"layers.{i}."
        projected = not isinstance(block.shortcut, nn.Identity)
        out = f"s{i + 1}" if projected or not block.use_shortcut else stream
        raw |= conv_bn(p + "conv1", p + "bn1", f"b{i}", stream)
        raw |= conv_bn(p + "conv2", p + "bn2", out, f"b{i}")
        if projected:
            raw |= conv_bn(p + "shortcut.0", p + "shortcut.1", out, stream)
        stream = out
    raw["linear.weight"] = [None, stream]
    return raw


def torchvision_resnet_spec(model: nn.Module) -> dict[str, list]:
    """torchvision's ResNets (and timm's plain ones, which name their tensors alike): the stem's stream, one
    stream per stage whose first block projects (downsample), and the inner channels of each BasicBlock (2 convs)
    or Bottleneck (3); refused where a block holds more (squeeze-excitation) or a convolution is grouped."""
    raw = conv_bn("conv1", "bn1", "s0", None)
    stream = "s0"
    for stage in range(1, 5):
        for i, block in enumerate(getattr(model, f"layer{stage}", [])):
            p, depth = f"layer{stage}.{i}.", 3 if hasattr(block, "conv3") else 2
            extra = [n for n, m in block.named_children() if n.startswith("se") and not isinstance(m, nn.Identity)]
            grouped = [n for n, m in block.named_modules() if isinstance(m, nn.Conv2d) and m.groups != 1]
            if extra or grouped:
                raise UserError(f"cannot align {type(model).__name__}: block {p[:-1]} has "
                                f"{(extra or grouped)[0]!r} (squeeze-excitation or a grouped convolution); {SPEC_HELP}")
            projected = getattr(block, "downsample", None) is not None
            out = f"s{stage}.{i}" if projected else stream
            inputs = [stream] + [f"{p}c{k}" for k in range(1, depth)]
            for k in range(1, depth + 1):
                raw |= conv_bn(f"{p}conv{k}", f"{p}bn{k}", out if k == depth else f"{p}c{k}", inputs[k - 1])
            if projected:
                raw |= conv_bn(f"{p}downsample.0", f"{p}downsample.1", out, stream)
            stream = out
    raw["fc.weight"] = [None, stream]
    return raw


def conv_bn(conv: str, bn: str, out: str, inp: str | None) -> dict[str, list]:
    """A bias-free convolution from `inp` to `out` followed by its BatchNorm."""
    return {f"{conv}.weight": [out, inp, None, None],
            **{f"{bn}.{t}": [out] for t in ("weight", "bias", "running_mean", "running_var")}}


def transformer_spec(model: Transformer) -> dict[str, list]:
    """Our decoder-only Transformer: the residual stream (embeddings, every LayerNorm, each block's inputs and
    outputs, the head's inputs: LayerNorm commutes with a permutation of its features), each block's MLP units,
    and each block's attention heads as wholes (q, k and v of a head move together, rotary positions included)."""
    d = model.tok.weight.shape[1]
    raw: dict[str, list] = {"tok.weight": [None, "res"], "ln_f.weight": ["res"], "ln_f.bias": ["res"],
                            "head.weight": [None, "res"]}
    if model.pos is not None:
        raw["pos.weight"] = [None, "res"]
    for i, block in enumerate(model.blocks):
        p, heads, mlp = f"blocks.{i}.", f"h{i}", f"m{i}"
        hd = d // block.attn.n_head
        raw |= {f"{p}{ln}.{t}": ["res"] for ln in ("ln1", "ln2") for t in ("weight", "bias")}
        raw |= {f"{p}attn.qkv.weight": [{"perm": heads, "outer": 3, "inner": hd}, "res"],
                f"{p}attn.qkv.bias": [{"perm": heads, "outer": 3, "inner": hd}],
                f"{p}attn.proj.weight": ["res", {"perm": heads, "inner": hd}], f"{p}attn.proj.bias": ["res"],
                f"{p}mlp.0.weight": [mlp, "res"], f"{p}mlp.0.bias": [mlp],
                f"{p}mlp.2.weight": ["res", mlp], f"{p}mlp.2.bias": ["res"]}
    return raw


def gpt2_spec(model: nn.Module) -> dict[str, list]:
    """HuggingFace GPT-2 (GPT2LMHeadModel, GPT2Model): the residual stream through the embeddings, every LayerNorm
    and the head; each block's MLP units; each block's heads as wholes. GPT-2's Conv1D layers store their weights
    (in, out), the transpose of nn.Linear's."""
    p = "transformer." if hasattr(model, "transformer") else ""
    config = model.config
    hd = config.n_embd // config.n_head
    raw: dict[str, list] = {f"{p}wte.weight": [None, "res"], f"{p}wpe.weight": [None, "res"],
                            f"{p}ln_f.weight": ["res"], f"{p}ln_f.bias": ["res"]}
    if p:
        raw["lm_head.weight"] = [None, "res"]
    for i in range(config.n_layer):
        b, heads, mlp = f"{p}h.{i}.", f"h{i}", f"m{i}"
        raw |= {f"{b}{ln}.{t}": ["res"] for ln in ("ln_1", "ln_2") for t in ("weight", "bias")}
        raw |= {f"{b}attn.c_attn.weight": ["res", {"perm": heads, "outer": 3, "inner": hd}],
                f"{b}attn.c_attn.bias": [{"perm": heads, "outer": 3, "inner": hd}],
                f"{b}attn.c_proj.weight": [{"perm": heads, "inner": hd}, "res"], f"{b}attn.c_proj.bias": ["res"],
                f"{b}mlp.c_fc.weight": ["res", mlp], f"{b}mlp.c_fc.bias": [mlp],
                f"{b}mlp.c_proj.weight": [mlp, "res"], f"{b}mlp.c_proj.bias": ["res"]}
    return raw


def llama_spec(model: nn.Module) -> dict[str, list]:
    """HuggingFace Llama-style decoders (LlamaForCausalLM, LlamaModel; RMSNorm, rotary positions, gated MLP,
    grouped-query attention): the residual stream through the embeddings, every RMSNorm and the head; each
    layer's MLP units (gate, up and down together); each layer's key-value heads as wholes, with the query heads
    that share them (rotary positions act within a head, so they are untouched)."""
    p = "model." if hasattr(model, "model") else ""
    config = model.config
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or config.hidden_size // heads
    state = model.state_dict()
    raw: dict[str, list] = {f"{p}embed_tokens.weight": [None, "res"], f"{p}norm.weight": ["res"]}
    if p and "lm_head.weight" in state:
        raw["lm_head.weight"] = [None, "res"]
    for i in range(config.num_hidden_layers):
        b, g, mlp = f"{p}layers.{i}.", f"kv{i}", f"m{i}"
        q_rows, kv_rows = {"perm": g, "inner": hd * heads // kv}, {"perm": g, "inner": hd}
        raw |= {f"{b}input_layernorm.weight": ["res"], f"{b}post_attention_layernorm.weight": ["res"],
                f"{b}self_attn.q_proj.weight": [q_rows, "res"], f"{b}self_attn.k_proj.weight": [kv_rows, "res"],
                f"{b}self_attn.v_proj.weight": [kv_rows, "res"], f"{b}self_attn.o_proj.weight": ["res", q_rows],
                f"{b}mlp.gate_proj.weight": [mlp, "res"], f"{b}mlp.up_proj.weight": [mlp, "res"],
                f"{b}mlp.down_proj.weight": ["res", mlp]}
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            if f"{b}self_attn.{name}.bias" in state:
                raw[f"{b}self_attn.{name}.bias"] = [rows]
        for name, entry in (("self_attn.o_proj", "res"), ("mlp.gate_proj", mlp), ("mlp.up_proj", mlp),
                            ("mlp.down_proj", "res")):
            if f"{b}{name}.bias" in state:
                raw[f"{b}{name}.bias"] = [entry]
    return raw


HF_SPECS = {"GPT2LMHeadModel": gpt2_spec, "GPT2Model": gpt2_spec, "LlamaForCausalLM": llama_spec,
            "LlamaModel": llama_spec}


def checked(raw: Mapping[str, Any], model: nn.Module) -> PermutationSpec:
    """A PermutationSpec from its plain form, checked against the model's state dict: every tensor exists, has one
    entry per axis, and each permutation has one size wherever it is used."""
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(f"the permutation spec must be a non-empty mapping {{tensor name: [axes]}}; {SPEC_HELP}")
    state = model.state_dict()
    axes: dict[str, tuple[Axis | None, ...]] = {}
    sizes: dict[str, int] = {}
    for name, entries in raw.items():
        if name not in state:
            raise UserError(f"the permutation spec names {name!r}, which the model does not have (it has e.g. "
                            f"{list(state)[:3]}); use the names of model.state_dict()")
        shape = state[name].shape
        if not isinstance(entries, (list, tuple)) or len(entries) != len(shape):
            raise UserError(f"the permutation spec gives {name!r} {entries!r}; it needs one entry per axis of its "
                            f"shape {tuple(shape)} (null for an axis not permuted)")
        axes[name] = tuple(_axis(e, name) for e in entries)
        for a, size in zip(axes[name], shape):
            if a is None:
                continue
            n, rest = divmod(size, a.outer * a.inner)
            if rest or n == 0 or sizes.setdefault(a.perm, n) != n:
                raise UserError(f"the permutation spec's {a.perm!r} has {sizes.get(a.perm, n)} units but {name!r} "
                                f"has {size} along that axis (outer {a.outer}, inner {a.inner}); fix the spec")
    return PermutationSpec(axes, sizes)


def _axis(entry: Any, name: str) -> Axis | None:
    if entry is None:
        return None
    if isinstance(entry, str):
        return Axis(entry)
    if isinstance(entry, Mapping) and isinstance(entry.get("perm"), str):
        try:
            return Axis(entry["perm"], int(entry.get("outer", 1)), int(entry.get("inner", 1)))
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"the permutation spec's entry {entry!r} for {name!r} is not null, a permutation name, or "
                      "{\"perm\": name, \"outer\": O, \"inner\": I}")
