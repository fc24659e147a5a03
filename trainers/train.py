"""Train one model and write self-describing checkpoints.

  python -m trainers.train --dataset mnist1d --model mlp --batch-size 128 --weight-decay 5e-4 --epochs 20 --out runs/a
  torchrun --standalone --nproc_per_node=2 -m trainers.train --batch-size 256 --epochs 2 --out runs/b
  torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:29500 --nproc_per_node=8 -m trainers.train \
      --dataset cifar10 --model vgg9 --batch-size 8192 --micro-batch-size 256 --epochs 300 --out runs/vgg9_bs8192
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from landscape.cli import ArgumentParser, DefaultsFormatter, check_writable, run_cli
from landscape.distributed import cleanup_distributed, init_distributed
from trainers.ddp import TrainConfig, fit


def json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r} (example: '{{\"hidden\": [256, 256]}}')") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Every TrainConfig field as a flag (shared by trainers.train and trainers.sweep)."""
    d = TrainConfig(out="")
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=d.dataset, help="mnist1d, synthetic, cifar10, cifar100, mnist, fashion-mnist")
    g.add_argument("--data-kwargs", type=json_dict, default={}, help="JSON options of the dataset")
    g.add_argument("--data-dir", default=None,
                   help="folder of torchvision datasets (default $LANDSCAPE_DATA or ./data)")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--model", default=d.model, help="registered name (see trainers.models) or package.module:callable")
    g.add_argument("--model-kwargs", type=json_dict, default={}, help="JSON keyword arguments of the model")
    g = p.add_argument_group("optimization")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size (all ranks, all micro-batches)")
    g.add_argument("--micro-batch-size", type=int, default=None, help="largest per-rank forward; larger per-rank "
                   "batches use gradient accumulation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--optimizer", choices=["sgd", "adam"], default=d.optimizer)
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (at --base-batch-size if --scale-lr)")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--schedule", choices=["constant", "step", "cosine"], default=d.schedule)
    g.add_argument("--milestones", type=int, nargs="*", default=[], help="epochs where --schedule step decays the lr")
    g.add_argument("--gamma", type=float, default=d.gamma, help="lr decay factor at each milestone")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warmup (Goyal et al.)")
    g.add_argument("--scale-lr", action="store_true", help="linear scaling rule: lr x batch-size / base-batch-size")
    g.add_argument("--base-batch-size", type=int, default=d.base_batch_size)
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("runtime")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (stored metrics are always fp32)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="epochs between full train/test evaluations")
    g.add_argument("--save-every", type=int, default=d.save_every, help="epochs between kept epoch_N.pt files "
                   "(last.pt is written every epoch)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="epochs between printed lines")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    fields = {"dataset": args.dataset, "data_kwargs": args.data_kwargs, "data_dir": args.data_dir,
              "download": args.download, "model": args.model, "model_kwargs": args.model_kwargs,
              "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size, "epochs": args.epochs,
              "optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum, "nesterov": args.nesterov,
              "weight_decay": args.weight_decay, "schedule": args.schedule, "milestones": tuple(args.milestones),
              "gamma": args.gamma, "warmup_epochs": args.warmup_epochs, "scale_lr": args.scale_lr,
              "base_batch_size": args.base_batch_size, "seed": args.seed, "precision": args.precision,
              "device": args.device, "compile": args.compile, "eval_batch_size": args.eval_batch_size,
              "eval_every": args.eval_every, "save_every": args.save_every, "log_every": args.log_every,
              "resume": args.resume,
              "progress": not args.no_progress}
    fields.update(overrides)
    return TrainConfig(**fields)


def get_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m trainers.train", description=__doc__, formatter_class=DefaultsFormatter,
                       add_help=add_help)
    p.add_argument("--out", required=True, help="run folder: epoch_N.pt, last.pt, metrics.jsonl, config.json")
    add_train_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    cfg = config_from_args(args, out=args.out)
    info = init_distributed(cfg.device)
    try:
        if info.is_main:
            check_writable(cfg.out)
        ckpt = fit(cfg, info)
        if info.is_main:
            m = ckpt["metrics"]
            print(f"done: {os.path.join(cfg.out, 'last.pt')}  train loss {m['train_loss']:.4f} acc "
                  f"{m['train_acc']:.2f}%  test loss {m['test_loss']:.4f} acc {m['test_acc']:.2f}%", flush=True)
    finally:
        cleanup_distributed()


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
