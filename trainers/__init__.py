"""trainers: data-parallel training that writes self-describing checkpoints: `config` (TrainConfig, the batch plan),
`loop` (epochs, evaluation, fit), `checkpoints` (a run's files and resume), the `train` and `sweep` commands, and
the gradient noise scale (`noise_scale`).

It sits on the lower layers of `landscape` (runtime, models, data, training) and is never imported by them."""
