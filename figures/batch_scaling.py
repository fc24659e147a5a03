"""Batch-size scaling (Shallue et al. 2018; McCandlish et al. 2018), measured on one model:
(a) training images (or tokens) per second against batch size (the median of interleaved rounds, quartiles
drawn), (b) steps to reach a target test accuracy (or
validation loss) with the learning rate scaled with the batch (linearly for SGD, Goyal et al. 2017; by its
square root for Adam, Malladi et al. 2022) and warmup, log-log with the perfect-scaling line, and (c) the
gradient noise scale B_simple measured during training, marked on (b) as the predicted critical batch size.

  python -m figures.batch_scaling --preset quick --out scaling     # MNIST-1D MLP, minutes on 2 CPU cores
  python -m figures.batch_scaling --preset lm --out scaling_lm     # Transformer on the grammar corpus, ~5 min
  python -m figures.batch_scaling --preset lm-gpu --out scaling_lm # 10.7M Transformer, one GPU

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

from landscape.base import ArgumentParser, DefaultsFormatter, UserError, read_cached, run_cli, write_cached, write_csv
from landscape.data import Dataset, load_dataset
from landscape.monitoring import estimate_noise
from landscape.optim import train_step
from landscape.runtime import DistInfo, exclusive_output, process_group, resolve_precision
from trainers.config import TrainConfig, optimizer_of
from trainers.loop import build_run, micro_batches, to_device
from trainers.target import Target, train_to_target


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    batch_sizes: tuple[int, ...]
    base_lr: float  # at base_batch_size; scaled linearly with the batch
    base_batch_size: int
    target_acc: float  # test accuracy (%) that counts as reached (when target_loss is None)
    max_steps: int
    target_loss: float | None = None  # test (validation) loss that counts as reached: language models
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    lr_power: float = 1.0  # lr = base_lr * (batch / base_batch_size) ** lr_power, at most max_lr
    max_lr: float = float("inf")
    eval_samples: int | None = None  # test samples checked against the target (None: all)
    eval_growth: float = 0.0  # the target is checked every max(1, eval_growth * step) steps (0: every step)
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # instead of warmup_epochs
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    noise_batch: int = 64  # the run in which the noise scale is measured
    noise_every: int = 20  # steps between noise measurements
    noise_micro_batches: int = 32  # micro-batches per measurement: fewer gave estimates 3x apart run to run
    seed: int = 0
    device: str = "cpu"
    throughput_rounds: int = 5  # interleaved rounds of the throughput measurement (panel a: their median)
    throughput_samples: int = 4096  # samples timed per batch size and round (at least 3 steps)

    def lr_for(self, bs: int) -> float:
        return min(self.max_lr, self.base_lr * (bs / self.base_batch_size) ** self.lr_power)

    @property
    def target_text(self) -> str:
        return f"test loss {self.target_loss:g}" if self.target_loss is not None else f"{self.target_acc:g}% test acc"


LM = dict(dataset="grammar", model="transformer_tiny", optimizer="adamw", betas=(0.9, 0.95), lr_power=0.5,
          target_acc=0.0, target_loss=0.75, eval_samples=256, eval_growth=0.05, warmup_steps=50,
          noise_batch=32, noise_micro_batches=16)
PRESETS = {
    "quick": Preset(dataset="mnist1d", model="mlp", batch_sizes=(16, 32, 64, 128, 256, 512, 1000, 2000),
                    base_lr=0.0125, base_batch_size=16, target_acc=55.0, max_steps=4000,
                    model_kwargs={"hidden": [100, 100]}),
    "smoke": Preset(dataset="synthetic", model="mlp", batch_sizes=(16, 64, 256), base_lr=0.01, base_batch_size=16,
                    target_acc=60.0, max_steps=300, model_kwargs={"hidden": [16]}, noise_batch=16, noise_every=5,
                    data_kwargs={"n_train": 512, "n_test": 256, "noise": 2.0}, throughput_rounds=3,
                    throughput_samples=256),
    # the grammar's entropy rate is 0.533 nats per character and the best loss on 64-character windows 0.558
    "lm": Preset(**LM, batch_sizes=(8, 16, 32, 64, 128, 256, 512, 1024), base_lr=1.5e-3, base_batch_size=8,
                 max_lr=0.02, max_steps=3000),
    "lm-gpu": Preset(**{**LM, "model": "transformer_medium", "target_loss": 0.6, "eval_samples": 1024,
                        "noise_batch": 64, "device": "auto"},
                     batch_sizes=(16, 32, 64, 128, 256, 512, 1024, 2048), base_lr=3e-4, base_batch_size=16,
                     max_lr=3e-3, max_steps=20000, data_kwargs={"train_tokens": 1 << 25, "val_tokens": 1 << 20}),
    "lm-smoke": Preset(**{**LM, "model": "transformer", "target_loss": 2.9, "eval_samples": 64, "noise_batch": 8,
                          "noise_micro_batches": 4},
                       model_kwargs={"d_model": 16, "n_layer": 1, "n_head": 2}, batch_sizes=(8, 32), base_lr=3e-3,
                       base_batch_size=8, max_steps=60, noise_every=5, throughput_rounds=2, throughput_samples=64,
                       data_kwargs={"seq_len": 16, "train_tokens": 8192, "val_tokens": 2048}),
}


def config_at(p: Preset, bs: int, data: Dataset) -> TrainConfig:
    """The trainer's config of the preset's run at global batch `bs` (its lr by the preset's rule, its warmup)."""
    steps_per_epoch = len(data.x_train) // bs
    warmup = p.warmup_steps / steps_per_epoch if p.warmup_steps is not None else p.warmup_epochs
    return TrainConfig(out="", dataset=p.dataset, data_kwargs=p.data_kwargs, model=p.model,
                       model_kwargs=p.model_kwargs, batch_size=bs, epochs=max(1, -(-p.max_steps // steps_per_epoch)),
                       lr=p.lr_for(bs), optimizer=p.optimizer, betas=p.betas, warmup_epochs=warmup, seed=p.seed,
                       precision="auto", eval_batch_size=4096, progress=False)


def target_of(p: Preset) -> Target:
    return Target(acc=None if p.target_loss is not None else p.target_acc, loss=p.target_loss,
                  samples=p.eval_samples, growth=p.eval_growth)


def run_batch_size(p: Preset, bs: int, data: Dataset, info: DistInfo, measure_noise: bool) -> dict[str, Any]:
    """Train at global batch `bs` with the trainer until the target (trainers.target) or max_steps, measuring the
    noise scale every noise_every steps in the noise batch's run."""
    noise: list[dict[str, Any]] = []
    noise_gen = torch.Generator().manual_seed(p.seed + 1)

    def measure(step: int, model: torch.nn.Module) -> None:
        if measure_noise and step % p.noise_every == 0:
            est = estimate_noise(model, data.x_train, data.y_train, min(bs, 64), noise_gen, p.noise_micro_batches)
            noise.append({"step": step, "g2": est.g2, "trace_sigma": est.trace_sigma, "b_simple": est.b_simple,
                          "b_simple_undefined": est.b_simple_note})

    r = train_to_target(config_at(p, bs, data), data, info, target_of(p), p.max_steps, measure)
    return {"batch_size": bs, "lr": p.lr_for(bs), "steps_to_target": r["steps_to_target"], "steps_run": r["steps_run"],
            "images_per_second": r["samples_per_second"],
            "tokens_per_second": r["samples_per_second"] * data.tokens_per_sample, "noise": noise}


def training_at(cfg: TrainConfig, data: Dataset, info: DistInfo) -> tuple[Any, ...]:
    """(model, optimizer, scheduler, plan, generator) of a fresh run of cfg, as the trainer builds it."""
    model, plan, length = build_run(cfg, data, info)
    opt, sched = optimizer_of(model, cfg, plan, length)
    return model, opt, sched, plan, torch.Generator(device=info.device).manual_seed(cfg.seed)


def measure_throughput(p: Preset, data: Dataset, info: DistInfo) -> dict[int, list[float]]:
    """Samples per second of a training step at each batch size, as a benchmark measures it: `throughput_rounds`
    rounds, each timing every batch size in turn (the order rotating, so none always goes first) over at least
    `throughput_samples` samples and 3 steps after one warm-up step, so every batch size meets the same machine
    load. {batch: the rounds' rates}."""
    runs = {bs: training_at(config_at(p, bs, data), data, info) for bs in p.batch_sizes}
    precision = resolve_precision("auto", info.device)
    losses: list[torch.Tensor] = []

    def rate(bs: int, steps: int) -> float:
        model, opt, sched, plan, gen = runs[bs]
        model.train()
        order = torch.randperm(len(data.x_train), generator=gen, device=info.device)
        started = time.perf_counter()
        for i in range(steps):
            at = (i % plan.steps_per_epoch) * bs
            train_step(model, opt, sched, micro_batches(data, order[at:at + bs], plan, gen, info.device),
                       accumulation_steps=plan.accumulation_steps, precision=precision, info=info, losses=losses)
            losses.clear()
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        return steps * bs / (time.perf_counter() - started)

    for bs in p.batch_sizes:
        rate(bs, 1)  # warm-up
    rates: dict[int, list[float]] = {bs: [] for bs in p.batch_sizes}
    sizes = list(p.batch_sizes)
    for r in range(p.throughput_rounds):
        for bs in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
            rates[bs].append(rate(bs, max(3, -(-p.throughput_samples // bs))))
    return rates


def cached_throughput(p: Preset, data: Dataset, info: DistInfo, out: str) -> dict[int, list[float]]:
    path = os.path.join(out, "runs", "throughput.json")
    key = asdict(p)
    found = read_cached(path, key)
    if found is None:
        found = {str(bs): v for bs, v in measure_throughput(p, data, info).items()}
        write_cached(path, key, found)
    return {int(bs): v for bs, v in found.items()}


def cached_run(p: Preset, bs: int, data: Dataset, info: DistInfo, out: str) -> dict[str, Any]:
    path = os.path.join(out, "runs", f"bs{bs}.json")
    key = {**asdict(p), "batch_size": bs, "loop": "trainers.target"}  # 0.8's own loop took another data order
    result = read_cached(path, key)
    if result is None:
        result = run_batch_size(p, bs, data, info, measure_noise=bs == p.noise_batch)
        write_cached(path, key, result)
    return result


def b_simple(noise: list[dict[str, float]]) -> float:
    """Ratio of the averaged tr(Sigma) and |G|^2 over the second half of the run (past the early transient)."""
    late = noise[len(noise) // 2:] or noise
    return float(np.mean([n["trace_sigma"] for n in late]) / np.mean([n["g2"] for n in late]))


def fit_critical_batch(results: list[dict[str, Any]]) -> tuple[float, float]:
    """(S_min, E_min) of McCandlish et al.'s trade-off S = S_min + E_min / B, fitted to the measured steps S at
    batch B by least squares on the relative error; the measured critical batch is E_min / S_min, where the
    curve is twice S_min, half way between perfect scaling and no gain."""
    return hyperbola_fit(np.array([r["batch_size"] for r in results], float),
                         np.array([np.nan if r["steps_to_target"] is None else r["steps_to_target"] for r in results],
                                  float))


def hyperbola_fit(batches: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """(S_min, E_min) of S = S_min + E_min / B over the finite steps (nan, nan with fewer than 2)."""
    ok = np.isfinite(steps)
    b, s = batches[ok], steps[ok]
    if len(b) < 2:
        return float("nan"), float("nan")
    (s_min, e_min), *_ = np.linalg.lstsq(np.stack([1 / s, 1 / (b * s)], 1), np.ones(len(b)), rcond=None)
    return float(s_min), float(e_min)


def plot_all(results: list[dict[str, Any]], noise: list[dict[str, float]], critical: float,
             fit: tuple[float, float], tokens: bool, p: Preset, out: str) -> list[str]:
    """The three panels; `fit` is fit_critical_batch's (S_min, E_min), `tokens` says throughput is in tokens."""
    from landscape.output import render

    plt = render.plt
    bs = np.array([r["batch_size"] for r in results], float)
    per = np.array([r["tokens_per_second"] / r["images_per_second"] if tokens else 1.0 for r in results])
    ips, lo, hi = (np.array([r[k] for r in results]) * per for k in ("images_per_second", "images_per_second_q25",
                                                                     "images_per_second_q75"))
    steps = np.array([np.nan if r["steps_to_target"] is None else r["steps_to_target"] for r in results], float)

    def throughput(ax):
        ax.fill_between(bs, lo, hi, alpha=0.25, label="quartiles over the rounds")
        ax.loglog(bs, ips, "o-", label=f"median of {p.throughput_rounds} interleaved rounds")
        ax.set(xlabel="batch size" + (" (sequences)" if tokens else ""),
               ylabel="tokens / second" if tokens else "images / second", title="(a) training throughput")
        ax.legend(fontsize=7)

    def to_target(ax):
        ax.loglog(bs, steps, "o-", label="measured")
        missed = ~np.isfinite(steps)
        if missed.any():  # a batch whose run never reached the target: at the step budget, so it is seen
            ax.loglog(bs[missed], np.full(missed.sum(), float(p.max_steps)), "x", color="tab:red", markersize=8,
                      label=f"not reached in {p.max_steps} steps")
        first = np.flatnonzero(np.isfinite(steps))
        if len(first):
            i = first[0]
            ax.loglog(bs, steps[i] * bs[i] / bs, "k:", label="perfect scaling")
        s_min, e_min = fit
        if np.isfinite(s_min) and s_min > 0 and e_min > 0:
            dense = np.geomspace(bs.min(), bs.max(), 50)
            ax.loglog(dense, s_min + e_min / dense, color="tab:green", lw=1,
                      label=f"S_min + E_min/B: B_crit = {e_min / s_min:.0f}")
            ax.axvline(e_min / s_min, color="tab:green", ls=":", label=f"B_crit = E_min/S_min = {e_min / s_min:.0f}")
        ax.axvline(critical, color="tab:red", ls="--", label=f"B_simple = {critical:.0f}")
        rule = "linear" if p.lr_power == 1 else "sqrt" if p.lr_power == 0.5 else f"power {p.lr_power:g}"
        ax.set(xlabel="batch size", ylabel=f"steps to {p.target_text}",
               title=f"(b) steps to target ({rule} lr scaling + warmup)")
        ax.legend(fontsize=7)

    def noise_plot(ax):
        defined = [n for n in noise if n["b_simple"] is not None]  # undefined where |G|^2 came out <= 0
        ax.semilogy([n["step"] for n in defined], [max(n["b_simple"], 1e-3) for n in defined], ".-")
        ax.axhline(critical, color="tab:red", ls="--", label=f"second-half ratio of means = {critical:.0f}")
        ax.set(xlabel=f"step (batch {p.noise_batch})", ylabel="B_simple = tr(Sigma)/|G|^2",
               title="(c) gradient noise scale")
        ax.legend(fontsize=7)

    def drawn(ax, fn):
        from landscape.drawing import artists

        fn(ax)
        artists.sparse_ticks(ax)

    files = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    for ax, fn in zip(axes, (throughput, to_target, noise_plot)):
        drawn(ax, fn)
    files += render.save(fig, os.path.join(out, "scaling"))
    for name, fn in (("throughput", throughput), ("steps_to_target", to_target), ("noise_scale", noise_plot)):
        fig, ax = plt.subplots(figsize=(5, 4.2), layout="constrained")
        drawn(ax, fn)
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
    with process_group(p.device) as info:
        if info.is_distributed:
            raise UserError("figures.batch_scaling runs in one process; start it with python -m, not torchrun")
        with exclusive_output(args.out, info):
            data = to_device(load_dataset(p.dataset, **p.data_kwargs), info.device)
            results = [measured(p, bs, data, info, args.out) for bs in p.batch_sizes]
            rates = cached_throughput(p, data, info, args.out)
            results = [with_throughput(r, rates[r["batch_size"]], data.tokens_per_sample) for r in results]
            throughput_lines(results, p, data.sequences)
            summarize(results, data.sequences, p, args.out)


def with_throughput(r: dict[str, Any], rates: list[float], tokens_per_sample: int) -> dict[str, Any]:
    """A run's result with the interleaved throughput (median and quartiles of the rounds) in place of the rate
    of its own training, which stays as run_images_per_second (one pass, at whatever load the machine had)."""
    q25, median, q75 = np.percentile(rates, [25, 50, 75])
    return {**r, "run_images_per_second": r["images_per_second"], "images_per_second": float(median),
            "images_per_second_q25": float(q25), "images_per_second_q75": float(q75),
            "tokens_per_second": float(median) * tokens_per_sample}


def measured(p: Preset, bs: int, data: Dataset, info: DistInfo, out: str) -> dict[str, Any]:
    """One batch size's run (cached), and its line (its throughput comes after, measured apart: throughput_lines)."""
    r = cached_run(p, bs, data, info, out)
    steps = r["steps_to_target"] if r["steps_to_target"] is not None else f"not reached in {r['steps_run']}"
    print(f"batch {bs:>5}: lr {r['lr']:.4g}  steps to {p.target_text}: {steps}", flush=True)
    return r


def throughput_lines(results: list[dict[str, Any]], p: Preset, sequences: bool) -> None:
    """The throughput the figure draws: each batch size's median over the interleaved rounds, with its quartiles."""
    unit, per = ("tok/s", "tokens_per_second") if sequences else ("img/s", "images_per_second")
    print(f"throughput, median of {p.throughput_rounds} interleaved rounds [quartiles]:", flush=True)
    for r in results:
        scale = r[per] / r["images_per_second"] if sequences else 1.0
        lo, hi = (r[f"images_per_second_q{q}"] * scale for q in (25, 75))
        print(f"batch {r['batch_size']:>5}: {r[per]:>10.0f} {unit}  [{lo:.0f}, {hi:.0f}]", flush=True)


def summarize(results: list[dict[str, Any]], sequences: bool, p: Preset, out: str) -> None:
    """The tables, the critical batch size (from the noise scale, and from the steps-to-target fit), the figures."""
    noise = next(r["noise"] for r in results if r["batch_size"] == p.noise_batch)
    critical = b_simple(noise)
    write_csv(os.path.join(out, "summary.csv"), results,
              ["batch_size", "lr", "images_per_second", "images_per_second_q25", "images_per_second_q75",
               "tokens_per_second", "run_images_per_second", "steps_to_target", "steps_run"])
    write_csv(os.path.join(out, "noise_scale.csv"), noise, ["step", "g2", "trace_sigma", "b_simple",
                                                                   "b_simple_undefined"])
    s_min, e_min = fit_critical_batch(results)
    files = plot_all(results, noise, critical, (s_min, e_min), sequences, p, out)
    print(f"gradient noise scale B_simple = {critical:.1f} (measured at batch {p.noise_batch}, averaged over the "
          f"second half of training): the predicted critical batch size")
    print(f"fit S = S_min + E_min/B: S_min {s_min:.0f} steps, E_min {e_min:.0f} samples; measured critical batch "
          f"B_crit = E_min/S_min = {e_min / s_min:.0f}, where steps to target are twice S_min")
    print(f"figures: {', '.join(files)}\ntables: {os.path.join(out, 'summary.csv')}, "
          f"{os.path.join(out, 'noise_scale.csv')}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
