"""Surface-engine benchmark: our engine against the ceiling (plain batched inference), and 2 processes against 1.

  python benchmarks/surface.py                 # both models, prints ratios and a final JSON line
  python benchmarks/surface.py --models mlp    # one model

For each model, on one checkpoint, one set of samples and one 2D grid, measured side by side in this run:
  (a) engine:  landscape's grid evaluation (in-place point update, loss+accuracy sums, HDF5 flushes)
  (b) ceiling: model(x) over the same samples and batches, as many times as there are grid points, nothing else
  (c) engine on 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads: the same total threads
  (d) the engine with several points per forward pass (--points-per-pass, torch.func.vmap), against (b)
  (e) what the hardware allows (c) to reach: the ceiling loop itself on 2 processes x 1 thread (each doing
      half of the passes, started together) against 1 process x 2 threads
  (f) streamed sources (ResNet-20, 3x3 grid): the engine over a DataLoader of in-memory tensors and over a folder
      of PNG files read by 2 worker processes, interleaved point by point with a plain `for x, y in loader:
      model(x)` loop over the same loader; and the peak RSS of a fresh process computing a streamed surface over
      512 and over 2048 generated images (the data set's size must not show)
(a) and (b) alternate in the same process with the same threads, batch and memory format, best of --repeats;
then, because a shared machine's load drifts within seconds, (a) and (b) once more interleaved point by point
(engine point, ceiling pass, ...), which gives the load-robust ratio. (d) is timed once. The 1-process and
2-process runs alternate --rounds times, best of each.
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

MODELS = {  # name: (dataset, dataset kwargs, model, model kwargs, eval batch, grid points per axis, points/pass)
    "resnet20": ("synthetic", {"n_train": 512, "n_test": 16, "num_classes": 10, "input_shape": [3, 32, 32]},
                 "resnet20", {}, 256, 5, 5),
    "mlp": ("mnist1d", {}, "mlp", {"hidden": [100, 100]}, 1000, 51, 8),  # the paper's 51x51 grid
    # 0.11M-parameter Transformer, 255 windows x 64 characters of the grammar corpus (16k tokens) per point
    "transformer": ("grammar", {"train_tokens": 1 << 14, "val_tokens": 1 << 12}, "transformer_tiny", {}, 128, 5, 4),
}


def make_checkpoint(name: str, folder: str) -> str:
    from landscape.checkpoint import make_checkpoint as make
    from landscape.checkpoint import save_checkpoint
    from landscape.data import load_dataset
    from landscape.models import build_model

    dataset, dkw, model_name, mkw, *_ = MODELS[name]
    data = load_dataset(dataset, **dkw)
    torch.manual_seed(0)
    kwargs = {"num_classes": data.num_classes, "input_shape": list(data.input_shape), **mkw}
    path = os.path.join(folder, f"{name}.pt")
    save_checkpoint(make(build_model(model_name, **kwargs), model_name, kwargs, dataset, dkw), path)
    return path


def worker(args: argparse.Namespace) -> None:
    """Times the engine, the ceiling and the vmapped engine on the grid; rank 0 prints one JSON line.

    Under torchrun the ceiling loop runs on every rank, each doing its share of the passes between barriers."""
    import torch.distributed as dist

    from landscape.checkpoint import load_model
    from landscape.config import SurfaceConfig
    from landscape.distributed import cleanup_distributed, init_distributed
    from landscape.engine import PointEvaluator, compute_surface
    from landscape.grid import grid_points, parse_range
    from landscape.io import Origin, open_surface
    from landscape.params import to_numpy
    from landscape.runner import load_sets, make_directions

    torch.set_num_threads(args.threads)
    info = init_distributed("cpu")
    _, _, _, _, batch, n, per_pass = MODELS[args.model]
    spec = f"-1:1:{n}"
    cfg = SurfaceConfig(args.ckpt, out=args.tmp, x=spec, y=spec, splits=("train",), eval_batch_size=batch,
                        progress=False, name=f"bench_{args.model}_{info.world_size}_{args.threads}")
    model, ckpt = load_model(args.ckpt)
    sets, _, _ = load_sets(cfg, ckpt, info.device, batch)
    theta0, dirs, _ = make_directions(model, cfg, sets[0].source, info)
    x = parse_range(spec)
    points = grid_points(x, x)
    channels_last = sets[0].source.x.ndim == 4
    evaluators = {"engine": PointEvaluator(model, theta0, dirs, sets, channels_last=channels_last)}
    if not info.is_distributed:
        evaluators["vmap"] = PointEvaluator(model, theta0, dirs, sets, channels_last=channels_last,
                                            points_per_pass=per_pass)
    for ev in evaluators.values():  # warm-up
        ev.evaluate(points[:ev.points_per_pass])
    dirs_np = [to_numpy(d) for d in dirs]

    def engine(ev: PointEvaluator) -> float:
        """The whole sweep as run_surface does it: a new file opened on rank 0, every point computed, flushed."""
        path = cfg.path
        t0 = time.perf_counter()
        sink = None
        if info.is_main:
            if os.path.exists(path):
                os.remove(path)
            sink = open_surface(path, x, x, ev.metric_names, dirs_np, Origin(), {"bench": 1}, {})
        compute_surface(ev, points, sink, info, progress=False)
        if sink is not None:
            sink.close()
        return time.perf_counter() - t0

    def ceiling() -> float:
        net = evaluators["engine"].model  # the same module, memory format and data
        xs = sets[0].source.x
        passes = len(range(info.rank, len(points), info.world_size))
        if info.is_distributed:
            dist.barrier()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(passes):
                for s in range(0, len(xs), batch):
                    net(xs[s:s + batch])
        seconds = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if info.is_distributed:
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the slower rank decides, as in the engine
        return float(seconds)

    def paired() -> float:
        """Engine points and ceiling passes interleaved one by one, so both meet the same load: ceiling/engine."""
        ev, net, xs = evaluators["engine"], evaluators["engine"].model, sets[0].source.x
        spent = np.zeros(2)
        with torch.inference_mode():
            for p in points:
                t0 = time.perf_counter()
                ev(tuple(float(c) for c in p))
                t1 = time.perf_counter()
                for s in range(0, len(xs), batch):
                    net(xs[s:s + batch])
                spent += (t1 - t0, time.perf_counter() - t1)
        return float(spent[1] / spent[0])

    timers = {"engine": lambda: engine(evaluators["engine"]), "ceiling": ceiling}
    best = {k: float("inf") for k in timers}
    for _ in range(args.repeats):
        for k, timer in timers.items():
            best[k] = min(best[k], timer())
    if "vmap" in evaluators:  # informative only; timed once, it is slow on a CPU
        best["vmap"] = engine(evaluators["vmap"])
    out = {f"{k}_points_per_s": len(points) / t for k, t in best.items()}
    if not info.is_distributed:
        out["paired_ratio"] = paired()
    if info.is_main:
        print("RESULT " + json.dumps({**out, "points": len(points), "samples_per_point": len(sets[0].source.x),
                                      "batch_size": batch, "points_per_pass": per_pass}), flush=True)
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


def best_of(runs: list[dict]) -> dict:
    """Fastest of each timing over the rounds; the paired ratio (already noise-robust) as its median."""
    out = {k: max(r[k] for r in runs) if k.endswith("_per_s") else runs[0][k] for k in runs[0]}
    if "paired_ratio" in out:
        out["paired_ratio"] = float(np.median([r["paired_ratio"] for r in runs]))
    return out


class GeneratedImages(torch.utils.data.Dataset):
    """CIFAR-shaped samples made from their index on demand: the data set's size costs no memory of its own, so a
    surface's peak memory over it shows what the engine itself holds."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), i % 10


def _paired_loader_ratio(ev, loader, points) -> float:
    """Engine points and plain `for x, y in loader: model(x)` passes interleaved: plain seconds / engine seconds."""
    spent = np.zeros(2)
    for p in points:
        t0 = time.perf_counter()
        ev(tuple(float(c) for c in p))
        t1 = time.perf_counter()
        with torch.inference_mode():
            for xb, _ in loader:
                ev.model(xb)
        spent += (t1 - t0, time.perf_counter() - t1)
    return float(spent[1] / spent[0])


def streamed(tmp: str, threads: int) -> dict:
    """ResNet-20 over a DataLoader of in-memory tensors and over a folder of PNG files read by 2 worker processes,
    against the plain loop over the same loader; then peak memory of a streamed surface over 1x and 4x the data."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image

    from landscape.api import random_directions
    from landscape.engine import EvalSet, PointEvaluator
    from landscape.models import build_model
    from landscape.params import model_tensors, snapshot
    from landscape.sources import as_source

    torch.set_num_threads(threads)
    model = build_model("resnet20").eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    folder = os.path.join(tmp, "images")
    for i in range(256):
        os.makedirs(os.path.join(folder, str(i % 10)), exist_ok=True)
        to_pil_image((x[i].clamp(-2, 2) + 2) / 4).save(os.path.join(folder, str(i % 10), f"{i}.png"))
    loaders = {
        "in-memory DataLoader, 512 images": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=128),
        "PNG folder, 2 workers, 256 images": torch.utils.data.DataLoader(
            ImageFolder(folder, transform=lambda im: pil_to_tensor(im).float() / 255), batch_size=64, num_workers=2,
            persistent_workers=True)}
    theta0 = snapshot(model_tensors(model), device="cpu")
    dirs = random_directions(model, 2)
    points = grid_points_2d(3)
    out = {}
    for name, loader in loaders.items():
        ev = PointEvaluator(model, theta0, dirs, [EvalSet("train", as_source(loader, torch.device("cpu"), 128))])
        ev(points[0])  # warm-up, and the workers start
        out[name] = _paired_loader_ratio(ev, loader, points)
    rss = {n: memory_worker_rss(n, threads) for n in (512, 2048)}
    return {"ratio_to_plain_loop": out, "peak_rss_mb": rss, "rss_growth_4x": rss[2048] / rss[512] - 1}


def grid_points_2d(n: int) -> list[tuple[float, float]]:
    axis = np.linspace(-1, 1, n)
    return [(float(a), float(b)) for b in axis for a in axis]


def memory_worker_rss(n: int, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that computes a 3x3 streamed surface over GeneratedImages(n)."""
    code = (f"import resource, torch, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            "import surface as b; import landscape; from landscape.models import build_model; "
            f"torch.set_num_threads({threads}); m = build_model('resnet20'); "
            f"dl = torch.utils.data.DataLoader(b.GeneratedImages({n}), batch_size=128); "
            "landscape.surface(m, dl, landscape.random_directions(m, 2), x='-1:1:3', y='-1:1:3', progress=False); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if res.returncode:
        raise SystemExit(f"memory worker failed:\n{res.stderr[-2000:]}")
    return float(res.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--no-streamed", action="store_true", help="skip the streamed-source measurements")
    p.add_argument("--repeats", type=int, default=2, help="timings per variant within one process (best counts)")
    p.add_argument("--rounds", type=int, default=2, help="1-process and 2-process launches, alternated")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    cores = os.cpu_count() or 2
    half = max(1, cores // 2)
    summary: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ckpt = make_checkpoint(name, tmp)
            ones, twos = [], []
            for _ in range(args.rounds):
                ones.append(launch(name, ckpt, tmp, 1, cores, args.repeats))
                twos.append(launch(name, ckpt, tmp, 2, half, args.repeats))
            one, two = best_of(ones), best_of(twos)
            row = {"engine_points_per_s": one["engine_points_per_s"],
                   "ceiling_points_per_s": one["ceiling_points_per_s"],
                   "ratio_to_ceiling": one["engine_points_per_s"] / one["ceiling_points_per_s"],
                   "ratio_to_ceiling_paired": one["paired_ratio"],
                   "two_process_points_per_s": two["engine_points_per_s"],
                   "two_process_speedup": two["engine_points_per_s"] / one["engine_points_per_s"],
                   "two_process_ceiling_points_per_s": two["ceiling_points_per_s"],
                   "two_process_hardware_speedup": two["ceiling_points_per_s"] / one["ceiling_points_per_s"],
                   "vmap_points_per_s": one["vmap_points_per_s"],
                   "vmap_ratio_to_ceiling": one["vmap_points_per_s"] / one["ceiling_points_per_s"],
                   "points_per_pass": one["points_per_pass"], "grid_points": one["points"],
                   "samples_per_point": one["samples_per_point"], "batch_size": one["batch_size"]}
            summary[name] = row
            print(f"{name}: {row['grid_points']} points x {row['samples_per_point']} samples, batch "
                  f"{row['batch_size']}, best of {args.rounds} rounds x {args.repeats} repeats\n"
                  f"  (a) engine                 {row['engine_points_per_s']:9.2f} pt/s\n"
                  f"  (b) ceiling                {row['ceiling_points_per_s']:9.2f} pt/s   engine/ceiling "
                  f"{row['ratio_to_ceiling']:.3f} (interleaved point by point: "
                  f"{row['ratio_to_ceiling_paired']:.3f})\n"
                  f"  (c) engine, 2 procs x {half} thr {row['two_process_points_per_s']:9.2f} pt/s   vs 1 proc x "
                  f"{cores} thr: {row['two_process_speedup']:.2f}x\n"
                  f"  (d) engine, vmap {row['points_per_pass']} pt/pass {row['vmap_points_per_s']:9.2f} pt/s   "
                  f"vmap/ceiling {row['vmap_ratio_to_ceiling']:.3f}\n"
                  f"  (e) ceiling, 2 procs       {row['two_process_ceiling_points_per_s']:9.2f} pt/s   vs 1 proc: "
                  f"{row['two_process_hardware_speedup']:.2f}x (what (c) can reach here)", flush=True)
        stream = None if args.no_streamed else streamed(tmp, cores)
    if stream is not None:
        print("streamed sources, ResNet-20, 3x3 grid, interleaved point by point with a plain loop over the same "
              "loader:", flush=True)
        for name, ratio in stream["ratio_to_plain_loop"].items():
            print(f"  {name:36s} engine/plain loop {ratio:.3f}", flush=True)
        rss = stream["peak_rss_mb"]
        print(f"  peak RSS of a streamed surface: {rss[512]:.0f} MB over 512 images, {rss[2048]:.0f} MB over 2048 "
              f"({100 * stream['rss_growth_4x']:+.1f}%)", flush=True)
    worst = {k: float(np.min([r[k] for r in summary.values()]))
             for k in ("ratio_to_ceiling", "ratio_to_ceiling_paired", "two_process_speedup",
                       "two_process_hardware_speedup")}
    print(json.dumps({"engine_points_per_s": {k: round(r["engine_points_per_s"], 3) for k, r in summary.items()},
                      "ceiling_points_per_s": {k: round(r["ceiling_points_per_s"], 3) for k, r in summary.items()},
                      **{k: round(v, 3) for k, v in worst.items()},
                      "per_model": summary, "streamed": stream, "cores": cores, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
