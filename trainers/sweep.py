r"""Train a grid of global batch sizes x weight decays into OUT/<dataset>_<model>/bs<B>_wd<W>/, skipping runs
that are already complete and resuming interrupted ones.

  python -m trainers.sweep --out runs --batch-sizes 128 8192 --weight-decays 0 5e-4 --dataset mnist1d --epochs 20
  torchrun --standalone --nproc_per_node=8 -m trainers.sweep --out runs --dataset cifar10 --model vgg9 \
      --batch-sizes 128 8192 --weight-decays 0 5e-4 --micro-batch-size 512 --epochs 300 --schedule step \
      --milestones 150 225 275
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from landscape.base.flags import ArgumentParser, config_from_args, config_parser, run_cli
from landscape.models.checkpoint_file import load_checkpoint
from landscape.runtime.distributed import DistInfo, exclusive_output, print0, process_group
from trainers.config import TrainConfig
from trainers.loop import fit


def run_name(batch_size: int, weight_decay: float) -> str:
    """bs128_wd0.0005: the same name for the same numbers, whatever way they were written."""
    return f"bs{batch_size}_wd{weight_decay:g}" if weight_decay else f"bs{batch_size}_wd0"


def run_dir(root: str, cfg: TrainConfig) -> str:
    tag = f"{cfg.dataset}_{cfg.model.replace(':', '.').replace('/', '_')}"
    return os.path.join(root, tag, run_name(cfg.batch_size, cfg.weight_decay))


def is_complete(out: str, epochs: int) -> bool:
    """Whether the run in `out` trained all its epochs (its own count: regime adaptation trains more than --epochs;
    checkpoints of 0.7 and earlier do not say it, and ran --epochs)."""
    last = os.path.join(out, "last.pt")
    if not os.path.exists(last):
        return False
    ckpt = load_checkpoint(last)
    return int(ckpt["epoch"]) >= int(ckpt.get("run_epochs", epochs))


def sweep(base: TrainConfig, root: str, batch_sizes: Sequence[int], weight_decays: Sequence[float],
          info: DistInfo) -> list[str]:
    """Train every (batch size, weight decay) pair, as the one writer of `root` (and each run of its folder);
    returns the run folders in grid order."""
    outs = []
    with exclusive_output(root, info):
        for bs in batch_sizes:
            for wd in weight_decays:
                cfg = replace(base, batch_size=bs, weight_decay=wd, resume=True)
                cfg = replace(cfg, out=run_dir(root, cfg))
                outs.append(cfg.out)
                if is_complete(cfg.out, cfg.epochs):
                    print0(f"{cfg.out}: already complete, skipped")
                    continue
                print0(f"== {cfg.out}")
                fit(cfg, info)
    return outs


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = config_parser("python -m trainers.sweep", __doc__, add_help, TrainConfig,
                      skip=("out", "batch_size", "weight_decay", "resume"))  # set per run
    p.add_argument("--out", default="runs", metavar="DIR", help="root folder of the sweep")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 8192], help="global batch sizes")
    p.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 5e-4], help="weight decays")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    base = config_from_args(TrainConfig, args, out="")
    with process_group(base.device) as info:
        outs = sweep(base, args.out, args.batch_sizes, args.weight_decays, info)
        print0("runs:\n  " + "\n  ".join(os.path.join(o, "last.pt") for o in outs))


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
