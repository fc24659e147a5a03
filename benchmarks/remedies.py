"""The cost of each large-batch remedy and of each tracker, against a plain optimizer step, measured side by side.

  python benchmarks/remedies.py                 # MNIST-1D MLP with BatchNorm at batch 1024 (the quick preset's)
  python benchmarks/remedies.py --rounds 9

One process, the same model, data and threads for every variant. Each round times every variant once, in turn
(K steps each, after a warm-up), so all meet the same machine load; a variant's cost is the median over rounds of
its seconds per step divided by the plain step's in the same round (the order rotates, so no variant always goes
first). A tracker's cost is per measurement, in plain
steps. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from landscape.curvature.edge import top_eigenvalue
from landscape.curvature.hessian import HessianOperator
from landscape.data.datasets import load_dataset
from landscape.models.registry import build_model
from landscape.monitoring.monitor import Monitor
from landscape.monitoring.noise import estimate_noise
from landscape.optim.builders import make_optimizer
from landscape.optim.ghost_bn import ghost_batchnorm
from landscape.optim.sam import sam_step
from landscape.optim.step import train_step
from landscape.runtime.distributed import DistInfo

SINGLE = DistInfo(0, 0, 1, torch.device("cpu"))


def model_and_data(batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape, hidden=[100, 100],
                        batchnorm=True)
    return model, data.x_train[:batch], data.y_train[:batch]


def stepper(variant: str, batch: int) -> Callable[[], None]:
    """One optimizer step of `variant` on a fixed batch (a fresh model and optimizer of its own)."""
    model, x, y = model_and_data(batch)
    optimizer = {"LARS": "lars", "LAMB": "lamb"}.get(variant, "sgd")
    opt = make_optimizer(model, optimizer, lr=0.05 if optimizer != "lars" else 5.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if variant == "ghost BN 64":
        ghost_batchnorm(model, 64)
    model.train()
    losses: list[torch.Tensor] = []
    if variant.startswith("SAM"):
        m = 64 if "m=64" in variant else None
        return lambda: sam_step(model, model, opt, sched, [(x, y)], precision="fp32", info=SINGLE, losses=losses,
                                rho=0.05, m=m)
    if variant.startswith("16 micro-batches of 64"):  # the batch ramp's full-size step, by accumulation
        pieces = list(zip(x.split(64), y.split(64)))
        if "noise" not in variant:
            return lambda: train_step(model, opt, sched, pieces, accumulation_steps=16, precision="fp32", info=SINGLE,
                                      losses=losses)
        # --track-noise 1: the Monitor watches every step's micro-batch gradients and measures after it
        monitor = Monitor(model, (x, y), None, every=1, measures=("noise",), noise_batch=64, step_batch=batch)

        def step_read() -> None:
            train_step(model, opt, sched, pieces, accumulation_steps=16, precision="fp32", info=SINGLE, losses=losses)
            monitor.step()

        return step_read
    return lambda: train_step(model, opt, sched, [(x, y)], accumulation_steps=1, precision="fp32", info=SINGLE,
                                  losses=losses)


def measurer(tracker: str, batch: int) -> Callable[[], None]:
    """One measurement of a tracker, at the model's weights."""
    model, x, y = model_and_data(batch)
    if tracker == "lambda_max (512 samples)":
        state = {"v": None}

        def measure() -> None:
            op = HessianOperator(model, (x[:512], y[:512]), "cross_entropy")
            _, state["v"] = top_eigenvalue(op, state["v"])

        return measure
    generator = torch.Generator().manual_seed(0)
    return lambda: estimate_noise(model.train(), x, y, 64, generator)


def timed(fn: Callable[[], None], k: int) -> float:
    start = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - start) / k


VARIANTS = ("plain SGD", "ghost BN 64", "SAM", "SAM m=64", "LARS", "LAMB", "16 micro-batches of 64",
            "16 micro-batches of 64, noise from them")
TRACKERS = ("lambda_max (512 samples)", "noise scale, own draws (8 x 64)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps timed per variant and round")
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    steps = {v: stepper(v, args.batch) for v in VARIANTS}
    measures = {t: measurer(t, args.batch) for t in TRACKERS}
    for fn in [*steps.values(), *measures.values()]:
        fn()  # warm-up
    ratios: dict[str, list[float]] = {k: [] for k in [*VARIANTS, *TRACKERS]}
    plain_seconds = []
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]  # each variant leads a round in turn
        seconds = {v: timed(steps[v], args.steps) for v in order}
        seconds.update({t: timed(measures[t], 3) for t in TRACKERS})
        plain_seconds.append(seconds["plain SGD"])
        for k in ratios:
            ratios[k].append(seconds[k] / seconds["plain SGD"])
    result = {k: statistics.median(r) for k, r in ratios.items()}
    print(f"plain SGD step at batch {args.batch}: {1e3 * statistics.median(plain_seconds):.2f} ms (median of "
          f"{args.rounds} rounds); torch {torch.__version__}, 2 threads")
    for k in VARIANTS[1:]:
        print(f"  {k:<40} {result[k]:6.2f} x a plain step")
    for k in TRACKERS:
        print(f"  {k:<40} {result[k]:6.1f} plain steps per measurement")
    print(json.dumps({"plain_ms": 1e3 * statistics.median(plain_seconds), "ratios": result}))


if __name__ == "__main__":
    main()
