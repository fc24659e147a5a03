"""The extreme eigenvalues of a curvature at the points of a grid (Li et al. 2018, Sec. 6): the evaluator behind
landscape.hessian_map, for the Hessian or any registered curvature (landscape.curvature.operators)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.core.params import Params, PointSetter, model_tensors
from landscape.curvature.hessian import eigenvalues
from landscape.curvature.operators import curvature_operator
from landscape.runtime.metrics import Metric, cross_entropy


class HessianPointEvaluator:
    """lambda_max and lambda_min of the Hessian (or the `curvature` named: ggn, fisher, empirical_fisher) at grid
    points theta0 + sum_i c_i d_i (Li et al. 2018, Sec. 6): the `Evaluator` of landscape.core.grid_eval.compute_surface
    for Hessian maps. Each rank computes its own points on its whole data, so the points, not the data, are split
    across ranks; the caller's model is not touched."""

    metric_names = ["lambda_max", "lambda_min"]
    points_per_pass = 1

    def __init__(self, model: nn.Module, theta0: Params, directions: list[Params], data: Any,
                 *, metric: str | Metric = cross_entropy, tol: float = 1e-3, seed: int = 0, batch_size: int = 512,
                 loss_name: str | None = None, curvature: str = "hessian"):
        self.model = copy.deepcopy(model).eval()
        self.setter = PointSetter(model_tensors(self.model, "weights"), theta0, directions)  # re-points the weights
        self.op = curvature_operator(curvature, self.model, data, metric, reduce=False,  # ...read there
                                     batch_size=batch_size, loss_name=loss_name, seed=seed)
        self.tol, self.seed = tol, seed

    def evaluate(self, coords: np.ndarray) -> Tensor:
        rows = []
        for point in coords:
            self.setter(tuple(float(c) for c in point))
            self.op.refresh()
            e = eigenvalues(self.op, k=1, tol=self.tol, seed=self.seed, smallest=True)
            rows.append([e.top[0], e.min])
        return torch.tensor(rows, dtype=torch.float64, device=self.op.device)
