"""Curves between two minima A and B with one free point, the bend C (Garipov et al. 2018):

  bezier     theta(t) = (1-t)^2 A + 2t(1-t) C + t^2 B                      (quadratic Bezier, C its control point)
  polychain  theta(t) = (1-2t) A + 2t C for t < 1/2, (2-2t) C + (2t-1) B after (the polygonal chain A-C-B)
  line       theta(t) = (1-t) A + t B                                         (no bend)

Every curve is a combination c_A A + c_C C + c_B B with coefficients that sum to one, so t = 0 gives A and t = 1
gives B bit for bit (the other coefficients are exactly zero). `CurveModule` holds C as its parameters (biases
and normalization affine parameters included) and evaluates the network at theta(t), so DDP over it all-reduces
the bend's gradients only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from landscape.base.config import check_choice
from landscape.core.params import Params
from landscape.runtime.forward import forward_batch

CURVES = ("bezier", "polychain")
PATHS = ("line", *CURVES)


def coefficients(curve: str, t: float) -> tuple[float, float, float]:
    """(c_A, c_C, c_B) of the point at t in [0, 1] on `curve` (line: c_C = 0)."""
    check_choice(curve, PATHS, "--curve")
    if curve == "line":
        return 1.0 - t, 0.0, t
    if curve == "bezier":
        return (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t
    if t < 0.5:
        return 1.0 - 2.0 * t, 2.0 * t, 0.0
    return 0.0, 2.0 - 2.0 * t, 2.0 * t - 1.0


def coefficient_table(curve: str, ts: Sequence[float]) -> np.ndarray:
    """(len(ts), 3): the coefficients of each t, the grid points of a curve's evaluation."""
    return np.array([coefficients(curve, float(t)) for t in ts], dtype=np.float64)


def plane_coordinates(curve: str, ts: Sequence[float], bend_at: tuple[float, float]) -> np.ndarray:
    """(len(ts), 2): where the curve runs in the plane through A (0, 0), B (1, 0) and the bend C (at `bend_at`),
    the plane `plot2d A --plane B C` draws."""
    c = coefficient_table(curve, ts)
    return c[:, 1:2] * np.asarray(bend_at, dtype=np.float64) + c[:, 2:3] * np.array([1.0, 0.0])


def midpoint(theta_a: Params, theta_b: Params) -> Params:
    """(A + B) / 2: the bend's starting point, where a Bezier curve is the straight line."""
    return {k: (theta_a[k].float() + theta_b[k].float()) / 2 for k in theta_a}


class CurveModule(nn.Module):
    """The network on a curve: forward(batch) evaluates `model` at theta(t) for the t last set (`set_t`), its
    parameters replaced by c_A A + c_C C + c_B B; C (the bend) is this module's only parameters, so an optimizer
    and DDP see nothing else. Buffers (BatchNorm statistics) stay the model's own: in train mode BatchNorm
    normalizes with each batch's statistics, which is what the curve is trained through."""

    def __init__(self, model: nn.Module, curve: str, theta_a: Params, theta_b: Params, bend: Params):
        super().__init__()
        check_choice(curve, CURVES, "--curve")
        self.curve, self.names = curve, list(bend)
        self.bend = nn.ParameterList(nn.Parameter(bend[k].detach().clone().float()) for k in self.names)
        self._model = [model]  # a list: not a submodule, so its weights are not this module's parameters
        self._ends = [{k: theta_a[k] for k in self.names}, {k: theta_b[k] for k in self.names}]
        self.t = 0.0

    def set_t(self, t: float) -> None:
        self.t = float(t)

    def weights(self) -> Params:
        """theta(t) over the bend's tensors (on the bend's device)."""
        c_a, c_c, c_b = coefficients(self.curve, self.t)
        a, b = self._ends
        return {k: c_a * a[k] + c_c * c + c_b * b[k] for k, c in zip(self.names, self.bend)}

    def bend_weights(self) -> Params:
        return {k: p.detach() for k, p in zip(self.names, self.bend)}

    def to_device(self, device: torch.device) -> CurveModule:
        """The module, the model and the endpoints on `device`."""
        self.to(device)
        self._model[0].to(device)
        self._ends = [{k: v.to(device) for k, v in end.items()} for end in self._ends]
        return self

    def train(self, mode: bool = True) -> CurveModule:
        super().train(mode)
        self._model[0].train(mode)
        return self

    def forward(self, batch: Any) -> Any:
        """The network's outputs at theta(t) for one batch (its inputs as landscape.runtime.metrics.inputs_of
        reads them)."""
        weights = self.weights()
        return forward_batch(lambda *a, **kw: functional_call(self._model[0], weights, a, kw, strict=False), batch)


NOTE_FILE = "landscape_connect.json"  # in a save_pretrained folder written by landscape.connect


def note_path(weights: str) -> str:
    """Where a bend or aligned B of the user's model says what it is: beside a weights file (PATH.json), or in a
    save_pretrained folder (landscape_connect.json); our checkpoints hold it themselves."""
    return os.path.join(weights, NOTE_FILE) if os.path.isdir(weights) else f"{weights}.json"


def read_curve_note(weights: str, ckpt: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a bend written by landscape.connect says of its curve (type, endpoints, whether aligned), from our
    checkpoint's `curve` entry or the note beside the user's weights; None for any other file."""
    if ckpt is not None:
        return ckpt.get("curve")
    if not os.path.isfile(note_path(weights)):
        return None
    with open(note_path(weights)) as f:
        return json.load(f).get("curve")
