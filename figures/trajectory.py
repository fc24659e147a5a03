"""Li et al. (2018) Fig. 9: the paths of a small-batch and a large-batch run, each drawn on the plane of its own
checkpoints' two leading principal components, over the loss of that plane.

  python -m figures.trajectory --preset quick --out figures_out/trajectory     # MNIST-1D MLP, minutes on 2 cores
  torchrun --standalone --nproc_per_node=8 -m figures.trajectory --preset paper --out fig9   # VGG-9, CIFAR-10

Trains (or reuses) the runs with a checkpoint every epoch, computes (or resumes) each trajectory's surface, then
writes trajectory.{png,pdf}, an interactive trajectory_<run>.html per run, summary.csv (explained variance, path
length) and the .h5 files behind every panel.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from figures.common import chosen_preset, contour_levels, preset_parser
from landscape.base import ArgumentParser, SurfaceConfig, run_cli, write_csv
from landscape.core import Surface
from landscape.pipelines import run_surface
from landscape.runtime import exclusive_output, print0, process_group
from trainers.config import TrainConfig
from trainers.sweep import run_name, sweep


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    batch_sizes: tuple[int, ...]  # small, large
    weight_decay: float
    epochs: int
    lr: float
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    micro_batch_size: int | None = None
    points: int = 31  # per axis of each plane
    samples: int | None = None  # evaluation subset of each split (None: all)
    contour_levels: tuple[float, float, float] = (0.1, 10.0, 0.5)  # arange: Li et al.'s linear levels, every panel
    log_levels: tuple[float, float, int] = (0.02, 5.0, 15)  # geomspace, with --log-contours (the title says so)


PRESETS = {
    "quick": Preset(dataset="mnist1d", model="mlp", batch_sizes=(64, 1000), weight_decay=5e-4, epochs=40, lr=0.05,
                    model_kwargs={"hidden": [100, 100]}),
    "paper": Preset(dataset="cifar10", model="vgg9", batch_sizes=(128, 8192), weight_decay=5e-4, epochs=300, lr=0.1,
                    schedule="step", milestones=(150, 225, 275), micro_batch_size=512, points=51, samples=10000),
    "smoke": Preset(dataset="synthetic", model="mlp", batch_sizes=(16, 256), weight_decay=5e-4, epochs=4, lr=0.05,
                    data_kwargs={"n_train": 512, "n_test": 256}, model_kwargs={"hidden": [16]}, points=5),
}


def train_runs(p: Preset, out: str, info: Any, device: str) -> list[str]:
    base = TrainConfig(out="", dataset=p.dataset, data_kwargs=p.data_kwargs, model=p.model,
                       model_kwargs=p.model_kwargs, epochs=p.epochs, lr=p.lr, schedule=p.schedule,
                       milestones=p.milestones, micro_batch_size=p.micro_batch_size, save_every=1, device=device,
                       progress=False, log_every=max(1, p.epochs // 4))
    return sweep(base, os.path.join(out, "runs"), p.batch_sizes, (p.weight_decay,), info)


def trajectory_surface(run: str, p: Preset, out: str, info: Any, device: str) -> Surface | None:
    ckpts = sorted(glob.glob(os.path.join(run, "epoch_*.pt")))
    cfg = SurfaceConfig(ckpts[-1], trajectory=tuple(ckpts[:-1]), plane_points=p.points, samples=p.samples,
                        device=device, progress=False, out=os.path.join(out, "surfaces"), name=os.path.basename(run))
    done = run_surface(cfg, info, share=False)
    print0(f"trajectory of {run}: {done.computed} points computed, {done.already_done} reused -> {done.path}")
    return done.surface


def compose(surfaces: dict[int, Surface], p: Preset, out: str, log: bool = False) -> list[str]:
    """One panel per run: train-loss contours of its PCA plane at the same linear levels (log-spaced with `log`),
    the path with epoch labels, the variance each axis explains."""
    from landscape.drawing import artists
    from landscape.output import render

    plt = render.plt
    fig, axes = plt.subplots(1, len(surfaces), figsize=(5.4 * len(surfaces), 4.4), squeeze=False,
                             layout="constrained")
    levels, scale = contour_levels(p.contour_levels, p.log_levels, log)
    for ax, (bs, s) in zip(axes[0], surfaces.items()):
        cs = artists.contour(ax, s.x, s.y, s.values["train_loss"], levels=levels)
        fig.colorbar(cs, ax=ax, label=f"train loss ({scale} levels)")
        m = s.annotations.markers
        artists.markers(ax, m.coords, [n.replace("epoch ", "") for n in m.names], m.kind)
        xlabel, ylabel = s.axis_names()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"BS={bs}, WD={p.weight_decay:g}: {len(m.names) - 1} epochs, test error "
                     f"{100 - s.origin.metrics['test_acc']:.1f}%", fontsize=9)
    return render.save(fig, os.path.join(out, "trajectory"))


def pages(surfaces: dict[int, Surface], p: Preset, out: str) -> list[str]:
    """An interactive page per run: its plane's surface in 3D with the path drawn on it (output.viewers), its
    losses' contours at the figure's linear levels."""
    from landscape.output import viewers

    levels, _ = contour_levels(p.contour_levels, p.log_levels)
    return [viewers.write_html(s, os.path.join(out, f"trajectory_{run_name(bs, p.weight_decay)}.html"),
                               f"BS={bs}, WD={p.weight_decay:g}: the path on its PCA plane",
                               levels=dict.fromkeys(s.loss_metrics(), levels))
            for bs, s in surfaces.items()]


def summarize(surfaces: dict[int, Surface], out: str) -> str:
    rows = []
    for bs, s in surfaces.items():
        c, r = s.annotations.markers.coords, s.annotations.explained_variance_ratio
        rows.append({"batch_size": bs, "checkpoints": len(c), "pc1_explained": r[0], "pc2_explained": r[1],
                     "path_length_on_plane": float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()),
                     "test_error": 100 - s.origin.metrics["test_acc"]})
    path = os.path.join(out, "summary.csv")
    write_csv(path, rows, list(rows[0]), ".4g")
    return "\n".join(f"BS={r['batch_size']}: PC1 {100 * r['pc1_explained']:.1f}% + PC2 {100 * r['pc2_explained']:.1f}%"
                     f" of the path's variance, test error {r['test_error']:.1f}%" for r in rows)


def get_parser(add_help: bool = True) -> ArgumentParser:
    parser = preset_parser("python -m figures.trajectory", __doc__, PRESETS, "figures_out/trajectory", add_help)
    parser.add_argument("--log-contours", action="store_true",
                        help="log-spaced contour levels (the preset's log_levels) instead of Li et al.'s linear 0.1 "
                             "to 10 by 0.5; the colourbar says which")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    preset = chosen_preset(args, PRESETS)
    with process_group(args.device) as info, exclusive_output(args.out, info):
        runs = train_runs(preset, args.out, info, args.device)
        surfaces = {bs: trajectory_surface(r, preset, args.out, info, args.device)
                    for bs, r in zip(preset.batch_sizes, runs)}
        if not info.is_main:
            return
        files = compose(surfaces, preset, args.out, args.log_contours) + pages(surfaces, preset, args.out)
        summary = summarize(surfaces, args.out)
    print0(f"\n{summary}\n")
    print0(f"figures: {', '.join(files)}\ntable: {os.path.join(args.out, 'summary.csv')}\n"
           f"data: {os.path.join(args.out, 'surfaces')}/*.h5, {os.path.join(args.out, 'runs')}/ "
           f"({', '.join(run_name(bs, preset.weight_decay) for bs in preset.batch_sizes)})")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
