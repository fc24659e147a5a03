"""trainers: data-parallel training that writes self-describing checkpoints (ddp, train, sweep, noise_scale).

It sits on the lower layers of `landscape` (runtime, models, data, checkpoints) and is never imported by them."""

import warnings


def _moved(old: str, new: str) -> None:
    """The warning of a module alias kept for one release after its module moved."""
    warnings.warn(f"{old} moved to {new}: import it from there (this alias is removed in the next release)",
                  FutureWarning, stacklevel=3)
