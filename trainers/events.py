"""TensorBoard event files of a run (--tensorboard): OUT/tensorboard/, written by rank 0 at the end of each epoch,
before its checkpoint, at the optimizer step the values belong to. A resumed run reopens the stream with
`purge_step` just past its checkpoint's step, so TensorBoard hides anything a killed run wrote past it, and the
epochs it redoes appear once."""

from __future__ import annotations

import os
from typing import Any

from landscape.base.errors import ConfigError

EPOCH_SCALARS = ("train_loss_running", "train_loss", "train_acc", "test_loss", "test_acc", "train_ppl", "test_ppl",
                 "lr", "images_per_second", "tokens_per_second", "global_batch_size", "noise_b_simple")
STEP_SCALARS = {"sharpness": ("lambda_max", "threshold"), "noise": ("b_simple", "g2", "trace_sigma")}


class EventLog:
    """A SummaryWriter for one run; `write(epoch_record, step_records)` once per epoch."""

    def __init__(self, out: str, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package (pip install tensorboard, or pip install "
                              "-e '.[tensorboard]' in the clone)") from None
        # the checkpoint's own step was written; anything later belongs to the epochs about to be redone
        purge = resume_step + 1 if resume_step else None
        self.writer = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=purge)

    def write(self, record: dict[str, Any], measured: list[dict[str, Any]]) -> None:
        for r in measured:
            for key in STEP_SCALARS.get(r.get("kind"), ()):
                if r.get(key) is not None:
                    self.writer.add_scalar(f"{r['kind']}/{key}", r[key], r["step"])
        for key in EPOCH_SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
