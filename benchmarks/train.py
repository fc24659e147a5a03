"""Trainer benchmark: images (or tokens) per second of trainers.train's training step against a bare PyTorch loop.

  python benchmarks/train.py

Same model, data tensors, global batch, optimizer and threads, one process, measured side by side in this run:
  trainer: trainers.loop.train_one_epoch (the code `python -m trainers.train` runs), its own timing
  bare:    for each batch: x[idx] -> forward -> cross_entropy -> backward -> SGD step -> zero_grad
           (a language model's logits (B, T, V) and targets (B, T) flattened to tokens, as one writes it)
Epochs alternate between the two; the ratio is the median over epochs of trainer epoch / the bare epoch after
it (the best epoch of each, and their ratio, are printed too). Prints the ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from landscape.data.datasets import load_dataset
from landscape.models.registry import build_model
from landscape.runtime.distributed import DistInfo
from trainers.config import TrainConfig, optimizer_of, plan_of
from trainers.loop import run_state, train_one_epoch

CASES = {  # name: (dataset, dataset kwargs, model, model kwargs, global batch)
    "mlp": ("mnist1d", {}, "mlp", {"hidden": [100, 100]}, 128),
    "resnet20": ("synthetic", {"n_train": 2048, "n_test": 16, "num_classes": 10, "input_shape": [3, 32, 32]},
                 "resnet20", {}, 128),
    "transformer": ("grammar", {"train_tokens": 1 << 17, "val_tokens": 1 << 10}, "transformer_tiny", {}, 64),
}


def bare_epoch(model, opt, x, y, batch: int, gen: torch.Generator) -> float:
    """A plain training loop over one epoch; returns images/second."""
    model.train()
    order = torch.randperm(len(x), generator=gen)
    steps = len(x) // batch
    t0 = time.perf_counter()
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        out = model(x[idx])
        loss = torch.nn.functional.cross_entropy(out.flatten(0, -2), y[idx].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - t0)


def run_case(name: str, epochs: int) -> dict:
    dataset, dkw, model_name, mkw, batch = CASES[name]
    data = load_dataset(dataset, **dkw)
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    cfg = TrainConfig(out="", dataset=dataset, data_kwargs=dkw, model=model_name, model_kwargs=mkw, batch_size=batch,
                      epochs=epochs, lr=0.01, progress=False)
    plan = plan_of(cfg, 1, len(data.x_train))
    torch.manual_seed(0)
    ours = build_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape, **mkw)
    bare = build_model(model_name, num_classes=data.num_classes, input_shape=data.input_shape, **mkw)
    bare.load_state_dict(ours.state_dict())
    opt, sched = optimizer_of(ours, cfg, plan)
    run = run_state(cfg, ours, ours, opt, sched, plan, info=info)
    bare_opt = torch.optim.SGD(bare.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    sampler = DistributedSampler(range(len(data.x_train)), num_replicas=1, rank=0, shuffle=True, seed=0,
                                 drop_last=True)
    gen = torch.Generator().manual_seed(0)
    ours_rates, bare_rates = [], []
    for epoch in range(epochs):
        ours_rates.append(train_one_epoch(run, data, sampler, cfg, epoch, info)["images_per_second"])
        bare_rates.append(bare_epoch(bare, bare_opt, data.x_train, data.y_train, batch, gen))
    # Each trainer epoch against the bare epoch right after it, which met about the same load; the median of
    # these paired ratios is what a shared machine's drifting load disturbs least.
    paired = float(np.median(np.array(ours_rates) / np.array(bare_rates)))
    return {"trainer_images_per_s": max(ours_rates), "bare_images_per_s": max(bare_rates),
            "tokens_per_sample": data.tokens_per_sample,
            "ratio_best": max(ours_rates) / max(bare_rates), "ratio": paired, "epochs": epochs,
            "batch_size": batch, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--epochs", type=int, default=10, help="alternating epochs per side")
    args = p.parse_args()
    results = {}
    for name in args.cases:
        r = run_case(name, args.epochs)
        results[name] = r
        unit, k = ("tok/s", r["tokens_per_sample"]) if r["tokens_per_sample"] > 1 else ("img/s", 1)
        print(f"{name:>11}: trainer {k * r['trainer_images_per_s']:9.0f} {unit}  bare loop "
              f"{k * r['bare_images_per_s']:9.0f} {unit} (best epochs: ratio {r['ratio_best']:.3f})  "
              f"median paired ratio {r['ratio']:.3f}  "
              f"(batch {r['batch_size']}, {r['threads']} threads, {r['epochs']} epochs each)", flush=True)
    print(json.dumps({"ratio": round(min(r["ratio"] for r in results.values()), 3), "per_case": results,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
