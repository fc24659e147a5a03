"""Batch-size scaling (Shallue et al. 2018; McCandlish et al. 2018), measured on one model:
(a) training images/second against batch size, (b) steps to reach a target test accuracy with the linear
scaling rule and warmup (Goyal et al. 2017), log-log with the perfect-scaling line, and (c) the gradient noise
scale B_simple measured during training, marked on (b) as the predicted critical batch size.

  python -m figures.batch_scaling --preset quick --out scaling     # MNIST-1D MLP, minutes on 2 CPU cores

Single process. Each batch size's result is cached as JSON under OUT/runs/, so a rerun reuses finished sizes.
Writes scaling.{png,pdf} (all three panels), throughput/steps_to_target/noise_scale.{png,pdf},
summary.csv and noise_scale.csv.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.cli import ArgumentParser, DefaultsFormatter, check_writable, run_cli
from landscape.data import Dataset, load_dataset
from landscape.distributed import DistInfo, init_distributed
from landscape.errors import UserError
from landscape.evaluation import evaluate
from landscape.files import read_cached, write_cached, write_csv
from landscape.models import build_model
from trainers.ddp import TrainConfig, make_optimizer, make_plan, train_step
from trainers.noise_scale import estimate_noise


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    batch_sizes: tuple[int, ...]
    base_lr: float  # at base_batch_size; scaled linearly with the batch
    base_batch_size: int
    target_acc: float  # test accuracy (%) that counts as reached
    max_steps: int
    warmup_epochs: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    noise_batch: int = 64  # the run in which the noise scale is measured
    noise_every: int = 20  # steps between noise measurements
    noise_micro_batches: int = 32  # micro-batches per measurement: fewer gave estimates 3x apart run to run
    seed: int = 0


PRESETS = {
    "quick": Preset(dataset="mnist1d", model="mlp", batch_sizes=(16, 32, 64, 128, 256, 512, 1000, 2000),
                    base_lr=0.0125, base_batch_size=16, target_acc=55.0, max_steps=4000,
                    model_kwargs={"hidden": [100, 100]}),
    "smoke": Preset(dataset="synthetic", model="mlp", batch_sizes=(16, 64, 256), base_lr=0.01, base_batch_size=16,
                    target_acc=60.0, max_steps=300, model_kwargs={"hidden": [16]}, noise_batch=16, noise_every=5,
                    data_kwargs={"n_train": 512, "n_test": 256, "noise": 2.0}),
}


def run_batch_size(p: Preset, bs: int, data: Dataset, info: DistInfo, measure_noise: bool) -> dict[str, Any]:
    """Train at global batch `bs` until the target test accuracy (checked after every step) or max_steps."""
    cfg = TrainConfig(out="", dataset=p.dataset, model=p.model, model_kwargs=p.model_kwargs, batch_size=bs,
                      epochs=max(1, -(-p.max_steps * bs // len(data.x_train))), lr=p.base_lr, scale_lr=True,
                      base_batch_size=p.base_batch_size, warmup_epochs=p.warmup_epochs, seed=p.seed, progress=False)
    torch.manual_seed(p.seed)
    model = build_model(p.model, num_classes=data.num_classes, input_shape=data.input_shape, **p.model_kwargs)
    plan = make_plan(cfg, 1, len(data.x_train))
    opt, sched = make_optimizer(model, cfg, plan)
    gen = torch.Generator().manual_seed(p.seed)
    noise_gen = torch.Generator().manual_seed(p.seed + 1)
    step, train_seconds, reached, noise = 0, 0.0, None, []
    losses: list[torch.Tensor] = []  # train_step's per-micro-batch losses; not needed here
    while step < p.max_steps and reached is None:
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(plan.steps_per_epoch):
            model.train()
            t0 = time.perf_counter()
            train_step(model, opt, sched, data, order[i * bs:(i + 1) * bs], plan, gen, "fp32", info, losses)
            losses.clear()
            train_seconds += time.perf_counter() - t0
            step += 1
            if measure_noise and step % p.noise_every == 0:
                est = estimate_noise(model, data.x_train, data.y_train, min(bs, 64), noise_gen,
                                     p.noise_micro_batches)
                noise.append({"step": step, "g2": est.g2, "trace_sigma": est.trace_sigma, "b_simple": est.b_simple})
            model.eval()
            if evaluate(model, data.x_test, data.y_test, 4096).acc >= p.target_acc:
                reached = step
                break
            if step >= p.max_steps:
                break
    return {"batch_size": bs, "lr": cfg.lr * bs / p.base_batch_size, "steps_to_target": reached,
            "steps_run": step, "images_per_second": step * bs / train_seconds, "noise": noise}


def cached_run(p: Preset, bs: int, data: Dataset, info: DistInfo, out: str) -> dict[str, Any]:
    path = os.path.join(out, "runs", f"bs{bs}.json")
    key = {**asdict(p), "batch_size": bs}
    result = read_cached(path, key)
    if result is None:
        result = run_batch_size(p, bs, data, info, measure_noise=bs == p.noise_batch)
        write_cached(path, key, result)
    return result


def b_simple(noise: list[dict[str, float]]) -> float:
    """Ratio of the averaged tr(Sigma) and |G|^2 over the second half of the run (past the early transient)."""
    late = noise[len(noise) // 2:] or noise
    return float(np.mean([n["trace_sigma"] for n in late]) / np.mean([n["g2"] for n in late]))


def plot_all(results: list[dict[str, Any]], noise: list[dict[str, float]], critical: float, p: Preset,
             out: str) -> list[str]:
    from landscape import render

    plt = render.plt
    bs = np.array([r["batch_size"] for r in results], float)
    ips = np.array([r["images_per_second"] for r in results])
    steps = np.array([np.nan if r["steps_to_target"] is None else r["steps_to_target"] for r in results], float)

    def throughput(ax):
        ax.loglog(bs, ips, "o-")
        ax.set(xlabel="batch size", ylabel="images / second", title="(a) training throughput")

    def to_target(ax):
        ax.loglog(bs, steps, "o-", label="measured")
        first = np.flatnonzero(np.isfinite(steps))
        if len(first):
            i = first[0]
            ax.loglog(bs, steps[i] * bs[i] / bs, "k:", label="perfect scaling")
        ax.axvline(critical, color="tab:red", ls="--", label=f"B_simple = {critical:.0f}")
        ax.set(xlabel="batch size", ylabel=f"steps to {p.target_acc:g}% test acc",
               title="(b) steps to target (linear scaling + warmup)")
        ax.legend(fontsize=7)

    def noise_plot(ax):
        ax.semilogy([n["step"] for n in noise], [max(n["b_simple"], 1e-3) for n in noise], ".-")
        ax.axhline(critical, color="tab:red", ls="--")
        ax.set(xlabel=f"step (batch {p.noise_batch})", ylabel="B_simple = tr(Sigma)/|G|^2",
               title="(c) gradient noise scale")

    files = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, fn in zip(axes, (throughput, to_target, noise_plot)):
        fn(ax)
    fig.tight_layout()
    files += render.save(fig, os.path.join(out, "scaling"))
    for name, fn in (("throughput", throughput), ("steps_to_target", to_target), ("noise_scale", noise_plot)):
        fig, ax = plt.subplots(figsize=(5, 4))
        fn(ax)
        fig.tight_layout()
        files += render.save(fig, os.path.join(out, name))
    return files


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog="python -m figures.batch_scaling", description=__doc__, formatter_class=DefaultsFormatter,
                       add_help=add_help)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--out", default="figures_out/batch_scaling", help="folder for the cache, figures and tables")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    p = PRESETS[args.preset]
    info = init_distributed("cpu")
    if info.is_distributed:
        raise UserError("figures.batch_scaling runs in one process; start it with python -m, not torchrun")
    check_writable(args.out)
    data = load_dataset(p.dataset, **p.data_kwargs)
    results = []
    for bs in p.batch_sizes:
        r = cached_run(p, bs, data, info, args.out)
        results.append(r)
        steps = r["steps_to_target"] if r["steps_to_target"] is not None else f"not reached in {r['steps_run']}"
        print(f"batch {bs:>5}: lr {r['lr']:.4g}  {r['images_per_second']:>9.0f} img/s  steps to target {steps}",
              flush=True)
    noise = next(r["noise"] for r in results if r["batch_size"] == p.noise_batch)
    critical = b_simple(noise)
    write_csv(os.path.join(args.out, "summary.csv"), results,
              ["batch_size", "lr", "images_per_second", "steps_to_target", "steps_run"])
    write_csv(os.path.join(args.out, "noise_scale.csv"), noise, ["step", "g2", "trace_sigma", "b_simple"])
    files = plot_all(results, noise, critical, p, args.out)
    print(f"gradient noise scale B_simple = {critical:.1f} (measured at batch {p.noise_batch}, averaged over the "
          f"second half of training): the predicted critical batch size")
    print(f"figures: {', '.join(files)}\ntables: {os.path.join(args.out, 'summary.csv')}, "
          f"{os.path.join(args.out, 'noise_scale.csv')}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
