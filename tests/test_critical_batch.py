"""figures.critical_batch and what it stands on: Shallue's search (Sobol settings, a trial of the trainer, the rule's
trial among them), the critical-batch estimates on curves whose answer is known, and the smoke preset end to end."""

from __future__ import annotations

import csv
import os
from dataclasses import replace

import numpy as np
import pytest

from figures import critical_batch as cb
from landscape.core.fingerprint import tensors_sha256
from landscape.data import load_dataset
from landscape.models import load_checkpoint
from tests import figure_checks
from tests.conftest import SINGLE
from trainers.loop import fit
from trainers.target import Target, train_to_target

SMOKE = cb.PRESETS["smoke"]


def test_a_sobol_budget_of_n_trials_is_n_distinct_reproducible_settings_in_the_range():
    p = replace(SMOKE, trials=8, search_momentum=True)
    first, again = cb.sobol_settings(p, 64), cb.sobol_settings(p, 64)
    assert first == again and len({(s["lr"], s["momentum"]) for s in first}) == 8
    assert all(p.lr_range[0] <= s["lr"] <= p.lr_range[1] for s in first)
    assert all(1 - p.momentum_range[1] <= s["momentum"] <= 1 - p.momentum_range[0] for s in first)
    logs = np.sort(np.log([s["lr"] for s in first]))
    assert np.diff(logs).max() < 0.5 * np.log(p.lr_range[1] / p.lr_range[0])  # spread over the range, not clumped
    assert cb.sobol_settings(p, 32) != first  # each batch size its own scramble


def test_a_trial_is_the_trainer_s_own_run(tmp_path):
    """The fixed rule's trial, stopped before the target, ends with the weights trainers.train reaches in the same
    steps at the same lr."""
    data = load_dataset(SMOKE.dataset, **SMOKE.data_kwargs)
    cfg = cb.trial_config(SMOKE, 32, SMOKE.rule_lr(32), SMOKE.momentum)
    steps = 2 * (len(data.x_train) // 32)
    r = train_to_target(cfg, data, SINGLE, Target(acc=101.0), steps)
    assert (r["steps_run"], r["steps_to_target"], r["samples_run"]) == (steps, None, steps * 32)
    ckpt = fit(replace(cfg, out=str(tmp_path / "plain"), epochs=2), SINGLE)
    assert r["weights_sha256"] == tensors_sha256(ckpt["state_dict"])


def test_the_estimates_on_curves_whose_answer_is_known():
    b = np.geomspace(8, 8192, 31)
    s_min, e_min = 40.0, 20_000.0
    steps = s_min + e_min / b
    assert cb.hyperbola(b, steps) == pytest.approx(e_min / s_min, rel=1e-9)
    b0 = b[0]  # steps * B = 1.2 x (steps0 * b0): s_min B + e = 1.2 (s_min b0 + e)
    assert cb.zhang_critical(b, steps) == pytest.approx((1.2 * s_min * b0 + 0.2 * e_min) / s_min, rel=0.02)
    x = np.log(b)
    knee, flat = np.log(64), np.log(1024)  # slope -1 to 64, then a straight segment, flat from 1024
    y = np.where(x <= knee, np.log(6400) - x, np.where(x >= flat, np.log(30), np.interp(x, [knee, flat],
                                                                                      [np.log(100), np.log(30)])))
    b1, b2 = cb.shallue_regimes(b, np.exp(y))
    assert b1 == pytest.approx(64, rel=0.15) and b2 == pytest.approx(1024, rel=0.15)
    assert np.isnan(cb.zhang_critical(b, 6400 / b))  # perfect scaling all the way: no critical batch


def test_a_schedule_grows_where_the_local_critical_batch_allows_and_never_shrinks():
    rows = [{"at_epoch": 0, "local_critical_batch": 64}, {"at_epoch": 1, "local_critical_batch": 512},
            {"at_epoch": 3, "local_critical_batch": 256}, {"at_epoch": 5, "local_critical_batch": 4096}]
    assert cb.derived_schedule(rows, 64, 1024) == [(64, 0), (512, 1), (1024, 5)]
    assert cb.derived_schedule([{"at_epoch": 0, "local_critical_batch": 128}], 64, 1024) == [(128, 0)]


def test_the_smoke_preset_end_to_end_reads_alone_and_a_rerun_reuses_everything(tmp_path, monkeypatch):
    from landscape.output import render

    real, seen = render.save, {}

    def reading(fig, stem, *rest, **kw):
        seen[os.path.basename(stem)] = figure_checks.problems(fig)
        return real(fig, stem, *rest, **kw)

    monkeypatch.setattr(render, "save", reading)
    cb.main(["--preset", "smoke", "--out", str(tmp_path)])
    assert seen["critical_batch"] == [] and seen["local_critical_batch"] == []
    rows = list(csv.DictReader(open(tmp_path / "steps_to_target.csv")))
    assert [int(r["batch_size"]) for r in rows] == list(SMOKE.batch_sizes)
    for r in rows:  # the rule's lr is one of the trials: the tuned curve is never worse
        assert int(r["trials"]) == SMOKE.trials + 1
        if r["rule_steps"]:
            assert int(r["best_steps"]) <= int(r["rule_steps"]) and float(r["rule_over_best"]) >= 1.0
    est = {r["estimate"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert set(est) == {"shallue_perfect_scaling_until", "shallue_maximal_parallelism_from", "zhang_20_percent",
                        "mccandlish_hyperbola", "b_simple", "b_noise", "merrill_local"}
    assert all(r["how"] for r in est.values()) and float(est["merrill_local"]["value"]) >= SMOKE.base_batch_size
    runs = {r["run"] for r in csv.DictReader(open(tmp_path / "schedule.csv"))}
    assert {"fixed small", "fixed large"} <= runs
    closing = open(tmp_path / "closing.txt").read()
    assert "halve" in closing and "The local critical batch starts at" in closing
    trial = sorted(os.listdir(tmp_path / "trials"))[0]
    before = os.path.getmtime(tmp_path / "trials" / trial)
    cb.main(["--preset", "smoke", "--out", str(tmp_path)])
    assert os.path.getmtime(tmp_path / "trials" / trial) == before
    assert load_checkpoint(str(tmp_path / "runs" / "reference" / "last.pt"))["epoch"] == SMOKE.epochs
