"""What landscape.Monitor costs a training run: one measurement (lambda_max on its subset, warm-started as in a run,
and B_simple) against the plain optimizer steps it is spread over, on torchvision's ResNet-18 with 3x32x32 inputs
(batch 128, SGD with momentum), measured side by side.

  python benchmarks/monitor.py                 # the Monitor's defaults (every 1000 steps, 512 samples)
  python benchmarks/monitor.py --every 200 --rounds 5

Each round times K plain steps and one measurement, in turn, so both meet the same machine load; the overhead at
an interval of `every` steps is the median over rounds of (measurement seconds + what the watched step before it costs
over a plain one: the hooks that read its gradients, and their copy) / (every x step seconds). Prints a line per
round, the result, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torchvision
from torch import nn

import landscape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=None, help="the interval (default: the Monitor's)")
    parser.add_argument("--samples", type=int, default=None, help="lambda_max's subset (default: the Monitor's)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="plain steps timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2048, 3, 32, 32, generator=g), torch.randint(0, 10, (2048,), generator=g)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    options = {k: v for k, v in (("every", args.every), ("samples", args.samples)) if v is not None}
    monitor = landscape.Monitor(model, (x, y), opt, **options)
    every = monitor.every

    def steps(k: int) -> float:
        started = time.perf_counter()
        for _ in range(k):
            idx = torch.randint(0, len(x), (args.batch,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - started) / k

    def measurement() -> tuple[float, float]:
        """A watched step (the one before a measurement) and the measurement: (their seconds, the step's)."""
        if monitor.watch is not None:
            monitor.watch.arm()
        started = time.perf_counter()
        steps(1)
        stepped = time.perf_counter()
        monitor.measure()
        return time.perf_counter() - started, stepped - started

    steps(2), measurement()  # warm-up: the first measurement starts Lanczos cold, later ones warm as in a run
    overheads, step_s, measure_s, watched_s = [], [], [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            s, (total, watched) = steps(args.steps), measurement()
        else:
            (total, watched), s = measurement(), steps(args.steps)
        m = total - s  # the measurement and the watched step's extra over a plain step
        step_s.append(s)
        measure_s.append(m)
        watched_s.append(watched)
        overheads.append(m / (every * s))
        print(f"round {r + 1}: step {1e3 * s:.1f} ms, measurement {m:.2f} s, overhead at every={every}: "
              f"{100 * overheads[-1]:.1f}%", flush=True)
    result = {"model": f"torchvision resnet18, 3x32x32, batch {args.batch}", "every": every,
              "samples": len(monitor.subset[0]), "step_ms": 1e3 * statistics.median(step_s),
              "measurement_s": statistics.median(measure_s), "watched_step_ms": 1e3 * statistics.median(watched_s),
              "overhead": statistics.median(overheads),
              "records": monitor.records[-1], "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                   / 1024), "threads": torch.get_num_threads()}
    print(f"monitor every {every} steps on {result['samples']} samples: {100 * result['overhead']:.1f}% of the "
          f"training time ({result['measurement_s']:.2f} s per measurement, {result['step_ms']:.1f} ms per step)")
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
