r"""Branched training (Merrill et al. 2025, "Critical batch size revisited"): a run's local critical batch,
measured from its checkpoints.

From the checkpoint of epoch E (its weights, optimizer state, schedule and RNG state), the run is continued for
--samples samples at k times its global batch, once per factor k, by k times the accumulation steps over the same
micro-batches in the same order: a branch at k takes 1/k of the steps. The learning rate is the run's schedule
at the same samples seen, times k (--lr-rule linear, the rule for SGD) or sqrt(k) (sqrt, Adam's); the optimizer's
state is kept as it is. The k = 1 branch is the run itself, continued: bit for bit on a CPU.

Each branch's loss is the exponential moving average of its steps' training losses (--smoothing, 0.5 as Merrill et
al.), or its test loss at the end (--loss test). The local critical batch at E is the largest k x B whose loss
is within --tolerance of k = 1's. Every finished branch is cached in OUT (default RUN_DIR/branches) and reused:
a killed study resumes where it stopped.

  python -m trainers.branch runs/bs64 --at 1 2 5 10 --factors 1 2 4 8 --samples 16000 --lr-rule linear
  torchrun --standalone --nproc_per_node=2 -m trainers.branch runs/bs64 --at 5 --factors 1 2 4 --samples 8192

Writes OUT/at<E>_k<k>.json per branch, OUT/local_critical_batch.csv (one row per --at: samples seen, each
factor's loss, the local critical batch, and B_simple and lambda_max from the run's log where it tracked them)
and OUT/local_critical_batch.{png,pdf}.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from landscape.base.config import DEVICES
from landscape.base.errors import ConfigError, UserError
from landscape.base.files import read_cached, write_cached, write_csv
from landscape.base.flags import ArgumentParser, config_from_args, config_parser, option, run_cli
from landscape.core.fingerprint import tensors_sha256
from landscape.data.datasets import Dataset, load_dataset
from landscape.models import checkpoint_file as ckpt_io
from landscape.optim.builders import BatchPlan, scaled_lr
from landscape.optim.divergence import DivergenceWatch
from landscape.optim.step import train_step, wrap_model
from landscape.runtime.distributed import DistInfo, all_reduce_sum, exclusive_output, print0, process_group
from landscape.runtime.forward import resolve_precision
from trainers.config import TrainConfig, optimizer_of, plan_of, run_length
from trainers.loop import build_run, epoch_order, evaluate, micro_batches, run_sampler, to_device
from trainers.run_files import read_log, restore_rng_state

LR_RULES = ("linear", "sqrt", "none")
LOSSES = ("train", "test")


@dataclass(frozen=True, kw_only=True)
class BranchConfig:
    """A branched-training study of one run; every field but `run` is a flag of `python -m trainers.branch`."""

    run: str  # the run folder (trainers.train's --out) whose epoch_N.pt checkpoints the branches start from
    samples: int = option(help="training samples every branch takes (a whole number of steps at every factor)",
                          metavar="N")
    at: tuple[int, ...] = option((), "epochs to branch from: the run's epoch_N.pt files (kept every --save-every "
                                 "epochs; epoch 0 is the initialization)", metavar="EPOCH")
    factors: tuple[int, ...] = option((1, 2, 4, 8), "multiples of the run's global batch, 1 (the reference) "
                                      "included", metavar="K")
    lr_rule: str = option("linear", "the learning rate of a branch at k times the batch: the run's times k "
                          "(linear, SGD's rule), times sqrt(k) (sqrt, Adam's), or the run's (none)", choices=LR_RULES)
    loss: str = option("train", "what a branch is judged by: the moving average of its training losses (train) or "
                       "its test loss at the end (test)", choices=LOSSES)
    smoothing: float = option(0.5, "the moving average of the training losses: s = ALPHA x loss + (1 - ALPHA) x s "
                              "(Merrill et al.'s 0.5)", metavar="ALPHA")
    tolerance: float = option(0.01, "a branch is as good as k = 1's when its loss exceeds it by at most this much")
    out: str | None = option(None, "folder of the branches and the result (default: RUN_DIR/branches)", metavar="DIR")
    device: str = option("auto", "auto: cuda:LOCAL_RANK when CUDA is there, else the CPU", choices=DEVICES)

    def __post_init__(self) -> None:
        checks = [(len(self.at) > 0, "give --at: the epochs whose checkpoints to branch from"),
                  (all(e >= 0 for e in self.at), f"--at {' '.join(map(str, self.at))}: epochs are >= 0"),
                  (all(k >= 1 for k in self.factors), f"--factors {' '.join(map(str, self.factors))}: every factor "
                   "must be a whole number >= 1"),
                  (1 in self.factors, "--factors must include 1, the run itself, which the others are compared with"),
                  (self.samples >= 1, f"--samples must be >= 1, got {self.samples}"),
                  (0 < self.smoothing <= 1 and math.isfinite(self.smoothing),
                   f"--smoothing must be in (0, 1], got {self.smoothing:g}"),
                  (self.tolerance >= 0 and math.isfinite(self.tolerance),
                   f"--tolerance must be a finite number >= 0, got {self.tolerance:g}")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def folder(self) -> str:
        return self.out or os.path.join(self.run, "branches")


def lr_factor(k: int, rule: str) -> float:
    """The learning rate's multiplier at k times the batch (landscape.optim.scaled_lr's rules)."""
    return 1.0 if rule == "none" else scaled_lr(1.0, k, 1, rule)


def smoothed(losses: Sequence[float], alpha: float) -> float:
    """The exponential moving average's last value, started at the first loss; inf if a loss was not finite."""
    s = None
    for v in losses:
        if not math.isfinite(v):
            return math.inf
        s = v if s is None else alpha * v + (1 - alpha) * s
    return math.inf if s is None else s


def local_critical_batch(losses: dict[int, float], batch: int, tolerance: float) -> int:
    """The largest k x batch whose loss is within `tolerance` of k = 1's ({k: loss}); the run's own batch when
    k = 1's is not finite (the run itself diverged there: nothing larger is known to keep up)."""
    reference = losses[1]
    if not math.isfinite(reference):
        return batch
    return batch * max(k for k, v in losses.items() if v <= reference + tolerance)


@dataclass(frozen=True)
class Start:
    """A checkpoint a branch starts from, checked: the run's config, its state and where it is."""

    epoch: int
    path: str
    sha256: str
    cfg: TrainConfig
    state: dict[str, Any]


def load_start(run: str, epoch: int) -> Start:
    """The run's checkpoint of `epoch`, refused in one line when it is missing (naming those there are), was not
    written by the trainer, or lacks the optimizer state a branch continues."""
    path = os.path.join(run, f"epoch_{epoch:04d}.pt")
    if not os.path.exists(path):
        kept = sorted(int(f[6:-3]) for f in os.listdir(run) if f.startswith("epoch_") and f.endswith(".pt")
                      and f[6:-3].isdigit()) if os.path.isdir(run) else []
        have = f"it has epochs {', '.join(map(str, kept))}" if kept else "it has no epoch_N.pt checkpoints"
        raise UserError(f"--at {epoch}: no {path}; {have} (the trainer keeps one every --save-every epochs)")
    state, sha = ckpt_io.read_checkpoint(path)
    missing = [k for k in ("train_config", "optimizer", "scheduler", "rng", "step") if k not in state]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}: a branch continues a run of trainers.train with its "
                        "optimizer state; branch from a trainer's run folder")
    stored = dict(state["train_config"])
    cfg = TrainConfig(**{**stored, "milestones": tuple(stored["milestones"]), "betas": tuple(stored["betas"])})
    for flag, value in (("--batch-ramp", cfg.batch_ramp), ("--batch-schedule", cfg.batch_schedule), ("--sam", cfg.sam),
                        ("--regime-adaptation", cfg.regime_adaptation or None)):
        if value is not None:
            raise UserError(f"{path} was trained with {flag}; trainers.branch continues plain runs (one batch size, "
                            "the trainer's step) only")
    return Start(epoch, path, sha, cfg, state)


def checked_budget(cfg: BranchConfig, plan: BatchPlan, starts: list[Start], run_steps: int) -> None:
    """The sample budget is a whole number of steps at every factor, at least one at the largest, and within the
    run's schedule (past its last step only a constant schedule has values)."""
    largest = max(cfg.factors) * plan.global_batch_size
    if cfg.samples < largest:
        raise ConfigError(f"--samples {cfg.samples} is less than one step at the largest factor ({max(cfg.factors)} x "
                          f"{plan.global_batch_size} = {largest} samples); give at least {largest}")
    unit = math.lcm(*cfg.factors) * plan.global_batch_size
    if cfg.samples % unit:
        raise ConfigError(f"--samples {cfg.samples} is not a whole number of steps at every factor; give a multiple "
                          f"of {unit} (the factors' least common multiple x the batch {plan.global_batch_size})")
    last = max(int(st.state["step"]) for st in starts) + cfg.samples // plan.global_batch_size
    if starts[0].cfg.schedule != "constant" and last > run_steps:
        raise ConfigError(f"--samples {cfg.samples} from epoch {max(st.epoch for st in starts)} runs past the run's "
                          f"last step ({run_steps}), where its {starts[0].cfg.schedule} schedule ends; give fewer "
                          "--samples or an earlier --at")


def micro_stream(data: Dataset, cfg: TrainConfig, plan: BatchPlan, first_epoch: int, info: DistInfo
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """The run's micro-batches from `first_epoch` on, in the order the run takes them (epoch by epoch, each epoch's
    remainder dropped, augmented from the epoch's generator): a branch groups them k x accumulation at a time."""
    sampler, epoch = run_sampler(len(data.x_train), cfg, info), first_epoch
    while True:
        idx, gen = epoch_order(data, sampler, cfg, epoch, info)
        for step in range(plan.steps_per_epoch):
            yield from micro_batches(data, idx[step * plan.per_rank_batch_size:(step + 1) * plan.per_rank_batch_size],
                                     plan, gen, info.device)
        epoch += 1


def run_branch(start: Start, k: int, cfg: BranchConfig, data: Dataset, info: DistInfo) -> dict[str, Any]:
    """One branch: the run continued from `start` for cfg.samples samples at k times its batch. Returns its record
    (the same on every rank): its steps' losses, smoothed, its test loss at the end, the hash of its weights, and
    the step where it diverged (a non-finite loss or weights), if it did."""
    model, plan, length = build_run(start.cfg, data, info)
    model.load_state_dict(start.state["state_dict"])
    opt, sched = optimizer_of(model, start.cfg, plan, length)
    # load_state_dict keeps the stored momentum tensors (same dtype and device) and the steps update them in place:
    # a copy, so that every branch from this start begins from the checkpoint's state, not the last branch's
    opt.load_state_dict(copy.deepcopy(start.state["optimizer"]))
    sched.load_state_dict(start.state["scheduler"])
    restore_rng_state(start.state["rng"], info.device)
    f = lr_factor(k, cfg.lr_rule)
    sched.base_lrs = [b * f for b in sched.base_lrs]  # the schedule's every later value, scaled
    for group in opt.param_groups:
        group["lr"] *= f  # and the current one
    ddp_model = wrap_model(model, info)
    precision, watch = resolve_precision(start.cfg.precision, info.device), DivergenceWatch(model, info)
    steps, accumulation = cfg.samples // (k * plan.global_batch_size), k * plan.accumulation_steps
    stream = micro_stream(data, start.cfg, plan, start.epoch, info)
    losses: list[Tensor] = []
    diverged = None
    ddp_model.train()
    for step in range(steps):
        before, lr = len(losses), opt.param_groups[0]["lr"]
        train_step(ddp_model, opt, sched, itertools.islice(stream, accumulation), accumulation_steps=accumulation,
                   precision=precision, info=info, losses=losses)
        for _ in range(k - 1):  # the schedule follows the samples seen: k of the run's steps per branch step
            sched.step()
        bad = watch.after_step(step + 1, losses[before:], lr)
        if bad is None and step + 1 == steps:
            bad = watch.check()
        if bad is not None:
            diverged = bad[0]
            break
    per_step = torch.stack(losses).float().reshape(-1, accumulation).mean(1)
    per_step = all_reduce_sum(per_step.to(torch.float64)) / info.world_size
    step_losses = [float(v) for v in per_step.cpu()]
    test = evaluate(model, data, info, start.cfg.eval_batch_size) if diverged is None else {}
    return {"at_epoch": start.epoch, "at_step": int(start.state["step"]), "factor": k,
            "global_batch_size": k * plan.global_batch_size, "lr_factor": f, "steps": len(step_losses),
            "samples": len(step_losses) * k * plan.global_batch_size, "step_losses": step_losses,
            "test_loss": test.get("test_loss"), "test_acc": test.get("test_acc"), "diverged_at_step": diverged,
            "weights_sha256": tensors_sha256(model.state_dict()), "checkpoint_sha256": start.sha256,
            "lr_rule": cfg.lr_rule}


def branch_loss(record: dict[str, Any], cfg: BranchConfig) -> float:
    """What a branch is judged by (cfg.loss); inf for one that diverged."""
    if record["diverged_at_step"] is not None:
        return math.inf
    if cfg.loss == "test":
        return float(record["test_loss"])
    return smoothed(record["step_losses"], cfg.smoothing)


def cached_branch(start: Start, k: int, cfg: BranchConfig, data: Dataset, info: DistInfo) -> dict[str, Any]:
    """A branch's record, from OUT when it finished before with the same checkpoint bytes, samples, lr rule and
    ranks, else run and written there atomically (rank 0). A branch of other settings is refused, never mixed."""
    path = os.path.join(cfg.folder, f"at{start.epoch:04d}_k{k}.json")
    key = {"checkpoint_sha256": start.sha256, "factor": k, "samples": cfg.samples, "lr_rule": cfg.lr_rule,
           "world_size": info.world_size}
    record = read_cached(path, key)
    if record is not None:
        return record
    if os.path.exists(path):
        raise UserError(f"{path} is a branch of another study (another checkpoint, --samples, --lr-rule or number of "
                        "processes); use another --out, or remove the folder to measure again")
    record = run_branch(start, k, cfg, data, info)
    if info.is_main:
        write_cached(path, key, record)
    return record


def study(cfg: BranchConfig, info: DistInfo) -> list[dict[str, Any]]:
    """Every branch of the study (cached ones reused), and one result row per --at. Checks every input before
    anything is written."""
    starts = [load_start(cfg.run, e) for e in sorted(set(cfg.at))]
    run_cfg = starts[0].cfg
    data = to_device(load_dataset(run_cfg.dataset, run_cfg.data_dir, run_cfg.download, **run_cfg.data_kwargs),
                     info.device)
    plan = plan_of(run_cfg, info.world_size, len(data.x_train))  # the run's batch, without building its model
    checked_budget(cfg, plan, starts, run_length(run_cfg, plan, len(data.x_train)).epochs * plan.steps_per_epoch)
    rows = []
    with exclusive_output(cfg.folder, info):
        for start in starts:
            records = {}
            for k in sorted(set(cfg.factors)):
                records[k] = cached_branch(start, k, cfg, data, info)
                r = records[k]
                state = f"diverged at step {r['diverged_at_step']}" if r["diverged_at_step"] is not None else \
                    f"loss {branch_loss(r, cfg):.4f}"
                print0(f"epoch {start.epoch:>4} k {k:>3} (batch {r['global_batch_size']:>6}, {r['steps']:>5} steps, "
                       f"lr x{r['lr_factor']:.3g}): {state}")
            rows.append(result_row(start, records, plan, cfg))
    return rows


def result_row(start: Start, records: dict[int, dict[str, Any]], plan: BatchPlan, cfg: BranchConfig
               ) -> dict[str, Any]:
    losses = {k: branch_loss(r, cfg) for k, r in records.items()}
    row: dict[str, Any] = {"at_epoch": start.epoch, "at_step": int(start.state["step"]),
                           "samples_seen": int(start.state["step"]) * plan.global_batch_size,
                           "batch_size": plan.global_batch_size,
                           "local_critical_batch": local_critical_batch(losses, plan.global_batch_size, cfg.tolerance)}
    row.update({f"loss_k{k}": v for k, v in losses.items()})
    return row


def tracked(run: str, batch: int) -> dict[str, list[tuple[int, float]]]:
    """What the run's log tracked, against samples seen: each epoch's B_simple (--track-noise), and lambda_max and
    the optimizer's stability threshold (--track-sharpness); empty lists where it tracked nothing."""
    found: dict[str, list[tuple[int, float]]] = {"b_simple": [], "lambda_max": [], "threshold": []}
    for r in read_log(run):
        at = int(r.get("step", 0)) * batch
        if r.get("kind") == "sharpness":
            for k in ("lambda_max", "threshold"):
                if r.get(k) is not None:
                    found[k].append((at, float(r[k])))
        elif "kind" not in r and r.get("noise_b_simple") is not None:
            found["b_simple"].append((at, float(r["noise_b_simple"])))
    return found


def nearest(series: list[tuple[int, float]], at: int) -> float | None:
    """The tracked value nearest to `at` samples seen, or None."""
    return min(series, key=lambda p: abs(p[0] - at))[1] if series else None


def summarize(rows: list[dict[str, Any]], cfg: BranchConfig, factors: list[int]) -> list[str]:
    """OUT/local_critical_batch.csv (each row with B_simple and lambda_max nearest to its point, where tracked) and
    the figure; returns the files written."""
    series = tracked(cfg.run, rows[0]["batch_size"])
    for row in rows:
        row.update({k: nearest(v, row["samples_seen"]) for k, v in series.items()})
    columns = ["at_epoch", "at_step", "samples_seen", "batch_size", "local_critical_batch",
               *(f"loss_k{k}" for k in factors), "b_simple", "lambda_max", "threshold"]
    table = os.path.join(cfg.folder, "local_critical_batch.csv")
    write_csv(table, rows, columns)
    return [table, *draw(rows, series, cfg, factors)]


def draw(rows: list[dict[str, Any]], series: dict[str, list[tuple[int, float]]], cfg: BranchConfig,
         factors: list[int]) -> list[str]:
    """(a) the local critical batch against samples seen, with the run's batch and B_simple; (b) each branch
    point's loss against the branch's batch, k = 1's tolerance band shaded; (c) lambda_max against its threshold,
    when the run tracked it."""
    from landscape.output import render

    panels = 3 if series["lambda_max"] else 2
    fig, axes = render.plt.subplots(1, panels, figsize=(4.8 * panels, 3.8), layout="constrained")
    seen = [r["samples_seen"] for r in rows]
    batch = rows[0]["batch_size"]
    ax = axes[0]
    ax.plot(seen, [r["local_critical_batch"] for r in rows], "o-", color="tab:blue", label="local critical batch")
    ax.axhline(batch, color="0.5", linestyle=":", label=f"the run's batch ({batch})")
    if series["b_simple"]:
        x, y = zip(*series["b_simple"])
        ax.plot(x, y, color="tab:red", linewidth=1.0, label="B_simple (the run's log)")
    ax.set_yscale("log")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("batch size (log scale)")
    ax.set_title(f"(a) local critical batch ({cfg.loss} loss, tolerance {cfg.tolerance:g})", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in rows:
        ks = [k for k in factors if math.isfinite(r[f"loss_k{k}"])]
        (line,) = ax.plot([k * batch for k in ks], [r[f"loss_k{k}"] for k in ks], "o-", markersize=3,
                          label=f"from epoch {r['at_epoch']}")
        ax.axhspan(r["loss_k1"], r["loss_k1"] + cfg.tolerance, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("the branch's batch (k x the run's)")
    ax.set_ylabel(f"{'smoothed train' if cfg.loss == 'train' else 'test'} loss after {cfg.samples} samples")
    ax.set_title("(b) each branch point; shaded: within tolerance of k = 1", fontsize=9)
    ax.legend(fontsize=7)
    if panels == 3:
        ax = axes[2]
        x, y = zip(*series["lambda_max"])
        ax.plot(x, y, color="tab:purple", label="lambda_max")
        if series["threshold"]:
            tx, ty = zip(*series["threshold"])
            ax.plot(tx, ty, color="k", linestyle="--", label="stability threshold")
        for at in seen:
            ax.axvline(at, color="0.8", linewidth=0.8)
        ax.set_xlabel("samples seen")
        ax.set_ylabel("top Hessian eigenvalue")
        ax.set_title("(c) sharpness (the run's log); grey: branch points", fontsize=9)
        ax.legend(fontsize=7)
    return render.save(fig, os.path.join(cfg.folder, "local_critical_batch"))


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = config_parser("python -m trainers.branch", __doc__, add_help, BranchConfig)
    p.add_argument("run", metavar="RUN_DIR", help="the run folder (trainers.train's --out) whose epoch_N.pt "
                   "checkpoints the branches start from")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    cfg = config_from_args(BranchConfig, get_parser().parse_args(argv))
    with process_group(cfg.device) as info:
        rows = study(cfg, info)
        if info.is_main:
            files = summarize(rows, cfg, sorted(set(cfg.factors)))
            for row in rows:
                print(f"epoch {row['at_epoch']} ({row['samples_seen']} samples seen): local critical batch "
                      f"{row['local_critical_batch']} (the run's batch {row['batch_size']})")
            print(f"wrote {', '.join(files)}", flush=True)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
