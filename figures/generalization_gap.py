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
gap_curves.{png,pdf} (train and validation error against epochs and samples seen, smoothed), edge_of_stability.{png,
pdf}, minima.{png,pdf} (linear scales; --log-scale for log ones), final.{png,pdf} (the runs ranked by final error
beside gap recovered and lambda_max), summary.csv and a verdict: how much of the naive gap each remedy recovers, and
whether recovering more went with a flatter minimum (Spearman's rank correlation over the large-batch runs). Reruns
reuse everything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from figures.common import chosen_preset, contour_levels, preset_parser
from landscape.base import ArgumentParser, ConfigError, SurfaceConfig, run_cli, write_csv
from landscape.core import Surface
from landscape.optim import TrainingDiverged
from landscape.pipelines import SharpnessConfig, run_sharpness, run_surface
from landscape.runtime import DistInfo, exclusive_output, print0, process_group
from trainers.config import TrainConfig
from trainers.loop import fit
from trainers.remedies import RECIPES, Knobs
from trainers.run_files import read_log


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    small: int  # the small batch, and the lr's reference batch
    large: int
    epochs: int
    lr: float
    remedies: tuple[str, ...]  # of trainers.remedies.RECIPES, after "small" and "naive"
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
    levels: tuple[float, float, float] = (0.1, 10.0, 0.5)  # arange: Li et al.'s linear levels, shared by every 2D panel
    log_levels: tuple[float, float, int] = (0.02, 5.0, 15)  # geomspace, with --log-scale (the titles say so)
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
                    remedies=("goyal", "hoffer", "lars", "sam", "ramp", "tau"), ghost=128,
                    layerwise_lr=10.0, ramp_epochs=30, micro_batch_size=512, samples=2000, track_every=100,
                    log_levels=(0.05, 10.0, 20), trace_products=60, width_directions=10),
    "lm": Preset(dataset="grammar", model="transformer_tiny", small=16, large=256, epochs=8, lr=3e-3,
                 optimizer="adamw", betas=(0.9, 0.95), weight_decay=0.1, warmup_epochs=1.0, layerwise_lr=3e-3,
                 ghost=None, data_kwargs={"train_tokens": 1 << 18},
                 remedies=("goyal", "hoffer", "lamb", "sam", "ramp", "tau"),
                 ramp_epochs=3, judge="test_loss", samples=256, track_every=50, x_1d="-0.5:0.5:21",
                 x_2d="-0.5:0.5:11", levels=(0.5, 6.0, 0.25), log_levels=(0.5, 6.0, 15)),
    "smoke": Preset(dataset="synthetic", model="mlp", small=16, large=128, epochs=2, lr=0.05, weight_decay=5e-4,
                    data_kwargs={"n_train": 256, "n_test": 128}, model_kwargs={"hidden": [16], "batchnorm": True},
                    remedies=("goyal", "hoffer", "lars", "sam", "ramp", "tau"), ghost=16, ramp_epochs=1,
                    x_1d="-0.5:0.5:5", x_2d="-0.5:0.5:3", samples=64, track_every=4, trace_products=6,
                    width_directions=2),
}

BASELINES = {"small": "small batch", "naive": "large batch, same lr and epochs"}  # the runs that are no remedy
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
    return replace(base, **RECIPES[name].changes(knobs_of(p))) if name != "naive" else base


def knobs_of(p: Preset) -> Knobs:
    """The preset's settings of each remedy, as the trainer's recipes take them."""
    return Knobs(small=p.small, epochs=p.epochs, warmup_epochs=p.warmup_epochs, ghost=p.ghost,
                 layerwise_lr=p.layerwise_lr, sam=p.sam, ramp_epochs=p.ramp_epochs)


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
    records = read_log(cfg.out)
    return [r for r in records if "kind" not in r], [r for r in records if r.get("kind") == "sharpness"]


def measure(p: Preset, cfg: TrainConfig, name: str, out: str, info: DistInfo, device: str
            ) -> tuple[dict[str, float], dict[str, Surface | None]]:
    """A run's sharpness (summary columns) and its 1D (train + test) and 2D (train) surfaces (rank 0)."""
    ckpt = os.path.join(cfg.out, "last.pt")
    common = dict(checkpoint=ckpt, samples=p.samples, device=device, progress=False)
    sc = SharpnessConfig(measures=MEASURES, eps=(1e-3,), trace_products=p.trace_products,
                         width_directions=p.width_directions, x=p.x_1d)
    rows = run_sharpness(SurfaceConfig(**common, splits=("train",), name=name,
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
        remedy = BASELINES[name] if name in BASELINES else RECIPES[name].description
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
            surfaces: dict[str, dict[str, Surface]], out: str, log: bool = False) -> list[str]:
    """The four figures, from the seed-0 runs (the final errors over every seed)."""
    from landscape.output import render

    colors = {n: render.plt.cm.tab10(i) for i, n in enumerate(run_names(p))}
    rows = [r for r in rows if r["status"] == "trained"]  # a diverged run is in the table, not drawn
    return (_curves(p, logs, rows, colors, out, render) + _edge(logs, rows, colors, out, render)
            + _minima(p, rows, surfaces, colors, out, render, log) + _final(p, rows, colors, out, render))


def smoothed(values: list[float], window: int) -> np.ndarray:
    """A centred moving average (the ends average what they have), so a long noisy run reads as its trend."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < 3:
        return v
    kernel = np.ones(min(window, len(v)))
    return np.convolve(v, kernel, "same") / np.convolve(np.ones_like(v), kernel, "same")


def _curves(p: Preset, logs: Logs, rows: list[dict[str, Any]], colors: dict, out: str, render: Any) -> list[str]:
    """Hoffer et al.'s error curves against epochs and against samples seen (what a longer regime pays for),
    each smoothed over a twentieth of its points with the raw curve faint behind it."""
    fig, axes = render.plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
    for r in rows:
        epochs, _ = logs[(r["run"], 0)]
        for row, split in enumerate(("train", "test")):
            done = [e for e in epochs if f"{split}_acc" in e]
            err = [100 - e[f"{split}_acc"] for e in done]
            xs = ([e["epoch"] for e in done], [e["step"] * r["batch_size"] for e in done])
            for col, x in enumerate(xs):
                ax = axes[row, col]
                ax.plot(x, err, color=colors[r["run"]], linewidth=0.6, alpha=0.25)
                ax.plot(x, smoothed(err, max(1, len(err) // 20)), color=colors[r["run"]], linewidth=1.5,
                        label=f"{r['run']}: final {r['test_error']:.3g}%" if row else r["run"])
    for (row, col), ax in np.ndenumerate(axes):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(render.plt.NullFormatter())
        ax.set_xlabel(("epochs", "samples seen")[col])
        ax.set_ylabel(f"{('training', 'validation')[row]} error (%)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{p.dataset} {p.model}: batch {p.small} vs {p.large}; smoothed, raw faint", fontsize=10)
    return render.save(fig, os.path.join(out, "gap_curves"))


def _edge(logs: Logs, rows: list[dict[str, Any]], colors: dict, out: str, render: Any) -> list[str]:
    """lambda_max against the optimizer's stability threshold, per run; a run without one says why."""
    from landscape.drawing import artists

    names = [r["run"] for r in rows]
    fig, axes = render.plt.subplots(1, len(names), figsize=(2.9 * len(names), 3.2), squeeze=False,
                                    layout="constrained")
    for ax, name in zip(axes[0], names):
        _, tracked = logs[(name, 0)]
        steps = [r["step"] for r in tracked]
        pre = bool(tracked) and bool(tracked[0].get("preconditioned"))
        ax.semilogy(steps, [r["lambda_max"] for r in tracked], color=colors[name],
                    label="lambda_max" + (" (preconditioned)" if pre else ""))
        if tracked and tracked[0]["threshold"] is not None:
            ax.semilogy(steps, [r["threshold"] for r in tracked], "k--", linewidth=0.8, label="stability threshold")
        elif tracked:
            ax.text(0.5, 0.05, "no stability threshold\nfor this optimizer", transform=ax.transAxes, ha="center",
                    fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("lambda_max (log)")
        artists.sparse_ticks(ax)
        ax.legend(fontsize=6)
    return render.save(fig, os.path.join(out, "edge_of_stability"))


def _minima(p: Preset, rows: list[dict[str, Any]], surfaces: dict[str, dict[str, Surface]], colors: dict,
            out: str, render: Any, log: bool) -> list[str]:
    """Each final minimum's 1D curve on one linear axis, then its 2D contours at the same linear levels (log
    scales with `log`, said in the titles), so a sharp minimum looks sharp."""
    from landscape.drawing import artists

    names = [r["run"] for r in rows]
    fig = render.plt.figure(figsize=(2.9 * len(names), 6.5), layout="constrained")
    grid = fig.add_gridspec(2, len(names))
    levels, scale = contour_levels(p.levels, p.log_levels, log)
    half = len(names) // 2
    whole, near = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    for ax, top, what in ((whole, levels[-1], "the basins"), (near, 1.0, "near each minimum")):
        for name in names:
            s = surfaces[name]["1d"]
            ax.plot(s.x, s.values["train_loss"], color=colors[name], label=name)
        ax.set_yscale("log" if log else "linear")
        if not log:  # far out every curve only climbs: up to the contours' top level, and a zoom on the bottoms
            ax.set_ylim(0, top)
        ax.set_xlabel("alpha (filter-normalized direction)")
        ax.set_ylabel("train loss" + (" (log scale)" if log else f" (up to {top:.3g})"))
        ax.set_title(what, fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        artists.sparse_ticks(ax)
    if not log:  # the zoom spans the alphas where some run is still below its top
        below = [s.x[s.values["train_loss"] <= 1.0] for s in (surfaces[n]["1d"] for n in names)]
        inside = np.concatenate(below) if any(len(b) for b in below) else np.array([])
        if inside.size:
            pad = 0.1 * (inside.max() - inside.min() or 1.0)
            near.set_xlim(inside.min() - pad, inside.max() + pad)
    unit = "%" if p.judge == "test_error" else ""
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[1, i])
        s = surfaces[r["run"]]["2d"]
        cs = artists.contour(ax, s.x, s.y, s.values["train_loss"], levels=levels, label_rings=3)
        if i == len(rows) - 1:
            fig.colorbar(cs, ax=ax, label=f"train loss ({scale} levels)")
        ax.set_xlabel("alpha")
        ax.set_ylabel("beta")
        artists.sparse_ticks(ax)
        ax.set_title(f"{r['run']}: {r[p.judge]:.3g}{unit}\nlambda_max {r['lambda_max']:.3g}", fontsize=8)
    fig.suptitle(f"Each final minimum: 1D on a {'log' if log else 'linear'} axis, 2D at the same {scale} levels "
                 f"({levels[0]:.3g} to {levels[-1]:.3g})", fontsize=10)
    return render.save(fig, os.path.join(out, "minima"))


def _final(p: Preset, rows: list[dict[str, Any]], colors: dict, out: str, render: Any) -> list[str]:
    """The verdict as a picture: each run's final judged error (mean +- stderr over the seeds), sorted, beside the
    share of the naive gap it recovers and its lambda_max."""
    j = p.judge
    unit = " (%)" if j == "test_error" else ""
    ranked = sorted(rows, key=lambda r: r[j])
    fig, axes = render.plt.subplots(1, 3, figsize=(12, 0.5 * len(ranked) + 1.8), sharey=True, layout="constrained")
    y = np.arange(len(ranked))
    names = [r["run"] for r in ranked]
    stderr = [r.get(f"{j}_stderr", float("nan")) for r in ranked]
    cols = [colors[n] for n in names]
    axes[0].barh(y, [r[j] for r in ranked], xerr=[0 if np.isnan(e) else e for e in stderr], color=cols)
    spread = "one seed: no spread" if all(np.isnan(e) for e in stderr) else "mean +- stderr over seeds"
    axes[0].set_xlabel(f"final {j.replace('_', ' ')}{unit}, {spread}")
    axes[1].barh(y, [100 * r.get("gap_recovered", float("nan")) for r in ranked], color=cols)
    axes[1].axvline(0, color="k", linewidth=0.6)
    axes[1].set_xlabel("naive gap recovered (%)")
    axes[2].barh(y, [r["lambda_max"] for r in ranked], color=cols)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("lambda_max (log scale)")
    for ax in axes:
        ax.set_ylabel("run (best first)")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle(f"{p.dataset} {p.model}: the runs ranked by final {j.replace('_', ' ')}", fontsize=10)
    return render.save(fig, os.path.join(out, "final"))


COLUMNS = ["run", "remedy", "status", "batch_size", "bn_batch", "steps", "test_error", "test_error_stderr", "test_loss",
           "test_loss_stderr", "gap_recovered", *FLATNESS]


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = preset_parser("python -m figures.generalization_gap", __doc__, PRESETS, "figures_out/generalization_gap",
                      add_help)
    p.add_argument("--seeds", type=int, default=1, help="train every run this many times; the summary reports the "
                   "mean +- standard error and the verdict uses it")
    p.add_argument("--log-scale", action="store_true", help="draw the minima on log scales (a log 1D loss axis, "
                   "log-spaced 2D levels) instead of linear ones; the titles say so")
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
        files = compose(preset, logs, rows, {n: m[1] for n, m in measured.items()}, args.out, args.log_scale)
        path = os.path.join(args.out, "summary.csv")
        write_csv(path, rows, [c for c in COLUMNS if c in rows[0]], ".4g")
    print(f"\n{verdict(preset, rows, args.seeds)}\n\nfigures: {', '.join(files)}\ntable: {path}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
