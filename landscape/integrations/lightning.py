"""`MonitorCallback` for Lightning: landscape.Monitor inside a `lightning.Trainer`, logged through `pl_module.log`
(so through whatever loggers the Trainer has: TensorBoard, CSV, W&B), its state kept in Lightning's checkpoints.

    trainer = lightning.Trainer(callbacks=[MonitorCallback((x_train, y_train), every=50)], logger=CSVLogger("logs"))

- The model is the LightningModule (its forward is what is differentiated), the optimizer the Trainer's first.
- One measurement per optimizer step that is due (trainer.global_step, so gradient accumulation counts optimizer
  steps, not batches), after the step.
- Mixed precision ("bf16-mixed", "16-mixed"): the measurement runs outside the training step's autocast, in fp32.
- DDP strategy: every rank measures its share (the Monitor splits tensors over ranks, and a loader is each rank's
  own) and the values are reduced over ranks, so every rank logs the same numbers (tested on 2 gloo processes).
- B_simple (`noise_source`): with accumulate_grad_batches > 1 in one process, from the step's own micro-batches
  when training_step calls the module itself (`self(x)`, whose calls are counted); otherwise, and under DDP, from
  the Monitor's own draws.
- `save_every=K` also writes the module's weights every K optimizer steps to `save_dir/step_NNNNNNN.pt` (a plain
  state dict, rank 0), which `plot2d FILE --model ... --data ...` reads.
Lightning is imported here only, when this module is.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from landscape.base.errors import ConfigError
from landscape.base.files import atomic_path
from landscape.monitoring.monitor import Monitor, check_arguments

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as exc:  # the package is optional: pip install lightning
    raise ImportError("landscape.integrations.lightning needs Lightning: pip install lightning (or pip install -e "
                      "'.[lightning]' in the clone)") from exc


__all__ = ["MonitorCallback"]


class MonitorCallback(Callback):
    """landscape.Monitor's arguments, except the model and the optimizer, which the Trainer gives."""

    def __init__(self, data: Any, every: int = 1000, *, save_every: int | None = None, save_dir: str | None = None,
                 prefix: str = "landscape/", **monitor_kwargs: Any):
        check_arguments(every, monitor_kwargs.get("measures", ("lambda_max", "noise")),
                        monitor_kwargs.get("samples", 512), monitor_kwargs.get("noise_batches", 8),
                        monitor_kwargs.get("noise_batch"), monitor_kwargs.get("tol", 1e-3))
        if save_every is not None and (save_every < 1 or not save_dir):
            raise ConfigError("save_every needs a positive number of steps and a save_dir to write the weights to")
        self.data, self.every, self.kwargs, self.prefix = data, every, monitor_kwargs, prefix
        self.save_every, self.save_dir = save_every, save_dir
        self.monitor: Monitor | None = None
        self._restored: dict[str, Any] | None = None
        self._last_step = -1

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.monitor.records if self.monitor is not None else []

    def on_init_end(self, *args: Any, **kwargs: Any) -> None:  # transformers' first calls: the wrong framework
        raise ConfigError("landscape.integrations.lightning.MonitorCallback is a Lightning callback; for transformers' "
                          "Trainer use landscape.integrations.huggingface.MonitorCallback")

    on_train_begin = on_init_end  # the first, for a callback added with Trainer.add_callback

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not isinstance(trainer, Trainer) or not isinstance(pl_module, LightningModule):
            raise ConfigError(f"landscape.integrations.lightning.MonitorCallback is a Lightning callback; it was given "
                              f"to {type(trainer).__name__} (for transformers' Trainer use "
                              "landscape.integrations.huggingface.MonitorCallback)")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.optimizers:
            raise ConfigError("MonitorCallback: the Trainer has no optimizer (configure_optimizers returned none)")
        self.monitor = Monitor(pl_module, self.data, trainer.optimizers[0], every=self.every, **self.kwargs)
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.monitor is None or step == self._last_step:  # an accumulation micro-batch: no optimizer step yet
            return
        self._last_step = step
        record = self.monitor.step(step)
        if record is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and \
                        value is not None:
                    pl_module.log(self.prefix + key, float(value), on_step=True, on_epoch=False)
        if self.save_every and step % self.save_every == 0 and trainer.is_global_zero:
            self._save_weights(pl_module, step)

    def _save_weights(self, pl_module: LightningModule, step: int) -> None:
        path = os.path.join(self.save_dir, f"step_{step:07d}.pt")
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict() if self.monitor is not None else (self._restored or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None
        if self.monitor is not None and self._restored:
            self.monitor.load_state_dict(self._restored)
