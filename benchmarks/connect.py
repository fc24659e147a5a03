"""What a curve costs: one step of curve training (theta(t) = c_A A + c_C C + c_B B, then the network at theta(t),
gradients to the bend only) against one plain optimizer step of the same network on the same batch, measured
side by side; and the time of weight matching.

  python benchmarks/connect.py                  # the quick preset's MLP (batch 128) and torchvision's ResNet-18
  python benchmarks/connect.py --rounds 9       # (CIFAR-shaped, batch 64)

Each round times both steps once, in turn (K steps each, after a warm-up), so both meet the same machine load; the
ratio is the median over rounds of curve seconds / plain seconds in the same round. Prints a table, then one JSON
line.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from landscape.connectivity.alignment import align_models
from landscape.connectivity.curves import CurveModule, midpoint
from landscape.core.params import snapshot
from landscape.models.registry import build_model
from landscape.optim.builders import make_optimizer
from landscape.optim.step import token_cross_entropy, train_step
from landscape.runtime.distributed import DistInfo

SINGLE = DistInfo(0, 0, 1, torch.device("cpu"))


def stepper(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], curve: bool) -> Callable[[], None]:
    """One optimizer step of `module` (a network, or a CurveModule at a fresh t each step) on `batch`."""
    opt = make_optimizer(module, "sgd", 0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    gen = torch.Generator().manual_seed(0)
    x, y = batch

    def step() -> None:
        if curve:
            module.set_t(float(torch.rand((), generator=gen)))
            train_step(module, opt, sched, [((x, y), (x, y))], accumulation_steps=1, precision="fp32", info=SINGLE,
                       losses=[], loss_fn=lambda out, b: token_cross_entropy(out, b[1]))
        else:
            train_step(module, opt, sched, [(x, y)], accumulation_steps=1, precision="fp32", info=SINGLE, losses=[])

    return step


def seconds_per_step(step: Callable[[], None], k: int) -> float:
    started = time.perf_counter()
    for _ in range(k):
        step()
    return (time.perf_counter() - started) / k


def compare(name: str, make: Callable[[], nn.Module], batch: tuple[torch.Tensor, torch.Tensor], rounds: int,
            k: int) -> dict[str, float]:
    torch.manual_seed(0)
    a, b = make(), make()
    started = time.perf_counter()
    _, found = align_models(a, b)
    align_seconds = time.perf_counter() - started
    ta, tb = snapshot(dict(a.named_parameters())), snapshot(dict(b.named_parameters()))
    plain = stepper(copy.deepcopy(a).train(), batch, curve=False)
    curve_module = CurveModule(copy.deepcopy(a), "bezier", ta, tb, midpoint(ta, tb)).train()
    curved = stepper(curve_module, batch, curve=True)
    plain(), curved()  # warm-up
    ratios, plain_s = [], []
    for r in range(rounds):
        order = [("plain", plain), ("curve", curved)][:: 1 if r % 2 == 0 else -1]
        times = {label: seconds_per_step(fn, k) for label, fn in order}
        ratios.append(times["curve"] / times["plain"])
        plain_s.append(times["plain"])
    return {"model": name, "plain_ms": 1e3 * statistics.median(plain_s), "curve_over_plain": statistics.median(ratios),
            "align_s": align_seconds, "units": found.units}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    cases = [("mlp 40-100-100-10, batch 128", lambda: build_model("mlp"),
              (torch.randn(128, 40, generator=g), torch.randint(0, 10, (128,), generator=g)), 50),
             ("torchvision resnet18, 3x32x32, batch 64", lambda: torchvision.models.resnet18(num_classes=10),
              (torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)), 3)]
    rows = [compare(name, make, batch, args.rounds, k) for name, make, batch, k in cases]
    print(f"{'model':<42} {'plain step':>11} {'curve step':>11} {'align':>8} {'units':>6}")
    for r in rows:
        print(f"{r['model']:<42} {r['plain_ms']:>9.2f}ms {r['curve_over_plain']:>10.2f}x {r['align_s']:>7.2f}s "
              f"{r['units']:>6}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "max_rss_mb": round(peak), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
