"""Li et al. (2018) Fig. 3: small- vs large-batch minima at weight decay 0 and 5e-4, with sharpness measured.

  python -m figures.flat_vs_sharp --preset quick --out demo          # MNIST-1D MLP, minutes on 2 CPU cores
  torchrun --standalone --nproc_per_node=8 -m figures.flat_vs_sharp --preset paper --out fig3   # VGG-9, CIFAR-10
  python -m figures.flat_vs_sharp --preset lm --out fig3_lm          # Transformer, grammar corpus, ~10 min on 2 cores

Trains (or reuses) the four runs, computes (or resumes) for each a filter-normalized 1D curve and 2D surface on
the same grid, an un-normalized 1D curve, and its sharpness table on the same data (landscape.sharpness: the
Hessian's lambda_max/lambda_min/trace, Keskar's epsilon-sharpness at 1e-3 and 5e-4, adaptive and average-case
sharpness, the basin width over N random directions with its standard error); then
writes flat_vs_sharp.{png,pdf} (1D row + 2D contour row), no_filter_norm.{png,pdf}, an interactive 3D page per
2D panel (pages/*.html, self-contained), summary.csv, the .h5 files behind every panel and each run's sharpness
table (sharpness/*.csv, .json). The summary says, per weight decay and measure, whether the large-batch minimum
is the sharper one. Rerunning reuses everything already finished.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from figures.common import chosen_preset, contour_levels, preset_parser
from landscape.base import ArgumentParser, SurfaceConfig, run_cli, write_csv
from landscape.core import Surface
from landscape.curvature import width_1d
from landscape.pipelines import SharpnessConfig, run_sharpness, run_surface
from landscape.runtime import DistInfo, exclusive_output, print0, process_group
from trainers.config import TrainConfig
from trainers.sweep import run_name, sweep


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    batch_sizes: tuple[int, int]  # (small, large)
    weight_decays: tuple[float, ...]
    epochs: int
    lr: float
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    micro_batch_size: int | None = None
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.0
    judge: str = "test_error"  # what "generalizes better" compares: test_error, or test_loss (language models)
    x_1d: str = "-0.5:0.5:51"
    x_2d: str = "-0.5:0.5:21"
    contour_levels: tuple[float, float, float] = (0.1, 10.0, 0.5)  # arange(start, stop, step): Li et al.'s levels,
    # linear and the same in every panel, so a wider ring is a flatter minimum
    log_levels: tuple[float, float, int] = (0.02, 5.0, 15)  # geomspace, with --log-contours (the title says so)
    x_raw: str = "-0.25:0.25:41"  # un-normalized directions: a range in absolute weight units
    samples: int | None = None  # evaluation subset of each split (None: all), shared by surfaces and Hessian
    width_threshold: float = 0.1  # loss above the minimum that bounds the 1D basin
    trace_products: int = 30  # Hutch++
    width_directions: int = 10  # random directions whose widths are averaged


PRESETS = {
    "quick": Preset(dataset="mnist1d", model="mlp", batch_sizes=(64, 1000), weight_decays=(0.0, 5e-4),
                    epochs=200, lr=0.05, model_kwargs={"hidden": [100, 100]}),
    "paper": Preset(dataset="cifar10", model="vgg9", batch_sizes=(128, 8192), weight_decays=(0.0, 5e-4),
                    epochs=300, lr=0.1, schedule="step", milestones=(150, 225, 275), micro_batch_size=512,
                    x_1d="-1:1:51", x_2d="-1:1:51", log_levels=(0.1, 10.0, 20), x_raw="-0.05:0.05:51",
                    samples=None, trace_products=60),
    "smoke": Preset(dataset="synthetic", model="mlp", batch_sizes=(16, 256), weight_decays=(0.0, 5e-4), epochs=3,
                    lr=0.05, data_kwargs={"n_train": 512, "n_test": 256}, model_kwargs={"hidden": [16]},
                    x_1d="-0.5:0.5:7", x_2d="-0.5:0.5:5", x_raw="-0.1:0.1:5", trace_products=6,
                    width_directions=2),
    # AdamW with decoupled weight decay 0 and 0.1, the same lr and epochs at both batch sizes, as in the paper
    "lm": Preset(dataset="grammar", model="transformer_tiny", batch_sizes=(16, 512), weight_decays=(0.0, 0.1),
                 epochs=8, lr=3e-3, optimizer="adamw", betas=(0.9, 0.95), warmup_epochs=1.0, judge="test_loss",
                 data_kwargs={"train_tokens": 1 << 19}, x_2d="-0.5:0.5:17", contour_levels=(0.5, 4.0, 0.25),
                 log_levels=(0.5, 4.0, 15),
                 x_raw="-0.1:0.1:41", samples=256, trace_products=30),
    # one H100, projected from measured throughput: ~13 min of training (batch 64 at ~210k tokens/s), ~5 min of
    # surfaces, a few minutes of sharpness tables
    "lm-gpu": Preset(dataset="grammar", model="transformer_medium", batch_sizes=(64, 2048), weight_decays=(0.0, 0.1),
                     epochs=10, lr=1e-3, optimizer="adamw", betas=(0.9, 0.95), warmup_epochs=1.0, judge="test_loss",
                     data_kwargs={"train_tokens": 1 << 23}, x_1d="-1:1:51", x_2d="-1:1:51",
                     contour_levels=(0.5, 4.0, 0.25), log_levels=(0.5, 4.0, 20), x_raw="-0.05:0.05:51",
                     samples=2048, trace_products=60),
    "lm-smoke": Preset(dataset="grammar", model="transformer", batch_sizes=(8, 64), weight_decays=(0.0, 0.1),
                       epochs=2, lr=3e-3, optimizer="adamw", judge="test_loss",
                       data_kwargs={"seq_len": 16, "train_tokens": 4096, "val_tokens": 1024},
                       model_kwargs={"d_model": 16, "n_layer": 1, "n_head": 2}, x_1d="-0.5:0.5:5",
                       x_2d="-0.5:0.5:3", x_raw="-0.1:0.1:3", samples=32, trace_products=6, width_directions=2),
}


def train_runs(p: Preset, out: str, info: DistInfo, device: str, seed: int = 0) -> dict[tuple[int, float], str]:
    base = TrainConfig(out="", seed=seed, dataset=p.dataset, data_kwargs=p.data_kwargs, model=p.model,
                       model_kwargs=p.model_kwargs, epochs=p.epochs, lr=p.lr, schedule=p.schedule,
                       optimizer=p.optimizer, betas=p.betas, warmup_epochs=p.warmup_epochs,
                       milestones=p.milestones, micro_batch_size=p.micro_batch_size, eval_every=p.epochs,
                       save_every=p.epochs, log_every=max(1, p.epochs // 5), progress=False, device=device)
    outs = sweep(base, os.path.join(out, "runs"), p.batch_sizes, p.weight_decays, info)
    keys = [(bs, wd) for bs in p.batch_sizes for wd in p.weight_decays]
    return {k: os.path.join(o, "last.pt") for k, o in zip(keys, outs)}


def surfaces_for(ckpt: str, tag: str, p: Preset, out: str, info: DistInfo, device: str
                 ) -> dict[str, Surface | None]:
    """The three surfaces of one run, each in its file: filter-normalized 1D (train+test) and 2D (train), raw 1D;
    on rank 0 (None on the other ranks)."""
    common = dict(checkpoint=ckpt, out=os.path.join(out, "surfaces"), samples=p.samples, device=device, progress=False)
    jobs = {"1d": SurfaceConfig(**common, x=p.x_1d, name=tag),
            "2d": SurfaceConfig(**common, x=p.x_2d, y=p.x_2d, splits=("train",), name=tag),
            "raw": SurfaceConfig(**common, x=p.x_raw, norm="none", name=f"{tag}_nofilternorm")}
    surfaces = {}
    for kind, cfg in jobs.items():
        run = run_surface(cfg, info, share=False)
        print0(f"surface {kind:>3}: {run.computed} points computed, {run.already_done} reused -> {run.path}")
        surfaces[kind] = run.surface
    return surfaces


def title(bs: int, wd: float, metrics: dict[str, float]) -> str:
    if "test_ppl" in metrics:  # a language model: validation loss and perplexity say more than token error
        return f"WD={wd:g}, BS={bs}, val loss {metrics['test_loss']:.3f} (ppl {metrics['test_ppl']:.2f})"
    return f"WD={wd:g}, BS={bs}, test error {100 - metrics['test_acc']:.1f}%"


def compose(rows: list[dict[str, Any]], surfaces: dict[tuple[int, float], dict[str, Surface]], p: Preset,
            out: str, log: bool = False) -> list[str]:
    """The paper's layout: 1D curves (small and large batch overlaid, linear loss axis) per weight decay, then one
    2D contour per run at the same linear levels (log-spaced with `log`), each with its colourbar; and a second
    figure of the un-normalized 1D curves."""
    from landscape.drawing import artists
    from landscape.output import render

    plt = render.plt
    n_wd, n_runs = len(p.weight_decays), len(rows)
    fig = plt.figure(figsize=(4.2 * n_runs, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, n_runs)
    for i, wd in enumerate(p.weight_decays):
        ax = fig.add_subplot(grid[0, i * n_runs // n_wd:(i + 1) * n_runs // n_wd])
        acc_ax = ax.twinx()
        lines = []
        for style, bs in zip(("-", "--"), p.batch_sizes):
            s = surfaces[(bs, wd)]["1d"]
            lines += artists.curve_1d(ax, s.x, s.values["train_loss"], s.values["train_acc"], label=f"BS={bs} train",
                                      acc_ax=acc_ax, linestyle=style, linewidth=2.0)
            lines += artists.curve_1d(ax, s.x, s.values["test_loss"], s.values["test_acc"], label=f"BS={bs} test",
                                      acc_ax=acc_ax,
                                      linestyle=style, linewidth=1.0, alpha=0.6)
        ax.set_title(f"WD={wd:g}: solid BS={p.batch_sizes[0]}, dashed BS={p.batch_sizes[1]} (linear loss axis)",
                     fontsize=9)
        ax.set_xlabel("alpha (filter-normalized direction)")
        ax.set_ylabel("loss")
        acc_ax.set_ylabel("accuracy (%)")
    # one legend for both 1D panels (their lines are named alike), at the foot, clear of every curve
    fig.legend(lines, [line.get_label() for line in lines], fontsize=7, ncol=4, loc="outside lower center")
    levels, scale = contour_levels(p.contour_levels, p.log_levels, log)
    for j, row in enumerate(rows):
        s = surfaces[(row["batch_size"], row["weight_decay"])]["2d"]
        ax = fig.add_subplot(grid[1, j])
        cs = artists.contour(ax, s.x, s.y, s.values["train_loss"], levels=levels, linewidths=1.2)
        fig.colorbar(cs, ax=ax, shrink=0.8, label=f"train loss ({scale} levels)")
        ax.set_xlabel("alpha")
        ax.set_ylabel("beta")
        ax.set_aspect("equal")
        ax.set_title(title(row["batch_size"], row["weight_decay"], row) + f"\nlambda_max={row['lambda_max']:.3g}, "
                     f"width {'>= ' if row.get('width_capped') else ''}{row['width']:.3g} +- "
                     f"{row['width_stderr']:.2g}", fontsize=8)
    fig.suptitle(f"Train loss around each minimum: 2D contours at the same {scale} levels "
                 f"({levels[0]:.3g} to {levels[-1]:.3g}); wider rings, flatter minimum", fontsize=10)
    files = render.save(fig, os.path.join(out, "flat_vs_sharp"))
    fig, axes = plt.subplots(1, n_wd, figsize=(5 * n_wd, 3.8), squeeze=False, layout="constrained")
    for ax, wd in zip(axes[0], p.weight_decays):
        for style, bs in zip(("-", "--"), p.batch_sizes):
            s = surfaces[(bs, wd)]["raw"]
            artists.curve_1d(ax, s.x, s.values["train_loss"], None, label=f"BS={bs} train", linestyle=style)
        ax.set_title(f"WD={wd:g}, no filter normalization", fontsize=9)
        ax.set_xlabel("alpha (raw Gaussian direction)")
        ax.locator_params(axis="x", nbins=5)  # "-0.100" ticks run together at the default density
        ax.set_ylabel("train loss")
        ax.legend(fontsize=7)
    return files + render.save(fig, os.path.join(out, "no_filter_norm"))




def pages(surfaces: dict[tuple[int, float], dict[str, Surface]], p: Preset, out: str) -> list[str]:
    """One interactive 3D page per 2D panel (landscape.output.viewers), to turn each minimum in one's hands; its
    losses' contours at the figure's linear levels, on every page alike."""
    from landscape.output import viewers

    os.makedirs(os.path.join(out, "pages"), exist_ok=True)
    levels, _ = contour_levels(p.contour_levels, p.log_levels)
    return [viewers.write_html(v["2d"], os.path.join(out, "pages", f"{run_name(bs, wd)}_2d.html"),
                               f"WD={wd:g}, BS={bs}", levels=dict.fromkeys(v["2d"].loss_metrics(), levels))
            for (bs, wd), v in surfaces.items()]


MEASURES = ("lambda_max", "lambda_min", "trace", "epsilon", "adaptive", "average", "width")
SHARPER = {"lambda_max": 1, "trace": 1, "epsilon_sharpness_0.001": 1, "epsilon_sharpness_0.0005": 1,
           "adaptive_sharpness": 1, "average_sharpness": 1, "width": -1, "width_1d": -1}  # +1: larger is sharper
COLUMNS = ["batch_size", "weight_decay", "train_loss", "train_acc", "test_loss", "test_acc", "test_error",
           "lambda_max", "lambda_min", "trace", "trace_stderr", "epsilon_sharpness_0.001", "epsilon_sharpness_0.0005",
           "adaptive_sharpness", "average_sharpness", "average_sharpness_stderr", "width", "width_stderr",
           "width_min", "width_max", "width_capped", "width_1d", "width_1d_nofilternorm"]


def sharpness_of(ckpt: str, tag: str, p: Preset, info: DistInfo, out: str, device: str) -> dict[str, float]:
    """The run's sharpness table (landscape.sharpness), as summary columns: value, and _stderr where it has one."""
    cfg = SurfaceConfig(checkpoint=ckpt, splits=("train",), samples=p.samples, device=device,
                        out=os.path.join(out, "sharpness"), name=tag, progress=False)
    sc = SharpnessConfig(measures=MEASURES, trace_products=p.trace_products, width_directions=p.width_directions,
                         threshold=p.width_threshold, x=p.x_1d)
    cols: dict[str, float] = {}
    for r in run_sharpness(cfg, sc, info, log=lambda _: None).rows:
        cols[r["measure"]], cols[r["measure"] + "_stderr"] = r["value"], r["stderr"]
        if r["measure"] == "width":
            cols["width_min"], cols["width_max"] = r["settings"]["min"], r["settings"]["max"]
            cols["width_capped"] = r["settings"].get("capped", 0)  # directions whose basin outgrew the axis
    return cols


def summarize(runs: dict[tuple[int, float], str], surfaces: dict[tuple[int, float], dict[str, Surface]],
              p: Preset, info: DistInfo, out: str, device: str) -> list[dict[str, Any]]:
    """One row per run, on rank 0 (none on the other ranks, which take part in measuring the sharpness)."""
    rows = []
    for (bs, wd), ckpt in runs.items():
        sharp = sharpness_of(ckpt, run_name(bs, wd), p, info, out, device)
        if not info.is_main:
            continue
        metrics = surfaces[(bs, wd)]["1d"].origin.metrics  # the checkpoint's own, as its surface file recorded them
        s, raw = surfaces[(bs, wd)]["1d"], surfaces[(bs, wd)]["raw"]
        rows.append({"batch_size": bs, "weight_decay": wd, **{k: metrics[k] for k in COLUMNS[2:6]},
                     "test_error": 100 - metrics["test_acc"], **sharp,
                     **({"test_ppl": metrics["test_ppl"]} if "test_ppl" in metrics else {}),
                     "width_1d": width_1d(s.x, s.values["train_loss"], p.width_threshold),
                     "width_1d_nofilternorm": width_1d(raw.x, raw.values["train_loss"], p.width_threshold)})
    return rows


def write_table(rows: list[dict[str, Any]], path: str) -> str:
    """summary.csv, and the same table as text for the terminal: one line per column, one column per run."""
    columns = COLUMNS + (["test_ppl"] if "test_ppl" in rows[0] else [])  # a language model's perplexity
    write_csv(path, rows, columns, float_format=".6g")
    lines = []
    for c in columns:
        cells = [f"{r[c]:>12.4g}" if isinstance(r[c], float) else f"{str(r[c]):>12}" for r in rows]
        lines.append(f"{c:>26} " + " ".join(cells))
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], p: Preset) -> str:
    """Plain words, per weight decay: which measures rank the large-batch minimum as sharper, and does the small
    batch generalize better?"""
    lines = []
    by = {(r["batch_size"], r["weight_decay"]): r for r in rows}
    small, large = p.batch_sizes
    for wd in p.weight_decays:
        a, b = by[(small, wd)], by[(large, wd)]
        says = [f"{m} {a[m]:.3g} vs {b[m]:.3g} ({'yes' if sign * (b[m] - a[m]) > 0 else 'NO'})"
                for m, sign in SHARPER.items()]
        agree = sum(sign * (b[m] - a[m]) > 0 for m, sign in SHARPER.items())
        j = p.judge
        unit = "%" if j == "test_error" else ""
        lines.append(f"WD={wd:g}, BS={small} vs BS={large}: large batch sharper by {agree} of {len(SHARPER)} measures: "
                     f"{'; '.join(says)}. {j.replace('_', ' ').capitalize()} {a[j]:.4g}{unit} vs {b[j]:.4g}{unit} -> "
                     f"small batch {'generalizes better' if a[j] < b[j] else 'does NOT generalize better'}")
    return "\n".join(lines)


def get_parser(add_help: bool = True) -> ArgumentParser:
    parser = preset_parser("python -m figures.flat_vs_sharp", __doc__, PRESETS, "figures_out/flat_vs_sharp",
                           add_help)
    parser.add_argument("--log-contours", action="store_true",
                        help="log-spaced 2D contour levels (the preset's log_levels) instead of Li et al.'s linear "
                             "0.1 to 10 by 0.5; the figure's title says which")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    preset = chosen_preset(args, PRESETS)
    with process_group(args.device) as info, exclusive_output(args.out, info):
        runs = train_runs(preset, args.out, info, args.device)
        surfaces = {k: surfaces_for(c, run_name(*k), preset, args.out, info, args.device) for k, c in runs.items()}
        rows = summarize(runs, surfaces, preset, info, args.out, args.device)
        if not info.is_main:
            return
        files = compose(rows, surfaces, preset, args.out, args.log_contours) + pages(surfaces, preset, args.out)
        table = write_table(rows, os.path.join(args.out, "summary.csv"))
    print0(f"\n{table}\n\n{verdict(rows, preset)}\n")
    print0(f"figures: {', '.join(files)}\ntable: {os.path.join(args.out, 'summary.csv')}\n"
           f"data: {os.path.join(args.out, 'surfaces')}/*.h5, {os.path.join(args.out, 'runs')}/")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
