"""The GPU check, one command for any session that has a CUDA GPU: `make gpu-check` (or python benchmarks/gpu.py).

  (a) the test suite's GPU-marked tests (tests/test_gpu.py): every CLI once on CUDA, fp32 against the CPU, bf16
      against fp32, K vmapped points against K single points, NCCL with one rank, the trainer in bf16 with resume;
  (b) ResNet-56 with --samples CIFAR-shaped images resident on the GPU: points/s of the surface engine in fp32 and
      bf16, torch.compile off and on, against plain batched inference of the same model on the same samples (the
      ceiling: model(x) per batch, nothing else), side by side in this run; and images/s;
  (c) an MNIST-1D-shaped MLP (40 inputs, 4,000 samples, 10 classes; generated, so mnist1d need not be installed)
      on the paper's 51x51 grid with --points-per-pass 1, 8, 32, 128 against the same kind of ceiling;
  (d) the paper's job (ResNet-56, 51x51 points, all 50,000 CIFAR-10 training images) projected from (b), against
      the ~5.5 s per point that users of the paper's code report.
Without CUDA it says so in one line and exits 0. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

try:
    import torch
except ImportError:  # a bare python3 with no torch has no CUDA to check either
    print("gpu-check: torch is not installed for this python; nothing to check (make test creates .venv with it)")
    raise SystemExit(0) from None

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

PAPER_POINTS, PAPER_SAMPLES, PAPER_SECONDS_PER_POINT = 51 * 51, 50_000, 5.5


def run_tests() -> bool:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"]
    return subprocess.run(cmd, cwd=root).returncode == 0


def synthetic_model(name: str, samples: int, input_shape: list[int], kwargs: dict, device: torch.device):
    """A random-weights model and (x, y) on the device; the engine's timing does not depend on trained weights."""
    from landscape.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=input_shape, **kwargs).to(device).eval()
    x = torch.randn(samples, *input_shape, device=device)
    y = torch.randint(0, 10, (samples,), device=device)
    return model, x, y


def evaluator_for(model, x, y, batch: int, precision: str, compile: bool = False, points_per_pass: int = 1):
    """The evaluator of the job the commands would build for this model and data (the one builder decides the
    memory format), over two random filter-normalized directions."""
    from landscape.api import random_directions
    from landscape.core.grid_eval import EvalSet
    from landscape.pipelines.grid_job import evaluator_of, grid_job
    from landscape.runtime.sources import as_source

    sets = [EvalSet("train", as_source((x, y), x.device, batch, channels_last=True))]
    job = grid_job(model, random_directions(model, 2), sets, "-1:1:2", evaluation={}, precision=precision,
                   compile=compile, points_per_pass=points_per_pass)
    return evaluator_of(job)


def engine_points_per_s(ev, n: int, folder: str) -> float:
    """The whole sweep as run_surface does it: a new HDF5 file, every point computed, flushed."""
    from landscape.base.grid import grid_points, parse_range
    from landscape.core.grid_eval import compute_surface
    from landscape.core.surface_file import Origin, open_surface
    from landscape.runtime.distributed import DistInfo

    axis = parse_range(f"-1:1:{n}")
    points = grid_points(axis, axis)
    ev.evaluate(points[:ev.points_per_pass])  # warm-up (and compilation)
    torch.cuda.synchronize()
    path = os.path.join(folder, "bench.h5")
    if os.path.exists(path):
        os.remove(path)
    info = DistInfo(0, 0, 1, ev.sets[0].source.device)
    t0 = time.perf_counter()
    sink = open_surface(path, axis, axis, ev.metric_names, [{}, {}], origin=Origin(), evaluation={"bench": 1},
                        config={})
    compute_surface(ev, points, sink, info, progress=False)
    sink.close()
    return len(points) / (time.perf_counter() - t0)


def ceiling_points_per_s(ev, passes: int) -> float:
    """model(x) over the same samples, batches, precision and memory format, `passes` times: nothing else."""
    from landscape.runtime.forward import autocast_context

    net, x, batch = ev.forward, ev.sets[0].source.x, ev.sets[0].source.batch_size
    with torch.inference_mode(), autocast_context(x.device, ev.precision):
        for s in range(0, len(x), batch):  # warm-up
            net(x[s:s + batch])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(passes):
            for s in range(0, len(x), batch):
                net(x[s:s + batch])
        torch.cuda.synchronize()
    return passes / (time.perf_counter() - t0)


def resnet56(args, device, folder) -> tuple[list[dict], float]:
    model, x, y = synthetic_model("resnet56", args.samples, [3, 32, 32], {}, device)
    rows = []
    for precision in ("fp32", "bf16"):
        for compile in (False, True):
            ev = evaluator_for(model, x, y, args.batch, precision, compile=compile)
            t0 = time.perf_counter()
            engine = engine_points_per_s(ev, args.grid, folder)
            ceiling = ceiling_points_per_s(ev, args.grid * args.grid)
            rows.append({"precision": precision, "compile": compile, "engine_points_per_s": engine,
                         "ceiling_points_per_s": ceiling, "ratio_to_ceiling": engine / ceiling,
                         "images_per_s": engine * args.samples, "seconds": time.perf_counter() - t0})
            print(f"  resnet56 {precision} compile={str(compile):5}  engine {engine:7.2f} pt/s "
                  f"({engine * args.samples:9.0f} img/s)  ceiling {ceiling:7.2f} pt/s  engine/ceiling "
                  f"{engine / ceiling:.3f}", flush=True)
            del ev
    best = max(r["images_per_s"] for r in rows if r["precision"] == "bf16")
    return rows, best


def mlp(args, device, folder) -> list[dict]:
    model, x, y = synthetic_model("mlp", 4000, [40], {"hidden": [100, 100]}, device)
    rows = []
    for k in (1, 8, 32, 128):
        ev = evaluator_for(model, x, y, 4000, "fp32", points_per_pass=k)
        engine = engine_points_per_s(ev, 51, folder)
        ceiling = ceiling_points_per_s(ev, 51 * 51) if k == 1 else rows[0]["ceiling_points_per_s"]
        rows.append({"points_per_pass": k, "engine_points_per_s": engine, "ceiling_points_per_s": ceiling,
                     "ratio_to_ceiling": engine / ceiling, "speedup_vs_1": engine / (rows[0]["engine_points_per_s"]
                                                                                     if rows else engine)})
        print(f"  mlp points/pass {k:4d}  engine {engine:8.1f} pt/s  ceiling (1 point/pass) {ceiling:8.1f} pt/s  "
              f"engine/ceiling {engine / ceiling:6.2f}  vs 1 point/pass {rows[-1]['speedup_vs_1']:5.2f}x", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=10_000, help="CIFAR-shaped images resident on the GPU (b)")
    p.add_argument("--batch", type=int, default=5000, help="evaluation batch for ResNet-56")
    p.add_argument("--grid", type=int, default=5, help="points per axis of the ResNet-56 grid (b)")
    p.add_argument("--skip-tests", action="store_true", help="only the measurements (b)-(d)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device on this machine; nothing to check (the GPU tests skip themselves)")
        return
    device = torch.device("cuda", 0)
    print(f"gpu-check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    tests_ok = True if args.skip_tests else run_tests()
    with tempfile.TemporaryDirectory() as folder:
        print(f"(b) ResNet-56, {args.samples} CIFAR-shaped images on the GPU, batch {args.batch}, "
              f"{args.grid}x{args.grid} grid", flush=True)
        resnet_rows, best_img_s = resnet56(args, device, folder)
        print("(c) MNIST-1D-shaped MLP (40-100-100-10), 4000 samples, 51x51 grid, fp32", flush=True)
        mlp_rows = mlp(args, device, folder)
    seconds = PAPER_POINTS * PAPER_SAMPLES / best_img_s
    print(f"(d) the paper's job (ResNet-56, 51x51, 50,000 images), bf16 at {best_img_s:.0f} img/s: "
          f"{seconds / 60:.1f} min, {seconds / PAPER_POINTS:.3f} s per point, "
          f"{PAPER_SECONDS_PER_POINT * PAPER_POINTS / seconds:.0f}x the paper's code (~{PAPER_SECONDS_PER_POINT} s "
          "per point)", flush=True)
    bf16 = max((r for r in resnet_rows if r["precision"] == "bf16"), key=lambda r: r["engine_points_per_s"])
    summary = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "tests_passed": tests_ok,
               "resnet56": resnet_rows, "mlp": mlp_rows,
               "resnet56_best_bf16_ratio_to_ceiling": round(bf16["ratio_to_ceiling"], 3),
               "mlp_best_speedup_vs_1": round(max(r["speedup_vs_1"] for r in mlp_rows), 2),
               "paper_job_minutes_bf16": round(seconds / 60, 2)}
    print(json.dumps(summary))
    if not tests_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
