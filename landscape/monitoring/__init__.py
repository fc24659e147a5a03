"""Monitoring while training, in any loop: `Monitor` (lambda_max against the optimizer's edge-of-stability threshold,
and the gradient noise scale B_simple) and the noise-scale estimator it and the trainer share."""

from landscape.base.lazy import lazy_exports

_API = {"Monitor": "monitor", "MEASURES": "monitor", "NoiseEstimate": "noise", "two_batch_estimate": "noise",
        "estimate_noise": "noise", "noise_of_batches": "noise", "b_simple_of": "noise"}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
