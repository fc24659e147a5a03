"""The training step, shared by every command that trains (trainers.train today, curve training next): optimizer
and schedule construction, the batch plan, DDP wrapping and gradient accumulation. Imports the runtime and the
foundation only, so landscape's own commands may use it without importing trainers."""

from landscape.base.lazy import lazy_exports

_API = {"OPTIMIZERS": "optim", "SCHEDULES": "optim", "BatchPlan": "optim", "make_plan": "optim",
        "Schedule": "optim", "make_optimizer": "optim", "make_scheduler": "optim",
        "wrap_model": "step", "train_step": "step", "token_cross_entropy": "step"}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
