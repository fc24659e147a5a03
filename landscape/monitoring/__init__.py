"""Monitoring while training, in any loop: `Monitor` (lambda_max against the optimizer's edge-of-stability threshold,
and the gradient noise scale B_simple), the noise-scale estimator, and the reader of a step's own gradients
(`StepGradients`: a DDP communication hook, or each micro-batch's growth of .grad) it takes the noise scale from.
The trainer's --track-sharpness and --track-noise are Monitors."""

from landscape.base.lazy import lazy_exports

_API = {"Monitor": "monitor", "MEASURES": "monitor", "NoiseEstimate": "noise", "two_batch_estimate": "noise",
        "estimate_noise": "noise", "noise_of_batches": "noise", "b_simple_of": "noise",
        "estimate_b_noise": "noise", "HessianNoise": "noise",
        "StepGradients": "step_gradients"}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
