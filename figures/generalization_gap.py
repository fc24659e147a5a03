"""Close the gap: Hoffer et al. (2017)'s error curves of small and large batches, the literature's remedies side by
side, the curvature each run climbs during training, and the minima they end in.

  python -m figures.generalization_gap --preset quick --out gap           # MNIST-1D MLP with BatchNorm, 2 CPU cores
  python -m figures.generalization_gap --preset quick --seeds 3 --out gap # every run 3 times: mean +- stderr
  torchrun --standalone --nproc_per_node=8 -m figures.generalization_gap --preset cifar --out gap_cifar   # GPUs
  python -m figures.generalization_gap --preset lm --out gap_lm           # Transformer (LayerNorm: no ghost BN)

Trains (or resumes) the small batch, the naive large batch (same lr and epochs) and the large batch with each
remedy of the preset: Goyal (linear lr scaling + warmup), Hoffer (sqrt scaling + Ghost BatchNorm + regime
adaptation), LARS or LAMB, SAM, and the batch ramp; every run tracks lambda_max against its optimizer's threshold.
Then each run's 1D curve and 2D surface and its sharpness (lambda_max, trace, epsilon-sharpness, width), and writes
gap_curves.{png,pdf} (train and validation error against epochs and steps), edge_of_stability.{png,pdf},
minima.{png,pdf}, summary.csv and a verdict: how much of the naive gap each remedy recovers, and whether recovering
more went with a flatter minimum (Spearman's rank correlation over the large-batch runs). Reruns reuse everything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from figures.common import chosen_preset, preset_parser
from landscape.base import ArgumentParser, ConfigError, SharpnessConfig, SurfaceConfig, run_cli, write_csv
from landscape.core import Surface
from landscape.pipelines import run_sharpness, run_surface
from landscape.runtime import DistInfo, exclusive_output, print0, process_group
from landscape.training import TrainingDiverged
from trainers.config import TrainConfig
from trainers.loop import fit


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    small: int  # the small batch, and the lr's reference batch
    large: int
    epochs: int
    lr: float
    remedies: tuple[str, ...]  # of REMEDIES, after "small" and "naive"
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    warmup_epochs: float = 5.0  # Goyal's gradual warmup
    ghost: int | None = 64  # Hoffer's ghost batch; None for a model without BatchNorm (Hoffer's other two remain)
    layerwise_lr: float = 5.0  # LARS's (trust coefficient 0.001) or LAMB's lr
    sam: float = 0.05
    ramp_epochs: int = 20
    micro_batch_size: int | None = None
    judge: str = "test_error"  # or test_loss (language models)
    x_1d: str = "-1:1:41"
    x_2d: str = "-1:1:21"
    levels: tuple[float, float, int] = (0.02, 5.0, 15)  # log-spaced loss levels shared by every contour
    samples: int | None = 1000  # evaluation subset of each split, shared by surfaces and sharpness
    track_every: int = 25
    trace_products: int = 30
    width_directions: int = 5


PRESETS = {
    "quick": Preset(dataset="mnist1d", model="mlp", small=64, large=1024, epochs=100, lr=0.05,
                    model_kwargs={"hidden": [100, 100], "batchnorm": True},
                    remedies=("goyal", "hoffer", "lars", "sam", "ramp"), micro_batch_size=None),
    # He et al.'s ResNet recipe at batch 128 (lr 0.1, weight decay 5e-4, lr / 10 at half and three quarters)
    "cifar": Preset(dataset="cifar10", model="resnet20", small=128, large=2048, epochs=160, lr=0.1,
                    weight_decay=5e-4, schedule="step", milestones=(80, 120),
                    remedies=("goyal", "hoffer", "lars", "sam", "ramp"), ghost=128,
                    layerwise_lr=10.0, ramp_epochs=30, micro_batch_size=512, samples=2000, track_every=100,
                    levels=(0.05, 10.0, 20), trace_products=60, width_directions=10),
    "lm": Preset(dataset="grammar", model="transformer_tiny", small=16, large=256, epochs=8, lr=3e-3,
                 optimizer="adamw", betas=(0.9, 0.95), weight_decay=0.1, warmup_epochs=1.0, layerwise_lr=3e-3,
                 ghost=None, data_kwargs={"train_tokens": 1 << 18}, remedies=("goyal", "hoffer", "lamb", "sam", "ramp"),
                 ramp_epochs=3, judge="test_loss", samples=256, track_every=50, x_1d="-0.5:0.5:21",
                 x_2d="-0.5:0.5:11", levels=(0.5, 6.0, 15)),
    "smoke": Preset(dataset="synthetic", model="mlp", small=16, large=128, epochs=2, lr=0.05,
                    data_kwargs={"n_train": 256, "n_test": 128}, model_kwargs={"hidden": [16], "batchnorm": True},
                    remedies=("goyal", "hoffer", "lars", "sam", "ramp"), ghost=16, ramp_epochs=1,
                    x_1d="-0.5:0.5:5", x_2d="-0.5:0.5:3", samples=64, track_every=4, trace_products=6,
                    width_directions=2),
}

# what each run changes in the naive large batch's config (the small batch changes only the batch)
REMEDIES = {
    "goyal": lambda p: dict(scale_lr="linear", warmup_epochs=p.warmup_epochs),
    "hoffer": lambda p: dict(scale_lr="sqrt", ghost_batch_size=p.ghost, regime_adaptation=True),
    "lars": lambda p: dict(optimizer="lars", lr=p.layerwise_lr),
    "lamb": lambda p: dict(optimizer="lamb", lr=p.layerwise_lr),
    "sam": lambda p: dict(sam=p.sam),
    "ramp": lambda p: dict(batch_ramp=f"{p.small}:{min(p.ramp_epochs, p.epochs)}", micro_batch_size=p.small),
}
DESCRIPTIONS = {"small": "small batch", "naive": "large batch, same lr and epochs",
                "goyal": "linear lr scaling + warmup (Goyal et al. 2017)",
                "hoffer": "sqrt lr scaling + ghost BN + regime adaptation (Hoffer et al. 2017)",
                "lars": "LARS (You et al. 2017)", "lamb": "LAMB (You et al. 2019)",
                "sam": "SAM (Foret et al. 2021)", "ramp": "batch ramp (Smith et al. 2018)"}
MEASURES = ("lambda_max", "trace", "epsilon", "width")
FLATNESS = ("lambda_max", "trace", "epsilon_sharpness", "width")  # summary columns; a larger width is flatter


def run_names(p: Preset) -> list[str]:
    return ["small", "naive", *p.remedies]


def config_of(p: Preset, name: str, seed: int, out: str, device: str) -> TrainConfig:
    """The TrainConfig of one run: the naive large batch, changed by its remedy (or the small batch)."""
    base = TrainConfig(out=os.path.join(out, "runs", f"{name}_s{seed}"), dataset=p.dataset,
                       data_kwargs=p.data_kwargs, model=p.model, model_kwargs=p.model_kwargs, batch_size=p.large,
                       base_batch_size=p.small, epochs=p.epochs, lr=p.lr, optimizer=p.optimizer, betas=p.betas,
                       weight_decay=p.weight_decay, schedule=p.schedule, milestones=p.milestones,
                       micro_batch_size=p.micro_batch_size, seed=seed,
                       track_sharpness=p.track_every, track_samples=p.samples or 512, save_every=10 ** 6,
                       log_every=10 ** 6, progress=False, device=device, resume=True)
    if name == "small":
        return replace(base, batch_size=p.small)
    return replace(base, **REMEDIES[name](p)) if name != "naive" else base


def train(p: Preset, seeds: int, out: str, info: DistInfo, device: str
          ) -> tuple[dict[tuple[str, int], TrainConfig], dict[tuple[str, int], TrainingDiverged]]:
    """Every run of every seed, trained or resumed (a finished one is reused); and the runs that diverged (their
    last finite checkpoint kept: a rerun diverges again at the same step, after at most an epoch)."""
    cfgs, diverged = {}, {}
    for seed in range(seeds):
        for name in run_names(p):
            cfg = config_of(p, name, seed, out, device)
            cfgs[(name, seed)] = cfg
            try:
                fit(cfg, info)
            except TrainingDiverged as exc:
                diverged[(name, seed)] = exc
                print0(f"run {name} (seed {seed}): {exc}")
                continue
            print0(f"run {name} (seed {seed}) -> {cfg.out}")
    return cfgs, diverged


def log_of(cfg: TrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's epoch records and its tracked lambda_max records, from metrics.jsonl."""
    records = [json.loads(line) for line in open(os.path.join(cfg.out, "metrics.jsonl"))]
    return [r for r in records if "kind" not in r], [r for r in records if r.get("kind") == "sharpness"]


def measure(p: Preset, cfg: TrainConfig, name: str, out: str, info: DistInfo, device: str
            ) -> tuple[dict[str, float], dict[str, Surface | None]]:
    """A run's sharpness (summary columns) and its 1D (train + test) and 2D (train) surfaces (rank 0)."""
    ckpt = os.path.join(cfg.out, "last.pt")
    common = dict(checkpoint=ckpt, samples=p.samples, device=device, progress=False)
    sc = SharpnessConfig(measures=MEASURES, eps=(1e-3,), trace_products=p.trace_products,
                         width_directions=p.width_directions)
    rows = run_sharpness(SurfaceConfig(**common, splits=("train",), x=p.x_1d, name=name,
                                       out=os.path.join(out, "sharpness")), sc, info, log=lambda _: None).rows
    by = {r["measure"]: r["value"] for r in rows if r["subset"] == "all"}
    cols = {"lambda_max": by["lambda_max"], "trace": by["trace"], "width": by["width"],
            "epsilon_sharpness": next(v for k, v in by.items() if k.startswith("epsilon"))}
    surf = {kind: run_surface(SurfaceConfig(**common, x=p.x_1d, y=y, splits=splits, name=name,
                                            out=os.path.join(out, "surfaces")), info, share=False).surface
            for kind, y, splits in [("1d", None, ("train", "test")), ("2d", p.x_2d, ("train",))]}
    return cols, surf


Logs = dict[tuple[str, int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]  # (run, seed) -> log_of


def summarize(p: Preset, cfgs: dict[tuple[str, int], TrainConfig], logs: Logs, flat: dict[str, dict[str, float]],
              seeds: int, diverged: dict[tuple[str, int], TrainingDiverged] | None = None) -> list[dict[str, Any]]:
    """A row per run: the judged error as mean +- stderr over the seeds, the share of the naive gap recovered, and
    the seed-0 minimum's flatness; a run that diverged (any seed) is a row that says where, with no numbers."""
    rows, diverged = [], diverged or {}
    for name in run_names(p):
        c = cfgs[(name, 0)]
        remedy = DESCRIPTIONS[name]
        if name == "hoffer" and not p.ghost:  # no BatchNorm: no ghost batch
            remedy = remedy.replace(" + ghost BN", "")
        row = {"run": name, "remedy": remedy, "batch_size": c.batch_size,
               "bn_batch": c.ghost_batch_size or c.micro_batch_size or c.batch_size}
        failed = [(s, diverged[(name, s)]) for s in range(seeds) if (name, s) in diverged]
        if failed:
            s, exc = failed[0]
            rows.append({**row, "steps": exc.step, "status": f"diverged at step {exc.step} (seed {s}; lr {exc.lr:.4g})",
                         **{k: float("nan") for k in ("test_error", p.judge, "gap_recovered", *FLATNESS,
                                                      "test_error_stderr", f"{p.judge}_stderr")}})
            continue
        finals = [logs[(name, s)][0][-1] for s in range(seeds)]
        row.update(steps=finals[0]["step"], status="trained")
        for key in dict.fromkeys(("test_error", p.judge)):  # a language model's judge is its test loss
            values = np.array([100 - f["test_acc"] if key == "test_error" else f[key] for f in finals])
            row[key] = float(values.mean())
            row[f"{key}_stderr"] = float(values.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else float("nan")
        rows.append({**row, **flat[name]})
    small, naive = rows[0][p.judge], rows[1][p.judge]
    for r in rows:
        if r["status"] == "trained":
            r["gap_recovered"] = (naive - r[p.judge]) / (naive - small) if naive != small else float("nan")
    return rows


def verdict(p: Preset, rows: list[dict[str, Any]], seeds: int) -> str:
    """Per remedy: the gap it recovers and whether its minimum is flatter than the naive one; then the rank
    correlation, over the large-batch runs, of the gap recovered with each flatness measure."""
    j, small, naive = p.judge, rows[0], rows[1]
    unit = "%" if j == "test_error" else ""
    how = f"mean of {seeds} seeds" if seeds > 1 else "one seed: descriptive, not a test"
    lines = [f"{j.replace('_', ' ')}: small batch {small[j]:.4g}{unit}, naive large batch {naive[j]:.4g}{unit} "
             f"({how})"]
    lines += [f"{r['run']}: {r['status']}; not drawn, and left out of the comparison" for r in rows
              if r["status"] != "trained"]
    if small["status"] != "trained" or naive["status"] != "trained":
        return "\n".join([*lines, "without both the small and the naive large batch there is no gap to measure"])
    if not naive[j] > small[j]:
        return "\n".join([*lines, "the naive large batch lost nothing here: there is no gap to close"])
    rows = [*rows[:2], *(r for r in rows[2:] if r["status"] == "trained")]
    for r in rows[2:]:
        flatter = "flatter" if r["lambda_max"] < naive["lambda_max"] else "not flatter"
        lines.append(f"{r['run']}: recovers {100 * r['gap_recovered']:.0f}% of the gap ({j.replace('_', ' ')} "
                     f"{r[j]:.4g}{unit}); lambda_max {r['lambda_max']:.3g} vs naive {naive['lambda_max']:.3g}, "
                     f"width {r['width']:.3g} vs {naive['width']:.3g}: by lambda_max its minimum is {flatter}")
    large = rows[1:]
    for m in FLATNESS:
        sign = 1 if m == "width" else -1  # flatness: a larger width, a smaller curvature
        rho = spearmanr([r["gap_recovered"] for r in large], [sign * r[m] for r in large]).statistic
        went = "went with" if rho > 0 else "did not go with"
        lines.append(f"rank correlation over the {len(large)} large-batch runs of gap recovered with flatness by "
                     f"{m}: {rho:+.2f}: recovering more {went} a flatter minimum")
    return "\n".join(lines)


def compose(p: Preset, logs: Logs, rows: list[dict[str, Any]],
            surfaces: dict[str, dict[str, Surface]], out: str) -> list[str]:
    """The three figures, from the seed-0 runs."""
    from landscape.drawing import artists
    from landscape.pipelines import render

    colors = {n: render.plt.cm.tab10(i) for i, n in enumerate(run_names(p))}
    names = [r["run"] for r in rows if r["status"] == "trained"]  # a diverged run is in the table, not drawn
    rows = [r for r in rows if r["status"] == "trained"]
    files = []
    fig, axes = render.plt.subplots(2, 2, figsize=(10, 7))  # Hoffer et al.'s figure, against epochs and steps
    for name in names:
        epochs, _ = logs[(name, 0)]
        for row, split in enumerate(("train", "test")):
            err = [100 - r[f"{split}_acc"] for r in epochs if f"{split}_acc" in r]
            done = [r for r in epochs if f"{split}_acc" in r]
            x = [[r["epoch"] for r in done], [r["step"] for r in done]]
            for col in range(2):
                axes[row, col].plot(x[col], err, color=colors[name], label=name, linewidth=1.2)
    for (row, col), ax in np.ndenumerate(axes):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(render.plt.NullFormatter())
        ax.set_xlabel(("epochs", "optimizer steps")[col])
        ax.set_ylabel(f"{('training', 'validation')[row]} error (%)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{p.dataset} {p.model}: batch {p.small} vs {p.large}", fontsize=10)
    fig.tight_layout()
    files += render.save(fig, os.path.join(out, "gap_curves"))
    fig, axes = render.plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):  # the edge of stability, per run
        _, tracked = logs[(name, 0)]
        steps = [r["step"] for r in tracked]
        ax.semilogy(steps, [r["lambda_max"] for r in tracked], color=colors[name])
        if tracked and tracked[0]["threshold"] is not None:
            ax.semilogy(steps, [r["threshold"] for r in tracked], "k--", linewidth=0.8, label="threshold")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel("lambda_max (preconditioned for Adam)")
    files += render.save(fig, os.path.join(out, "edge_of_stability"))
    files += _minima(p, rows, surfaces, colors, out, artists, render)
    return files


def _minima(p: Preset, rows: list[dict[str, Any]], surfaces: dict[str, dict[str, Surface]], colors: dict,
            out: str, artists: Any, render: Any) -> list[str]:
    """Each final minimum's 1D curve on shared axes, then its 2D contour with the same levels."""
    names = [r["run"] for r in rows]
    fig = render.plt.figure(figsize=(2.6 * len(names), 5.6))
    grid = fig.add_gridspec(2, len(names), hspace=0.55)
    ax1 = fig.add_subplot(grid[0, :])
    for name in names:
        s = surfaces[name]["1d"]
        ax1.plot(s.x, s.values["train_loss"], color=colors[name], label=name)
    ax1.set_yscale("log")
    ax1.set_xlabel("alpha (filter-normalized direction)")
    ax1.set_ylabel("train loss")
    ax1.legend(fontsize=7, ncol=len(names))
    levels = np.geomspace(*p.levels[:2], p.levels[2])
    unit = "%" if p.judge == "test_error" else ""
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[1, i])
        s = surfaces[r["run"]]["2d"]
        artists.contourf(ax, s.x, s.y, s.values["train_loss"], levels)
        ax.set_title(f"{r['run']}: {r[p.judge]:.3g}{unit}\nlambda_max {r['lambda_max']:.3g}", fontsize=8)
    return render.save(fig, os.path.join(out, "minima"))


COLUMNS = ["run", "remedy", "status", "batch_size", "bn_batch", "steps", "test_error", "test_error_stderr", "test_loss",
           "test_loss_stderr", "gap_recovered", *FLATNESS]


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = preset_parser("python -m figures.generalization_gap", __doc__, PRESETS, "figures_out/generalization_gap",
                      add_help)
    p.add_argument("--seeds", type=int, default=1, help="train every run this many times; the summary reports the "
                   "mean +- standard error and the verdict uses it")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    preset = chosen_preset(args, PRESETS)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    with process_group(args.device) as info, exclusive_output(args.out, info):
        cfgs, diverged = train(preset, args.seeds, args.out, info, args.device)
        trained = [n for n in run_names(preset) if not any((n, s) in diverged for s in range(args.seeds))]
        measured = {n: measure(preset, cfgs[(n, 0)], n, args.out, info, args.device) for n in trained}
        if not info.is_main:
            return
        logs = {k: log_of(cfg) for k, cfg in cfgs.items() if k[0] in trained}  # each run's metrics.jsonl, read once
        rows = summarize(preset, cfgs, logs, {n: m[0] for n, m in measured.items()}, args.seeds, diverged)
        files = compose(preset, logs, rows, {n: m[1] for n, m in measured.items()}, args.out)
        path = os.path.join(args.out, "summary.csv")
        write_csv(path, rows, [c for c in COLUMNS if c in rows[0]], ".4g")
    print(f"\n{verdict(preset, rows, args.seeds)}\n\nfigures: {', '.join(files)}\ntable: {path}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
