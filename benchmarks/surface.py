"""Surface-engine benchmark: our engine against the ceiling (plain batched inference), and 2 processes against 1.

  python benchmarks/surface.py                 # both models, prints ratios and a final JSON line
  python benchmarks/surface.py --models mlp    # one model

For each model, on one checkpoint, one set of samples and one 2D grid, measured side by side in this run:
  (a) engine:  landscape's grid evaluation (in-place point update, loss+accuracy sums, HDF5 flushes)
  (b) ceiling: model(x) over the same samples and batches, as many times as there are grid points, nothing else
  (c) engine on 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads: the same total threads
(a) and (b) alternate in the same process with the same threads, batch and memory format, best of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

MODELS = {  # name: (dataset, dataset kwargs, model, model kwargs, eval batch, grid points per axis)
    "resnet20": ("synthetic", {"n_train": 512, "n_test": 16, "num_classes": 10, "input_shape": [3, 32, 32]},
                 "resnet20", {}, 256, 5),
    "mlp": ("mnist1d", {}, "mlp", {"hidden": [100, 100]}, 1000, 51),  # the paper's 51x51 grid
}


def make_checkpoint(name: str, folder: str) -> str:
    from trainers.checkpoint import make_checkpoint as make
    from trainers.checkpoint import save_checkpoint
    from trainers.data import load_dataset
    from trainers.models import build_model

    dataset, dkw, model_name, mkw, _, _ = MODELS[name]
    data = load_dataset(dataset, **dkw)
    torch.manual_seed(0)
    kwargs = {"num_classes": data.num_classes, "input_shape": list(data.input_shape), **mkw}
    path = os.path.join(folder, f"{name}.pt")
    save_checkpoint(make(build_model(model_name, **kwargs), model_name, kwargs, dataset, dkw), path)
    return path


def worker(args: argparse.Namespace) -> None:
    """Times the engine (and, in one process, the ceiling) on the grid; rank 0 prints one JSON line."""
    from landscape.distributed import cleanup_distributed, init_distributed
    from landscape.io import SurfaceWriter, create_surface, metric_names
    from landscape.runner import SurfaceConfig, load_eval_sets, make_directions, surface_path
    from landscape.surface import PointEvaluator, compute_surface, grid_points, parse_range
    from trainers.checkpoint import load_model

    torch.set_num_threads(args.threads)
    info = init_distributed("cpu")
    _, _, _, _, batch, n = MODELS[args.model]
    spec = f"-1:1:{n}"
    cfg = SurfaceConfig(args.ckpt, out=args.tmp, x=spec, y=spec, splits=("train",), batch_size=batch,
                        progress=False, name=f"bench_{args.model}_{info.world_size}_{args.threads}")
    model, ckpt = load_model(args.ckpt)
    sets = load_eval_sets(ckpt, cfg, info.device)
    theta0, dirs = make_directions(model, cfg)
    x = parse_range(spec)
    points = grid_points(x, x)
    channels_last = sets[0].x.ndim == 4
    ev = PointEvaluator(model, theta0, dirs, sets, batch_size=batch, channels_last=channels_last)
    ev((0.0, 0.0))  # warm-up

    def engine() -> float:
        path = surface_path(cfg)
        if info.is_main and os.path.exists(path):
            os.remove(path)

        def open_writer() -> SurfaceWriter:
            create_surface(path, x, x, metric_names(cfg.splits), dirs, {"bench": 1}, {})
            return SurfaceWriter(path, {"bench": 1}, metric_names(cfg.splits))

        t0 = time.perf_counter()
        compute_surface(ev, points, 2, open_writer, info, progress=False)
        return time.perf_counter() - t0

    def ceiling() -> float:
        net = ev.model  # the same module, memory format and data
        xs = sets[0].x
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(len(points)):
                for s in range(0, len(xs), batch):
                    net(xs[s:s + batch])
        return time.perf_counter() - t0

    best = {"engine": float("inf"), "ceiling": float("inf")}
    for _ in range(args.repeats):
        best["engine"] = min(best["engine"], engine())
        if not info.is_distributed:
            best["ceiling"] = min(best["ceiling"], ceiling())
    if info.is_main:
        out = {"engine_points_per_s": len(points) / best["engine"], "points": len(points),
               "samples_per_point": len(sets[0].x), "batch_size": batch}
        if not info.is_distributed:
            out["ceiling_points_per_s"] = len(points) / best["ceiling"]
        print("RESULT " + json.dumps(out), flush=True)
    cleanup_distributed()


def launch(model: str, ckpt: str, tmp: str, procs: int, threads: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [os.path.abspath(__file__), "--worker", "--model", model, "--ckpt", ckpt, "--tmp", tmp,
            "--threads", str(threads), "--repeats", str(repeats)]
    cmd = [sys.executable, *args] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise SystemExit(f"benchmark worker failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    cores = os.cpu_count() or 2
    summary: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ckpt = make_checkpoint(name, tmp)
            one = launch(name, ckpt, tmp, 1, cores, args.repeats)
            two = launch(name, ckpt, tmp, 2, max(1, cores // 2), args.repeats)
            row = {"engine_points_per_s": one["engine_points_per_s"],
                   "ceiling_points_per_s": one["ceiling_points_per_s"],
                   "ratio_to_ceiling": one["engine_points_per_s"] / one["ceiling_points_per_s"],
                   "two_process_points_per_s": two["engine_points_per_s"],
                   "two_process_speedup": two["engine_points_per_s"] / one["engine_points_per_s"],
                   "grid_points": one["points"], "samples_per_point": one["samples_per_point"],
                   "batch_size": one["batch_size"]}
            summary[name] = row
            print(f"{name:>9}: engine {row['engine_points_per_s']:8.2f} pt/s  "
                  f"ceiling {row['ceiling_points_per_s']:8.2f} pt/s  ratio {row['ratio_to_ceiling']:.3f}  |  "
                  f"2 procs x {max(1, cores // 2)} thread "
                  f"{row['two_process_points_per_s']:8.2f} pt/s vs 1 proc x {cores} threads: speedup "
                  f"{row['two_process_speedup']:.2f}  ({row['grid_points']} points x {row['samples_per_point']} "
                  f"samples, batch {row['batch_size']})", flush=True)
    worst = {k: float(np.min([r[k] for r in summary.values()])) for k in ("ratio_to_ceiling", "two_process_speedup")}
    print(json.dumps({"engine_points_per_s": {k: round(r["engine_points_per_s"], 3) for k, r in summary.items()},
                      "ceiling_points_per_s": {k: round(r["ceiling_points_per_s"], 3) for k, r in summary.items()},
                      "ratio_to_ceiling": round(worst["ratio_to_ceiling"], 3),
                      "two_process_speedup": round(worst["two_process_speedup"], 3),
                      "per_model": summary, "cores": cores, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
