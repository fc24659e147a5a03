"""The parts of an optimizer step, for any training loop (the trainer's, the curve training's, a user's): the
optimizer, schedule and batch plan builders, learning-rate scaling, SAM's step, Ghost BatchNorm, DDP wrapping with
gradient accumulation, and the divergence watch. `trainers/` is the program that trains with them; this package
imports the runtime and the foundation only, so landscape's own commands may use it without importing trainers."""

from landscape.base.lazy import lazy_exports

_API = {
    "OPTIMIZERS": "builders", "SCHEDULES": "builders", "LR_SCALINGS": "builders", "BatchPlan": "builders",
    "make_plan": "builders", "Schedule": "builders", "make_optimizer": "builders", "make_scheduler": "builders",
    "scaled_lr": "builders", "BatchRamp": "builders", "make_ramp": "builders", "RampedSchedule": "builders",
    "GrowingBatch": "builders", "BatchSchedule": "builders", "make_batch_schedule": "builders",
    "GhostBatchNorm": "ghost_bn", "ghost_batchnorm": "ghost_bn",
    "sam_step": "sam", "ascent_step": "sam",
    "wrap_model": "step", "GradientObserver": "step", "train_step": "step", "token_cross_entropy": "step",
    "TrainingDiverged": "divergence", "DivergenceWatch": "divergence",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
