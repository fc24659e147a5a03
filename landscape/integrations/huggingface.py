"""`MonitorCallback` for transformers' `Trainer`: landscape.Monitor after the Trainer's optimizer steps, logged into
the Trainer's own log, its state saved beside each checkpoint the Trainer writes.

    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)
    trainer.add_callback(MonitorCallback(batches, every=50, metric="causal_lm", trainer=trainer))

- The model and the optimizer are those the Trainer passes to its callbacks (the unwrapped model; accelerate's
  optimizer wrapper is unwrapped); `data` is what the Monitor takes, e.g. a list of tokenized dict batches, and
  `metric` one of landscape's (causal_lm for a causal language model, whose labels the metric shifts).
- Logging: given `trainer=`, every record goes through `trainer.log`, so `log_history`, the console and every
  integration of `report_to` (TensorBoard, W&B) get it; without it, the record is appended to
  `state.log_history` alone (what trainer_state.json keeps).
- One measurement per due optimizer step (`state.global_step`: gradient accumulation counts optimizer steps).
  Mixed precision (bf16, fp16): the measurement runs outside the Trainer's autocast, in fp32. DDP (accelerate): every
  rank measures, the values are reduced over ranks.
- B_simple (`noise_source`): with gradient_accumulation_steps > 1 in one process, from the step's own micro-batches
  (the Trainer calls the model itself, so their samples are counted); otherwise, and under DDP, from the Monitor's
  own draws.
- State: saved to `checkpoint-N/landscape_monitor.pt` when the Trainer saves checkpoint-N, and read back when
  training resumes from it, so a resumed run measures as an uninterrupted one.
- `save_every=K` also writes the model with `save_pretrained` every K steps to `save_dir/step_NNNNNNN/`, a folder
  plot2d reads as it is.
transformers is imported here only, when this module is.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from landscape.base.errors import ConfigError
from landscape.base.files import atomic_path
from landscape.monitoring.monitor import Monitor, check_arguments

try:
    from transformers import TrainerCallback
except ImportError as exc:  # the package is optional: pip install transformers accelerate
    raise ImportError("landscape.integrations.huggingface needs transformers: pip install transformers accelerate "
                      "(or pip install -e '.[hf]' in the clone)") from exc

STATE_FILE = "landscape_monitor.pt"


__all__ = ["MonitorCallback"]


class MonitorCallback(TrainerCallback):
    """landscape.Monitor's arguments, except the model and the optimizer, which the Trainer gives its callbacks."""

    def __init__(self, data: Any, every: int = 1000, *, trainer: Any = None, save_every: int | None = None,
                 save_dir: str | None = None, prefix: str = "landscape/", **monitor_kwargs: Any):
        check_arguments(every, monitor_kwargs.get("measures", ("lambda_max", "noise")),
                        monitor_kwargs.get("samples", 512), monitor_kwargs.get("noise_batches", 8),
                        monitor_kwargs.get("noise_batch"), monitor_kwargs.get("tol", 1e-3))
        if save_every is not None and (save_every < 1 or not save_dir):
            raise ConfigError("save_every needs a positive number of steps and a save_dir to write the weights to")
        self.data, self.every, self.kwargs, self.prefix, self.trainer = data, every, monitor_kwargs, prefix, trainer
        self.save_every, self.save_dir = save_every, save_dir
        self.monitor: Monitor | None = None

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.monitor.records if self.monitor is not None else []

    @property
    def state_key(self) -> str:  # what a Lightning Trainer reads first: this is the wrong framework
        raise ConfigError("landscape.integrations.huggingface.MonitorCallback is a transformers callback; for a "
                          "Lightning Trainer use landscape.integrations.lightning.MonitorCallback")

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.state_key  # noqa: B018 - raises: Lightning's hooks are not ours

    def on_exception(self, *args: Any, **kwargs: Any) -> None:  # Lightning's, while our refusal propagates
        pass

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if model is None or optimizer is None:
            raise ConfigError("MonitorCallback: the Trainer passed no model or optimizer to its callbacks")
        self.monitor = Monitor(model, self.data, optimizer, every=self.every, **self.kwargs)
        saved = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
        if state.global_step > 0 and os.path.exists(saved):  # resumed from that checkpoint
            self.monitor.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
        self.monitor.steps = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.monitor is None:
            return
        record = self.monitor.step(state.global_step)
        if record is not None:
            values = {self.prefix + k: float(v) for k, v in record.items()
                      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if self.trainer is not None:
                self.trainer.log(values)
            else:
                state.log_history.append({**values, "step": state.global_step})
        if self.save_every and state.global_step % self.save_every == 0 and state.is_world_process_zero:
            model.save_pretrained(os.path.join(self.save_dir, f"step_{state.global_step:07d}"))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None or not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            with atomic_path(os.path.join(folder, STATE_FILE)) as tmp:
                torch.save(self.monitor.state_dict(), tmp)
