"""How `landscape.connect` trains and evaluates the curve between two minima: `CurveConfig`, and the curve types,
optimizers and schedules it takes (the trainer and landscape.optim take the same optimizers and schedules)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from landscape.base.config import check_choice
from landscape.base.errors import ConfigError
from landscape.base.flags import option

CURVE_TYPES = ("bezier", "polychain", "none")  # none: the straight lines only (and aligned with --align)
# the optimizers and schedules of every command that trains (landscape.optim.builders builds them)
OPTIMIZERS = ("sgd", "adam", "adamw", "lars", "lamb")  # lars, lamb: timm's (You et al. 2017, 2019)
SCHEDULES = ("constant", "step", "cosine")
CURVE_MILESTONES = (0.5, 0.75)  # --schedule step of a curve: lr x 0.1 at half and at three quarters of the epochs
CURVE_BATCH = 128  # --train-batch-size of a curve trained on tensors (a checkpoint's data)


@dataclass(frozen=True, kw_only=True)
class CurveConfig:
    """How `landscape.connect` trains and evaluates the curve between two checkpoints (landscape.connectivity);
    the checkpoints, data, evaluation and alignment come from a SurfaceConfig's flags."""

    curve: str = option("bezier", "the path trained between A and B: a quadratic Bezier curve (its control point "
                        "free) or a polygonal chain (its middle bend free); none: only the straight line (and the "
                        "aligned one)", choices=CURVE_TYPES, group="curve")
    points: int = option(21, "values of t in [0, 1] at which every path is evaluated", metavar="N", group="curve")
    epochs: int = option(20, "passes over the training data while training the curve", metavar="N", group="curve")
    train_batch_size: int | None = option(None, f"global batch of the curve's training (default: {CURVE_BATCH}); "
                                          "with --data, your loader's batches are the curve's, so the flag is "
                                          "refused there", metavar="N", group="curve")
    optimizer: str = option("sgd", "optimizer of the bend's weights (Garipov et al.: SGD; lars and lamb need timm)",
                            choices=OPTIMIZERS, group="curve")
    lr: float = option(0.05, "peak learning rate", group="curve")
    momentum: float = option(0.9, "SGD momentum", group="curve")
    weight_decay: float = option(0.0, "L2 weight decay on the bend's weights", group="curve")
    schedule: str = option("cosine", "learning rate over the steps (step: x0.1 at half and at three quarters of "
                           "the epochs)", choices=SCHEDULES, group="curve")
    seed: int = option(0, "seed of the t drawn at each step, the data order and the alignment's sweep order",
                       group="curve")
    save_seconds: float = option(30.0, "about how often the training state is saved (and at each epoch's end)",
                                 metavar="S", group="curve")

    def __post_init__(self) -> None:
        check_choice(self.curve, CURVE_TYPES, "--curve")
        check_choice(self.optimizer, OPTIMIZERS, "--optimizer")
        check_choice(self.schedule, SCHEDULES, "--schedule")
        for value, flag, low in [(self.points, "--points", 2), (self.epochs, "--epochs", 1),
                                 (self.train_batch_size or 1, "--train-batch-size", 1)]:
            if value < low:
                raise ConfigError(f"{flag} must be >= {low}, got {value}")
        for value, flag in [(self.lr, "--lr"), (self.momentum, "--momentum"), (self.weight_decay, "--weight-decay"),
                            (self.save_seconds, "--save-seconds")]:
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{flag} must be a number >= 0, got {value}")

    def training_record(self) -> dict[str, Any]:
        """What decides the trained bend besides the endpoints and the data: a resume must match it."""
        record = {k: getattr(self, k) for k in ("epochs", "train_batch_size", "optimizer", "lr", "momentum",
                                                 "weight_decay", "schedule", "seed")}
        return {**record, "train_batch_size": self.train_batch_size or CURVE_BATCH}  # as 0.8 recorded it
