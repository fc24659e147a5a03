"""The loss along the Hessian's top eigenvector against the loss along random filter-normalized directions, on one
axis: the sharpest direction there is, against the directions the paper's plots use (both scaled alike: alpha = 1
moves the weights by the norm of a filter-normalized direction).

  python -m figures.hessian_directions runs/a/last.pt --out figures_out/hessian_directions
  python -m figures.hessian_directions demo/runs/mnist1d_mlp/bs1000_wd0/last.pt --random 8 --x=-0.5:0.5:41

Writes hessian_directions.{png,pdf} and the .h5 file behind every curve; rerunning reuses them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from landscape.base import DEVICES, HESSIAN, ArgumentParser, DefaultsFormatter, SurfaceConfig, run_cli, run_tag
from landscape.pipelines import run_surface
from landscape.runtime import exclusive_output, process_group


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = ArgumentParser(prog="python -m figures.hessian_directions", description=__doc__,
                       formatter_class=DefaultsFormatter, add_help=add_help)
    p.add_argument("checkpoint")
    p.add_argument("--random", type=int, default=5, help="random directions (seeds 0..N-1)")
    p.add_argument("--x", default="-0.5:0.5:31", help="alpha axis MIN:MAX:NUM")
    p.add_argument("--samples", type=int, default=None, help="evaluate a fixed subset of N samples per split")
    p.add_argument("--out", default="figures_out/hessian_directions")
    p.add_argument("--device", choices=DEVICES, default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    common = dict(checkpoint=args.checkpoint, x=args.x, samples=args.samples, splits=("train",), progress=False,
                  device=args.device, out=os.path.join(args.out, "surfaces"))
    cfgs = [SurfaceConfig(**common, directions_file=HESSIAN, name=run_tag(args.checkpoint) + "_hessian")]
    cfgs += [SurfaceConfig(**common, seed=i, name=f"{run_tag(args.checkpoint)}_seed{i}") for i in range(args.random)]
    with process_group(args.device) as info, exclusive_output(args.out, info):
        surfaces = [run_surface(cfg, info, share=False).surface for cfg in cfgs]
        if info.is_main:
            draw(surfaces, args.out)


def draw(surfaces: list, out: str) -> None:
    """The top eigenvector's curve over the random directions' curves, saved with their data."""
    from landscape.output import render

    fig, ax = render.plt.subplots(figsize=(6, 4))
    top, *randoms = surfaces
    for i, s in enumerate(randoms):
        ax.plot(s.x, s.values["train_loss"], color="0.6", linewidth=1.0,
                label="random filter-normalized" if i == 0 else None)
    ax.plot(top.x, top.values["train_loss"], color="tab:red", linewidth=2.2, label=top.annotations.axis_labels[0])
    ax.set_xlabel("alpha (both kinds scaled to the same norm)")
    ax.set_ylabel("train loss")
    ax.legend(fontsize=7)
    ax.set_title(f"{render.describe(top)}: top eigenvector vs {len(randoms)} random directions", fontsize=9)
    files = render.save(fig, os.path.join(out, "hessian_directions"))
    print(f"figures: {', '.join(files)}\ndata: {os.path.join(out, 'surfaces')}/*.h5", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
