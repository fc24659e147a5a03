"""The registry of curvature operators: what `--curvature` (landscape.sharpness, landscape.hessian_map, the trackers)
and `--directions hessian|ggn|...` choose among, each one class with the Hessian's arguments. A new operator is a
CurvatureOperator subclass (landscape.curvature.flat_loss) registered here with `register_curvature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from landscape.base.config import CURVATURE_LABELS, CURVATURES
from landscape.base.errors import ConfigError
from landscape.base.registry import Registry
from landscape.curvature.flat_loss import CurvatureOperator
from landscape.curvature.ggn import EmpiricalFisherOperator, FisherOperator, GGNOperator
from landscape.curvature.hessian import HessianOperator
from landscape.runtime.metrics import Metric, cross_entropy


@dataclass(frozen=True)
class Curvature:
    """A curvature operator by name: its class, the options it takes beyond the Hessian's common ones (params,
    reduce, batch_size, loss_name), and its name in labels."""

    name: str
    operator: type[CurvatureOperator]
    options: frozenset[str]
    label: str


CURVATURE_OPERATORS: Registry = Registry("curvature")
register_curvature = CURVATURE_OPERATORS.add
for _name, _cls, _options in [("hessian", HessianOperator, {"cache_bytes"}), ("ggn", GGNOperator, set()),
                               ("fisher", FisherOperator, {"draws", "seed"}),
                               ("empirical_fisher", EmpiricalFisherOperator, set())]:
    register_curvature(Curvature(_name, _cls, frozenset(_options), CURVATURE_LABELS[_name]))
assert tuple(CURVATURE_OPERATORS) == CURVATURES, "base.config.CURVATURES names the built-in operators, in order"


def curvature_of(kind: str) -> Curvature:
    if kind not in CURVATURE_OPERATORS:
        raise ConfigError(f"curvature {kind!r} is not one of: {', '.join(CURVATURE_OPERATORS)}")
    return CURVATURE_OPERATORS[kind]


def curvature_operator(kind: str, model: nn.Module, data: Any, metric: str | Metric = cross_entropy,
                       **options: Any) -> CurvatureOperator:
    """The curvature operator `kind` (a registered name: hessian, ggn, fisher, empirical_fisher) over `data`,
    each with the Hessian's arguments (params, reduce, batch_size, loss_name); the options only some take (the
    Hessian's cache_bytes, the Fisher's draws and seed) are passed to those alone."""
    c = curvature_of(kind)
    common = {"params", "reduce", "batch_size", "loss_name"}
    return c.operator(model, data, metric, **{k: v for k, v in options.items() if k in common | c.options})
