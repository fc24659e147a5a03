r"""Train one model and write self-describing checkpoints.

  python -m trainers.train --dataset mnist1d --model mlp --batch-size 128 --weight-decay 5e-4 --epochs 20 --out runs/a
  torchrun --standalone --nproc_per_node=2 -m trainers.train --batch-size 256 --epochs 2 --out runs/b
  torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:29500 --nproc_per_node=8 -m trainers.train \
      --dataset cifar10 --model vgg9 --batch-size 8192 --micro-batch-size 256 --epochs 300 --out runs/vgg9_bs8192
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from landscape.base.flags import ArgumentParser, config_from_args, config_parser, run_cli
from landscape.runtime.distributed import process_group
from trainers.config import TrainConfig
from trainers.loop import fit, metrics_text


def get_parser(add_help: bool = True) -> ArgumentParser:
    return config_parser("python -m trainers.train", __doc__, add_help, TrainConfig)


def main(argv: Sequence[str] | None = None) -> None:
    cfg = config_from_args(TrainConfig, get_parser().parse_args(argv))
    with process_group(cfg.device) as info:
        ckpt = fit(cfg, info)  # the one writer of cfg.out: a second run on it is refused before any work
        if info.is_main:
            print(f"done: {os.path.join(cfg.out, 'last.pt')}  {metrics_text(ckpt['metrics'])}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
