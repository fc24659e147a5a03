"""The training step, shared by every command that trains (trainers.train today, curve training next): optimizer
and schedule construction, the batch plan, learning-rate scaling, Ghost BatchNorm, DDP wrapping and gradient
accumulation. Imports the runtime and the foundation only, so landscape's own commands may use it without
importing trainers."""

from landscape.base.lazy import lazy_exports

_API = {
    "OPTIMIZERS": "optim", "SCHEDULES": "optim", "LR_SCALINGS": "optim", "BatchPlan": "optim", "make_plan": "optim",
    "Schedule": "optim", "make_optimizer": "optim", "make_scheduler": "optim", "scaled_lr": "optim",
    "BatchRamp": "optim", "make_ramp": "optim", "RampedSchedule": "optim", "GrowingBatch": "optim",
    "BatchSchedule": "optim", "make_batch_schedule": "optim",
    "GhostBatchNorm": "ghost_bn", "ghost_batchnorm": "ghost_bn",
    "sam_step": "sam", "ascent_step": "sam",
    "wrap_model": "step", "GradientObserver": "step", "train_step": "step", "token_cross_entropy": "step",
    "TrainingDiverged": "divergence", "DivergenceWatch": "divergence",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
