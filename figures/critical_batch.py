"""Where the batch stops helping: the critical batch size measured as the literature measures it, side by side,
and a batch schedule built from the measurement.

  python -m figures.critical_batch --preset quick --out critical    # MNIST-1D MLP, SGD: minutes on 2 CPU cores
  python -m figures.critical_batch --preset lm --out critical_lm    # the grammar-corpus Transformer, AdamW

1. Shallue et al. (2018)'s protocol: per batch size, a learning-rate search (log-uniform in the preset's range, and
   the momentum with `search_momentum`) of `trials` settings drawn by scipy's Sobol sequence, plus the fixed rule's
   learning rate as one more trial; each trial is a run of the trainer (trainers.target) until the target or
   `max_steps`; the batch's result is its best trial's steps to the target. Every trial is cached (OUT/trials/).
2. The critical batch four ways: Shallue's three regimes fitted to the tuned curve (perfect scaling, diminishing
   returns, maximal data parallelism), Zhang et al. (2024)'s rule (the batch where the steps exceed perfect
   scaling by 20 %), McCandlish et al. (2018)'s B_simple (tracked in the reference run) and B_noise (from Hessian-
   vector products, at a checkpoint), and Merrill et al. (2025)'s local critical batch (trainers.branch) at the
   same point of training.
3. A stepwise batch schedule built from the branched measurement (the batch grows when the local critical batch
   allows), trained beside the fixed small and the fixed large batch (trainers.train's --batch-schedule).

Writes critical_batch.{png,pdf} (a: steps to target against batch with every estimate; b: the best learning rate;
c: the local critical batch during training with B_simple; d: the schedule against the fixed batches, test loss
against steps and against samples), summary.csv (each estimate, its value and how it was obtained),
steps_to_target.csv, schedule.csv, and the closing lines (closing.txt). Reruns reuse every trial and run.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy.stats import qmc

from figures.batch_scaling import hyperbola_fit
from figures.common import chosen_preset, preset_parser
from landscape.base import ArgumentParser, UserError, read_cached, run_cli, write_cached, write_csv, write_text
from landscape.data import Dataset, load_dataset
from landscape.models import load_checkpoint
from landscape.monitoring import estimate_b_noise
from landscape.optim import scaled_lr
from landscape.runtime import DistInfo, exclusive_output, print0, process_group
from trainers.branch import BranchConfig, nearest, study, summarize, tracked
from trainers.config import TrainConfig
from trainers.loop import build_run, fit, to_device
from trainers.run_files import read_log
from trainers.target import Target, train_to_target


@dataclass(frozen=True)
class Preset:
    dataset: str
    model: str
    batch_sizes: tuple[int, ...]
    base_batch_size: int  # the reference batch: the fixed rule's lr is given for it, the branches start from it
    base_lr: float
    lr_rule: str  # linear (SGD) or sqrt (Adam): the fixed rule, the branches' and the schedule's
    lr_range: tuple[float, float]  # the search's log-uniform range, the same at every batch
    trials: int  # Sobol settings per batch size, besides the rule's
    max_steps: int
    target_acc: float | None = None
    target_loss: float | None = None
    eval_samples: int | None = None
    eval_growth: float = 0.02  # the target is checked every max(1, eval_growth x step) steps
    optimizer: str = "sgd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    search_momentum: bool = False  # also search 1 - momentum, log-uniform in momentum_range
    momentum_range: tuple[float, float] = (0.01, 0.5)  # of 1 - momentum
    warmup_epochs: float = 0.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    # the reference run at base_batch_size, its branches (trainers.branch) and the noise scales
    epochs: int = 20  # of the reference run and of the schedule's comparison
    branch_at: tuple[int, ...] = (0, 1, 2, 5, 10, 15)
    branch_factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    branch_samples: int = 8192
    tolerance: float = 0.01
    branch_loss: str = "test"  # what a branch is judged by: its test loss (one full pass) is far less noisy than
    # the moving average of a few small batches' training losses, which a tolerance of 0.01 cannot resolve here
    track_noise: int = 10  # steps between the reference run's B_simple measurements
    track_sharpness: int = 50
    noise_micro_batches: int = 8  # B_noise's micro-batches (of base_batch_size samples)
    seed: int = 0

    def rule_lr(self, batch: int) -> float:
        return scaled_lr(self.base_lr, batch, self.base_batch_size, self.lr_rule)

    @property
    def target(self) -> Target:
        return Target(acc=None if self.target_loss is not None else self.target_acc, loss=self.target_loss,
                      samples=self.eval_samples, growth=self.eval_growth)

    @property
    def point(self) -> int:
        """The branch point where the four estimates are compared: the middle one."""
        return sorted(self.branch_at)[len(self.branch_at) // 2]


LM = dict(dataset="grammar", model="transformer_tiny", optimizer="adamw", betas=(0.9, 0.95), lr_rule="sqrt",
          target_loss=0.75, eval_samples=256, eval_growth=0.05, warmup_epochs=0.0)
PRESETS = {
    "quick": Preset(dataset="mnist1d", model="mlp", model_kwargs={"hidden": [100, 100]},
                    batch_sizes=(16, 32, 64, 128, 256, 512, 1024), base_batch_size=64, base_lr=0.05,
                    lr_rule="linear", lr_range=(0.005, 2.0), trials=8, max_steps=3000, target_acc=55.0),
    "lm": Preset(**LM, batch_sizes=(8, 16, 32, 64, 128, 256, 512), base_batch_size=16, base_lr=2e-3,
                 lr_range=(3e-4, 2e-2), trials=4, max_steps=3000, epochs=4, branch_at=(0, 1, 2, 3),
                 branch_factors=(1, 2, 4, 8), branch_samples=4096, track_noise=20, track_sharpness=100),
    "smoke": Preset(dataset="synthetic", model="mlp", model_kwargs={"hidden": [16]},
                    data_kwargs={"n_train": 512, "n_test": 256, "noise": 2.0}, batch_sizes=(16, 32, 64),
                    base_batch_size=16, base_lr=0.02, lr_rule="linear", lr_range=(0.005, 0.5), trials=2,
                    max_steps=200, target_acc=60.0, eval_growth=0.1, epochs=3, branch_at=(0, 1, 2),
                    branch_factors=(1, 2, 4), branch_samples=256, track_noise=4, track_sharpness=8,
                    noise_micro_batches=4),
}


# 1. Shallue's protocol

def sobol_settings(p: Preset, batch: int) -> list[dict[str, float]]:
    """The search's `trials` settings at one batch size: scipy's scrambled Sobol points (seeded by the preset and
    the batch, so reproducible) mapped log-uniformly onto lr_range (and 1 - momentum onto momentum_range)."""
    dims = 2 if p.search_momentum else 1
    with warnings.catch_warnings():  # a budget that is not a power of 2 loses a little of Sobol's balance: stated
        warnings.simplefilter("ignore", UserWarning)
        points = qmc.Sobol(d=dims, scramble=True, seed=p.seed * 1_000_003 + batch).random(p.trials)
    lo, hi = np.log(p.lr_range)
    settings = [{"lr": float(np.exp(lo + (hi - lo) * u[0])), "momentum": p.momentum} for u in points]
    if p.search_momentum:
        mlo, mhi = np.log(p.momentum_range)
        for s, u in zip(settings, points):
            s["momentum"] = float(1 - np.exp(mlo + (mhi - mlo) * u[1]))
    return settings


def trial_config(p: Preset, batch: int, lr: float, momentum: float, out: str = "") -> TrainConfig:
    """A trial's run: the preset's model, data and optimizer at `batch` with this lr (constant after the warmup)."""
    return TrainConfig(out=out, dataset=p.dataset, data_kwargs=p.data_kwargs, model=p.model,
                       model_kwargs=p.model_kwargs, batch_size=batch, lr=lr, momentum=momentum,
                       optimizer=p.optimizer, betas=p.betas, warmup_epochs=p.warmup_epochs, seed=p.seed,
                       eval_batch_size=4096, progress=False)


def run_trial(p: Preset, batch: int, setting: dict[str, float], data: Dataset, info: DistInfo, out: str
              ) -> dict[str, Any]:
    """One trial (cached in OUT/trials/): steps to the target, or None."""
    key = {"preset": {k: v for k, v in asdict(p).items() if k in TRIAL_FIELDS}, "batch": batch, **setting}
    path = os.path.join(out, "trials", f"bs{batch}_lr{setting['lr']:.6g}_m{setting['momentum']:.6g}.json")
    found = read_cached(path, key)
    if found is None:
        cfg = trial_config(p, batch, setting["lr"], setting["momentum"])
        r = train_to_target(cfg, data, info, p.target, p.max_steps)
        found = {"batch_size": batch, **setting, "steps_to_target": r["steps_to_target"], "steps_run": r["steps_run"],
                 "diverged_at_step": r["diverged_at_step"]}
        if info.is_main:
            write_cached(path, key, found)
    return found


TRIAL_FIELDS = ("dataset", "model", "model_kwargs", "data_kwargs", "optimizer", "betas", "warmup_epochs",
                "max_steps", "target_acc", "target_loss", "eval_samples", "eval_growth", "seed")


def search(p: Preset, data: Dataset, info: DistInfo, out: str) -> list[dict[str, Any]]:
    """Per batch size: the fixed rule's trial, the Sobol trials, the best of them (fewest steps to the target) and by
    how much it beats the rule."""
    rows = []
    for batch in p.batch_sizes:
        rule = run_trial(p, batch, {"lr": p.rule_lr(batch), "momentum": p.momentum}, data, info, out)
        trials = [rule, *(run_trial(p, batch, s, data, info, out) for s in sobol_settings(p, batch))]
        reached = [t for t in trials if t["steps_to_target"] is not None]
        best = min(reached, key=lambda t: (t["steps_to_target"], t["lr"])) if reached else None
        row = {"batch_size": batch, "rule_lr": rule["lr"], "rule_steps": rule["steps_to_target"],
               "best_lr": best["lr"] if best else None, "best_momentum": best["momentum"] if best else None,
               "best_steps": best["steps_to_target"] if best else None, "trials": len(trials),
               "trials_reached": len(reached)}
        row["rule_over_best"] = (rule["steps_to_target"] / best["steps_to_target"]
                                 if best and rule["steps_to_target"] is not None else None)
        rows.append(row)
        print0(f"batch {batch:>5}: rule lr {rule['lr']:.4g} -> {steps_text(rule['steps_to_target'])}; best of "
               f"{len(trials)} trials lr {row['best_lr'] or float('nan'):.4g} -> {steps_text(row['best_steps'])}")
    return rows


def steps_text(steps: int | None) -> str:
    return "not reached" if steps is None else f"{steps} steps"


# 2. The critical batch, four ways

def zhang_critical(batches: np.ndarray, steps: np.ndarray, excess: float = 0.2) -> float:
    """Zhang et al. (2024): the batch where the steps to target exceed perfect scaling from the smallest batch by
    `excess`, interpolated in log-log between the measured batches; nan if none does (or too few points)."""
    ok = np.isfinite(steps)
    b, s = batches[ok], steps[ok]
    if len(b) < 2:
        return float("nan")
    ratio = s * b / (s[0] * b[0])  # 1 under perfect scaling
    over = np.flatnonzero(ratio > 1 + excess)
    if not len(over):
        return float("nan")
    i = over[0]
    if i == 0:
        return float(b[0])
    t = (np.log(1 + excess) - np.log(ratio[i - 1])) / (np.log(ratio[i]) - np.log(ratio[i - 1]))
    return float(np.exp(np.log(b[i - 1]) + t * (np.log(b[i]) - np.log(b[i - 1]))))


def shallue_regimes(batches: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """Shallue et al.'s three regimes fitted to log steps against log batch: slope -1 (perfect scaling) up to b1,
    a straight segment (diminishing returns) to b2, then flat (maximal data parallelism); b1 <= b2 by least
    squares over a grid of breakpoints. (nan, nan) with fewer than 3 points."""
    ok = np.isfinite(steps)
    x, y = np.log(batches[ok]), np.log(steps[ok])
    if len(x) < 3:
        return float("nan"), float("nan")
    grid = np.linspace(x[0], x[-1], 60)
    best, where = np.inf, (float("nan"), float("nan"))
    for i, b1 in enumerate(grid):
        for b2 in grid[i:]:
            # log S = c - x for x <= b1; the line to (b2, v) between; v for x >= b2: linear in (c, v)
            t = np.clip((x - b1) / (b2 - b1), 0, 1) if b2 > b1 else (x > b1).astype(float)
            a = np.stack([1 - t, t], 1)  # c - min(x, b1) and v, blended
            rhs = y + (1 - t) * np.minimum(x, b1)
            coef, *_ = np.linalg.lstsq(a, rhs, rcond=None)
            err = float(np.sum((a @ coef - rhs) ** 2))
            if err < best - 1e-12:
                best, where = err, (float(np.exp(b1)), float(np.exp(b2)))
    return where


def hyperbola(batches: np.ndarray, steps: np.ndarray) -> float:
    """McCandlish et al.'s S = S_min + E_min / B fitted (batch_scaling's relative least squares): the B_crit =
    E_min / S_min."""
    s_min, e_min = hyperbola_fit(batches, steps)
    return e_min / s_min if s_min > 0 and e_min > 0 else float("nan")


def reference_run(p: Preset, out: str, info: DistInfo, device: str) -> str:
    """The base batch's run at the rule's lr, every epoch kept, B_simple and lambda_max tracked (trained or
    resumed): what the branches start from."""
    cfg = replace(trial_config(p, p.base_batch_size, p.base_lr, p.momentum, os.path.join(out, "runs", "reference")),
                  epochs=p.epochs, save_every=1, track_noise=p.track_noise, track_sharpness=p.track_sharpness,
                  track_samples=512, resume=True, device=device, log_every=10 ** 6)
    fit(cfg, info)
    return cfg.out


def b_noise_at(p: Preset, run: str, data: Dataset, info: DistInfo, out: str) -> dict[str, Any]:
    """B_noise and B_simple from the same micro-batches at the comparison point's checkpoint (cached)."""
    path = os.path.join(out, "b_noise.json")
    ckpt_path = os.path.join(run, f"epoch_{p.point:04d}.pt")
    state = load_checkpoint(ckpt_path)
    key = {"checkpoint_step": int(state["step"]), "micro": p.base_batch_size, "n": p.noise_micro_batches,
           "seed": p.seed, "preset": {k: v for k, v in asdict(p).items() if k in TRIAL_FIELDS}}
    found = read_cached(path, key)
    if found is None:
        cfg = trial_config(p, p.base_batch_size, p.base_lr, p.momentum)
        model, _, _ = build_run(cfg, data, info)
        model.load_state_dict(state["state_dict"])
        est = estimate_b_noise(model, data.x_train, data.y_train, p.base_batch_size,
                               torch.Generator().manual_seed(p.seed + 7), n_micro=p.noise_micro_batches,
                               metric=data.metric)
        found = {"b_noise": est.b_noise, "trace_h_sigma": est.trace_h_sigma, "ghg": est.ghg,
                 "b_simple": est.simple.b_simple, "hessian_products": est.products,
                 "gradients": p.noise_micro_batches}
        if info.is_main:
            write_cached(path, key, found)
    return found


# 3. A schedule from the measurement

def derived_schedule(rows: list[dict[str, Any]], base: int, largest: int) -> list[tuple[int, int]]:
    """(batch, first epoch) stages: at each branch point the batch grows to the local critical batch measured there
    (never shrinking, at most `largest`), from `base` at epoch 0."""
    stages, batch = {0: base}, base
    for r in sorted(rows, key=lambda r: r["at_epoch"]):
        allowed = min(largest, max(batch, int(r["local_critical_batch"])))
        if allowed > batch:
            stages[r["at_epoch"]], batch = allowed, allowed
    return [(b, e) for e, b in sorted(stages.items())]


def schedule_runs(p: Preset, stages: list[tuple[int, int]], out: str, info: DistInfo, device: str
                  ) -> dict[str, str]:
    """The fixed small batch (the reference run), the fixed large batch (the schedule's last, at the rule's lr) and
    the schedule (each stage's lr by the rule), trained or resumed for the preset's epochs."""
    large = stages[-1][0] if len(stages) > 1 else max(p.batch_sizes)
    runs = {"fixed small": os.path.join(out, "runs", "reference")}
    base = replace(trial_config(p, large, p.base_lr, p.momentum), base_batch_size=p.base_batch_size,
                   scale_lr=p.lr_rule, epochs=p.epochs, resume=True, device=device, log_every=10 ** 6,
                   save_every=10 ** 6)
    configs = {"fixed large": replace(base, out=os.path.join(out, "runs", f"fixed_{large}"))}
    if len(stages) > 1:
        text = ",".join(f"{b}:{e}" for b, e in stages)
        configs["schedule"] = replace(base, out=os.path.join(out, "runs", "schedule"), batch_schedule=text,
                                      micro_batch_size=p.base_batch_size)
    for name, cfg in configs.items():
        fit(cfg, info)
        runs[name] = cfg.out
    return runs


def run_curve(run: str) -> list[dict[str, Any]]:
    """Each epoch's step, samples seen and test metrics, from the run's log."""
    seen, rows = 0, []
    for r in read_log(run):
        if "kind" in r:
            continue
        steps_before = rows[-1]["step"] if rows else 0
        seen += (r["step"] - steps_before) * r["global_batch_size"]
        rows.append({"epoch": r["epoch"], "step": r["step"], "samples": seen, "test_loss": r["test_loss"],
                     "test_acc": r["test_acc"], "batch": r["global_batch_size"]})
    return rows


def compared(p: Preset, curves: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per run (its run_curve): steps and samples to the target (the first epoch that reaches it), the final test
    loss."""
    rows = []
    for name, curve in curves.items():
        hit = next((c for c in curve if p.target.met(c["test_loss"], c["test_acc"])), None)
        rows.append({"run": name, "steps_to_target": hit["step"] if hit else None,
                     "samples_to_target": hit["samples"] if hit else None, "final_test_loss": curve[-1]["test_loss"],
                     "final_test_acc": curve[-1]["test_acc"], "steps": curve[-1]["step"],
                     "samples": curve[-1]["samples"]})
    return rows


# the figure, the tables and the closing lines

def estimates(search_rows: list[dict[str, Any]], branch_rows: list[dict[str, Any]], noise: dict[str, Any],
              p: Preset, log: dict[str, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """Each estimate, its value and how it was obtained; `log`: what the reference run tracked (branch.tracked)."""
    b = np.array([r["batch_size"] for r in search_rows], float)
    tuned = np.array([np.nan if r["best_steps"] is None else r["best_steps"] for r in search_rows], float)
    b1, b2 = shallue_regimes(b, tuned)
    at = next(r for r in branch_rows if r["at_epoch"] == p.point)
    simple = nearest(log["b_simple"], at["samples_seen"])
    return [
        {"estimate": "shallue_perfect_scaling_until", "value": b1,
         "how": "Shallue et al. 2018: three regimes fitted to the tuned steps (log-log: slope -1, a segment, flat)"},
        {"estimate": "shallue_maximal_parallelism_from", "value": b2, "how": "the same fit's second breakpoint"},
        {"estimate": "zhang_20_percent", "value": zhang_critical(b, tuned),
         "how": "Zhang et al. 2024: the batch where the tuned steps exceed perfect scaling by 20 %"},
        {"estimate": "mccandlish_hyperbola", "value": hyperbola(b, tuned),
         "how": "E_min / S_min of S = S_min + E_min / B fitted to the tuned steps"},
        {"estimate": "b_simple", "value": simple,
         "how": f"tr(Sigma)/|G|^2 tracked in the base batch's run (--track-noise {p.track_noise}), the epoch's "
                f"ratio nearest epoch {p.point}"},
        {"estimate": "b_noise", "value": noise["b_noise"],
         "how": f"tr(H Sigma)/(G^T H G) at epoch {p.point}'s checkpoint from {noise['gradients']} micro-batches of "
                f"{p.base_batch_size}: {noise['gradients']} gradients and {noise['hessian_products']} "
                "Hessian-vector products"},
        {"estimate": "merrill_local", "value": at["local_critical_batch"],
         "how": f"Merrill et al. 2025: trainers.branch at epoch {p.point}, factors "
                f"{' '.join(map(str, p.branch_factors))}, {p.branch_samples} samples, "
                f"{'test loss' if p.branch_loss == 'test' else 'smoothed train loss'} within {p.tolerance:g}"}]


def closing_lines(search_rows: list[dict[str, Any]], est: list[dict[str, Any]], branch_rows: list[dict[str, Any]],
                  comparison: list[dict[str, Any]]) -> list[str]:
    """The lab's claim, from the numbers."""
    value = {e["estimate"]: e["value"] for e in est}
    ok = [r for r in search_rows if r["best_steps"] is not None]
    if not ok:
        return [f"No batch size reached the target within {search_rows[0]['trials']} trials of its steps budget; "
                "give the preset more max_steps or an easier target."]
    upto = ok[0]["batch_size"]
    for prev, r in zip(ok, ok[1:]):  # within 20 % of perfect scaling from one batch to the next
        if r["best_steps"] > 1.2 * prev["best_steps"] * prev["batch_size"] / r["batch_size"]:
            break
        upto = r["batch_size"]
    lines_lr = lr_lines(ok)
    zhang, simple = value["zhang_20_percent"], value["b_simple"]
    lines = [f"With the lr tuned per batch, the steps to the target roughly halve with each doubling of the batch up "
             f"to {upto}; the returns diminish from about {value['shallue_perfect_scaling_until']:.0f} (Shallue's "
             f"fit; Zhang's 20 % rule: {zhang:.0f}) and stop near {value['shallue_maximal_parallelism_from']:.0f}."]
    lines += lines_lr
    if simple is not None and math.isfinite(zhang):
        factor = max(simple, zhang) / min(simple, zhang)
        verdict = "predicts" if factor <= 2 else "misses"
        lines.append(f"B_simple ({simple:.0f}) {verdict} the measured critical batch (Zhang's {zhang:.0f}) "
                     f"{'within a factor of 2' if factor <= 2 else f'by a factor of {factor:.1f}'}; B_noise is "
                     f"{fmt(value['b_noise'])} and the local critical batch at the same point "
                     f"{value['merrill_local']:.0f}.")
    local = [(r["at_epoch"], r["local_critical_batch"]) for r in sorted(branch_rows, key=lambda r: r["at_epoch"])]
    peak = max(b for _, b in local)
    moved = (f"reaches {peak} by epoch {next(e for e, b in local if b == peak)}" if peak > local[0][1] else
             "never rises above it")
    lines.append(f"The local critical batch starts at {local[0][1]} (epoch {local[0][0]}) and {moved}: "
                 + ", ".join(f"{b} at epoch {e}" for e, b in local) + ".")
    by = {r["run"]: r for r in comparison}
    if "schedule" in by:
        s, small, large = by["schedule"], by["fixed small"], by["fixed large"]
        if s["steps_to_target"] and small["steps_to_target"]:
            lines.append(f"The schedule built from it reaches the target in {s['steps_to_target']} steps "
                         f"({s['samples_to_target']} samples) against {small['steps_to_target']} "
                         f"({small['samples_to_target']}) for the fixed small batch and "
                         f"{large['steps_to_target'] or 'never'} ({large['samples_to_target'] or '-'}) for the fixed "
                         f"large one; final test loss {s['final_test_loss']:.3f}, {small['final_test_loss']:.3f} and "
                         f"{large['final_test_loss']:.3f}.")
    return lines


def lr_lines(ok: list[dict[str, Any]]) -> list[str]:
    """How the best learning rate moves with the batch (a power law's exponent: 1 linear, 0.5 square root, or a rise
    then a fall, Li et al. 2024's surge), and what tuning buys over the fixed rule."""
    b = np.log([r["batch_size"] for r in ok])
    lr = np.log([r["best_lr"] for r in ok])
    if len(ok) < 2:
        return []
    slope = float(np.polyfit(b, lr, 1)[0])
    top = int(np.argmax(lr))
    shape = (f"rises to {np.exp(lr[top]):.3g} at batch {ok[top]['batch_size']} and then falls (a surge)"
             if top < len(ok) - 1 and lr[-1] < lr[top] - np.log(1.25) else
             f"grows as B^{slope:.2f} (linear scaling is B^1, square-root B^0.5)")
    gains = [(r["rule_over_best"], r["batch_size"]) for r in ok if r["rule_over_best"] is not None]
    gain = max(gains) if gains else None
    bought = (f"; tuning takes up to {gain[0]:.2f}x fewer steps than the fixed rule (batch {gain[1]})"
              if gain and gain[0] > 1 else "; tuning never beats the fixed rule")
    return [f"The best learning rate {shape}{bought}."]


def fmt(v: float | None) -> str:
    return "undefined" if v is None or not math.isfinite(v) else f"{v:.0f}"


def draw(search_rows: list[dict[str, Any]], est: list[dict[str, Any]], branch_rows: list[dict[str, Any]],
         curves: dict[str, list[dict[str, Any]]], p: Preset, log: dict[str, list[tuple[int, float]]],
         lines: list[str], out: str) -> list[str]:
    """The four panels (d in two: by steps and by samples), and the closing lines beside them."""
    from landscape.drawing import artists
    from landscape.output import render

    fig, axes = render.plt.subplots(2, 3, figsize=(15, 8.4), layout="constrained")
    b = np.array([r["batch_size"] for r in search_rows], float)
    tuned = np.array([np.nan if r["best_steps"] is None else r["best_steps"] for r in search_rows], float)
    rule = np.array([np.nan if r["rule_steps"] is None else r["rule_steps"] for r in search_rows], float)
    value = {e["estimate"]: e["value"] for e in est}

    ax = axes[0, 0]
    ax.loglog(b, tuned, "o-", color="tab:blue", label=f"tuned (best of {search_rows[0]['trials']} trials)")
    ax.loglog(b, rule, "s--", color="0.5", markersize=4, label=f"fixed {p.lr_rule} rule")
    first = np.flatnonzero(np.isfinite(tuned))
    if len(first):
        ax.loglog(b, tuned[first[0]] * b[first[0]] / b, "k:", label="perfect scaling")
    marks = [("zhang_20_percent", "tab:green", "-", "Zhang 20 %"),
             ("shallue_perfect_scaling_until", "tab:olive", "--", "Shallue: end of perfect scaling"),
             ("b_simple", "tab:red", "--", "B_simple"), ("b_noise", "tab:purple", "-.", "B_noise"),
             ("merrill_local", "tab:orange", ":", f"local critical (epoch {p.point})")]
    for key, color, style, name in marks:
        v = value[key]
        if v is not None and math.isfinite(v) and v > 0:
            ax.axvline(v, color=color, linestyle=style, linewidth=1.2, label=f"{name} = {v:.0f}")
    ax.set(xlabel="batch size", ylabel=f"steps to {p.target.text}", title="(a) steps to target, four estimates")
    ax.legend(fontsize=6)

    ax = axes[0, 1]
    best = np.array([np.nan if r["best_lr"] is None else r["best_lr"] for r in search_rows], float)
    ax.loglog(b, best, "o-", color="tab:blue", label="best trial's lr")
    ax.loglog(b, [r["rule_lr"] for r in search_rows], "s--", color="0.5", markersize=4, label=f"{p.lr_rule} rule")
    ax.set(xlabel="batch size", ylabel="learning rate", title=f"(b) the best lr (searched in {p.lr_range[0]:g} to "
           f"{p.lr_range[1]:g})")
    ax.legend(fontsize=7)

    ax = axes[0, 2]
    rows = sorted(branch_rows, key=lambda r: r["samples_seen"])
    ax.plot([r["samples_seen"] for r in rows], [r["local_critical_batch"] for r in rows], "o-", color="tab:orange",
            label="local critical batch")
    if log["b_simple"]:
        x, y = zip(*log["b_simple"])
        ax.plot(x, y, color="tab:red", linewidth=1.0, label="B_simple (tracked)")
    ax.axhline(p.base_batch_size, color="0.5", linestyle=":", label=f"the run's batch ({p.base_batch_size})")
    ax.set_yscale("log")
    ax.set(xlabel="samples seen", ylabel="batch size (log scale)", title="(c) during training")
    ax.legend(fontsize=7)

    styles = {"fixed small": ("tab:blue", "-"), "fixed large": ("tab:red", "--"), "schedule": ("tab:green", "-")}
    for ax, x_key, xlabel in ((axes[1, 0], "step", "optimizer steps"), (axes[1, 1], "samples", "samples seen")):
        for name, curve in curves.items():
            color, style = styles[name]
            batches = f"{curve[0]['batch']} to {curve[-1]['batch']}" if name == "schedule" else curve[0]["batch"]
            ax.plot([c[x_key] for c in curve], [c["test_loss"] for c in curve], color=color, linestyle=style,
                    label=f"{name} (batch {batches})")
        ax.set(xlabel=xlabel, ylabel="test loss",
               title=f"(d) the schedule and the fixed batches, by {'steps' if x_key == 'step' else 'samples'}")
        ax.legend(fontsize=7)
    axes[1, 2].set_axis_off()  # the closing lines, where the eye ends
    axes[1, 2].text(0.0, 1.0, "\n\n".join(textwrap.fill(line, 58) for line in lines), va="top", ha="left",
                    fontsize=8, transform=axes[1, 2].transAxes)
    for ax in axes.flat[:5]:
        artists.sparse_ticks(ax)
    for axis in (axes[0, 0].xaxis, axes[0, 1].xaxis, axes[0, 2].yaxis):  # batch sizes: their powers of 2, plainly
        batch_axis(axis)
    return render.save(fig, os.path.join(out, "critical_batch"))


def batch_axis(axis: Any) -> None:
    """A log axis of batch sizes labelled at the powers of 2 they are (16, 32, ...), every other one when many."""
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    lo, hi = axis.get_view_interval()
    powers = [2 ** k for k in range(int(np.floor(np.log2(lo))), int(np.ceil(np.log2(hi))) + 1) if lo <= 2 ** k <= hi]
    axis.set_major_locator(FixedLocator(powers[::2] if len(powers) > 6 else powers))
    axis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    axis.set_minor_locator(NullLocator())


def get_parser(add_help: bool = True) -> ArgumentParser:
    p = preset_parser("python -m figures.critical_batch", __doc__, PRESETS, "figures_out/critical_batch", add_help)
    p.add_argument("--lr-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="the search's log-uniform lr range (default: the preset's)")
    p.add_argument("--trials", type=int, default=None, help="Sobol trials per batch size besides the fixed rule's "
                   "(default: the preset's)")
    return p


def searched(p: Preset, lr_range: Sequence[float] | None, trials: int | None) -> Preset:
    """The preset with --lr-range and --trials applied, refused in one line when the range is empty (or not
    positive and finite) or the budget below 1."""
    if lr_range is not None:
        lo, hi = lr_range
        if not (0 < lo < hi and math.isfinite(hi)):
            raise UserError(f"--lr-range {lo:g} {hi:g} is empty or not positive: give LO HI with 0 < LO < HI, e.g. "
                            "0.005 2")
        p = replace(p, lr_range=(lo, hi))
    if trials is not None:
        if trials < 1:
            raise UserError(f"--trials must be >= 1, got {trials}")
        p = replace(p, trials=trials)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    p = searched(chosen_preset(args, PRESETS), args.lr_range, args.trials)
    with process_group(args.device) as info:
        if info.is_distributed:
            raise UserError("figures.critical_batch runs in one process; start it with python -m, not torchrun")
        with exclusive_output(args.out, info):
            data = to_device(load_dataset(p.dataset, **p.data_kwargs), info.device)
            search_rows = search(p, data, info, args.out)
            run = reference_run(p, args.out, info, args.device)
            branch = BranchConfig(run=run, at=p.branch_at, factors=p.branch_factors, samples=p.branch_samples,
                                  lr_rule=p.lr_rule, tolerance=p.tolerance, loss=p.branch_loss,
                                  out=os.path.join(args.out, "branches"),
                                  device=args.device)
            branch_rows = study(branch, info)
            summarize(branch_rows, branch, sorted(set(p.branch_factors)))  # OUT/branches: its table and figure
            noise = b_noise_at(p, run, data, info, args.out)
            log = tracked(run, p.base_batch_size)
            est = estimates(search_rows, branch_rows, noise, p, log)
            stages = derived_schedule(branch_rows, p.base_batch_size, max(p.batch_sizes))
            runs = schedule_runs(p, stages, args.out, info, args.device)
            curves = {name: run_curve(path) for name, path in runs.items()}
            comparison = compared(p, curves)
            write_csv(os.path.join(args.out, "steps_to_target.csv"), search_rows, list(search_rows[0]))
            write_csv(os.path.join(args.out, "summary.csv"), est, ["estimate", "value", "how"])
            write_csv(os.path.join(args.out, "schedule.csv"),
                      [{**r, "stages": ",".join(f"{b}:{e}" for b, e in stages)} for r in comparison],
                      [*comparison[0], "stages"])
            lines = closing_lines(search_rows, est, branch_rows, comparison)
            files = draw(search_rows, est, branch_rows, curves, p, log, lines, args.out)
            write_text(os.path.join(args.out, "closing.txt"), "\n".join(lines) + "\n")
            for e in est:
                print(f"{e['estimate']:>34}: {fmt(e['value'])}  ({e['how']})")
            print(f"schedule {','.join(f'{b}:{e}' for b, e in stages)}")
            for r in comparison:
                print(f"{r['run']:>12}: steps to target {r['steps_to_target']}, samples {r['samples_to_target']}, "
                      f"final test loss {r['final_test_loss']:.4f}")
            print("\n".join(lines))
            print(f"figures: {', '.join(files)}")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
