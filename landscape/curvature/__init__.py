"""Curvature at a minimum: the loss as a function of a flat weight vector, the Hessian as an operator
(extreme eigenvalues, trace, spectral density) and the sharpness measures of the large-batch
literature, with their costs told before they are paid; the edge of stability's thresholds, read from an
optimizer object."""

from landscape.base.lazy import lazy_exports

_API = {
    "FlatLoss": "flat_loss",
    "HessianOperator": "hessian", "eigenvalues": "hessian", "hutchpp_trace": "hessian",
    "hutchinson_trace": "hessian", "HessianPointEvaluator": "point_eigen",
    "curvature_operator": "operators", "GGNOperator": "ggn", "FisherOperator": "ggn",
    "EmpiricalFisherOperator": "ggn",
    "spectral_density": "density",
    "MeanLoss": "sharpness", "epsilon_sharpness": "sharpness", "adaptive_sharpness": "sharpness",
    "average_sharpness": "sharpness", "basin_1d": "sharpness", "width_1d": "sharpness",
    "stability_threshold": "edge", "threshold_of": "edge", "Threshold": "edge", "top_eigenvalue": "edge",
    "adam_preconditioner": "edge",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
