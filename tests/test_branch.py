"""trainers.branch: a run continued from its checkpoints at k times its batch (Merrill et al. 2025's local
critical batch). The k = 1 branch is the run itself, bit for bit; k = 2 takes half the steps; a killed study
resumes to the same result; bad inputs are one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from landscape.core.fingerprint import tensors_sha256
from landscape.models.checkpoint_file import load_checkpoint
from tests import figure_checks
from tests.conftest import SINGLE, cli_env, refused, train_config, tree_digest
from trainers.branch import BranchConfig, local_critical_batch, main, smoothed, study
from trainers.loop import fit

STEPS_PER_EPOCH = 8  # 512 samples at batch 64


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """3 epochs at batch 64 in micro-batches of 32 (so a branch's k x accumulation is exercised), SGD with
    momentum and a cosine schedule, every epoch kept, the noise scale and lambda_max tracked."""
    out = tmp_path_factory.mktemp("branch_run")
    fit(train_config(out, epochs=3, save_every=1, micro_batch_size=32, schedule="cosine", track_noise=2,
                     track_sharpness=4, track_samples=64), SINGLE)
    return str(out)


def test_k1_is_the_run_continued_bit_for_bit_and_k2_takes_half_the_steps(run_dir, tmp_path):
    samples = 2 * STEPS_PER_EPOCH * 64  # epoch 1 to the run's end
    cfg = BranchConfig(run=run_dir, at=(1,), factors=(1, 2), samples=samples, out=str(tmp_path / "b"))
    rows = study(cfg, SINGLE)
    k1, k2 = (load_json(tmp_path / "b" / f"at0001_k{k}.json") for k in (1, 2))
    assert k1["weights_sha256"] == tensors_sha256(load_checkpoint(os.path.join(run_dir, "epoch_0003.pt"))
                                                  ["state_dict"])
    assert (k1["steps"], k2["steps"]) == (16, 8) and k1["samples"] == k2["samples"] == samples
    assert k2["global_batch_size"] == 128 and k2["lr_factor"] == 2.0
    run_losses = [r["train_loss_running"] for r in read_log(run_dir) if "kind" not in r][1:]
    per_epoch = [sum(k1["step_losses"][i:i + 8]) / 8 for i in (0, 8)]
    assert per_epoch == pytest.approx(run_losses, rel=1e-6)  # the run's own running losses, epoch by epoch
    assert rows[0]["samples_seen"] == STEPS_PER_EPOCH * 64 and rows[0]["at_step"] == STEPS_PER_EPOCH


def test_study_writes_its_table_and_figure_and_resumes_after_a_kill_to_the_same_result(run_dir, tmp_path, monkeypatch):
    argv = [run_dir, "--at", "0", "2", "--factors", "1", "2", "4", "--samples", "512", "--out", str(tmp_path / "b")]
    from landscape.output import render

    real, seen = render.save, {}

    def reading(fig, stem, *rest, **kw):
        seen[os.path.basename(stem)] = figure_checks.problems(fig)
        return real(fig, stem, *rest, **kw)

    monkeypatch.setattr(render, "save", reading)
    main(argv)
    assert seen == {"local_critical_batch": []}
    table = list(csv.DictReader(open(tmp_path / "b" / "local_critical_batch.csv")))
    assert [r["at_epoch"] for r in table] == ["0", "2"]
    for r in table:
        losses = {k: float(r[f"loss_k{k}"]) for k in (1, 2, 4)}
        assert int(r["local_critical_batch"]) == local_critical_batch(losses, 64, 0.01)
        assert r["b_simple"] not in ("", None) and r["lambda_max"] not in ("", None)  # from the run's log
    whole = open(tmp_path / "b" / "local_critical_batch.csv").read()

    killed = tmp_path / "killed"  # the same study, killed once its first branch is on disk, then run again
    cmd = [sys.executable, "-m", "trainers.branch", *argv[:-1], str(killed)]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "at0000_k1.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "at0000_k1.json").exists() and not (killed / "local_critical_batch.csv").exists()
    before = os.path.getmtime(killed / "at0000_k1.json")
    res = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert os.path.getmtime(killed / "at0000_k1.json") == before  # reused, not redone
    assert open(killed / "local_critical_batch.csv").read() == whole


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(run_dir, tmp_path, capsys):
    out = str(tmp_path / "b")
    base = [run_dir, "--out", out, "--samples", "512"]
    before = tree_digest(run_dir)
    refused(capsys, main, [*base, "--at", "1", "--factors", "1", "2.5"], "invalid int value: '2.5'")
    refused(capsys, main, [*base, "--at", "1", "--factors", "0", "1"], "every factor must be a whole number >= 1")
    refused(capsys, main, [*base, "--at", "1", "--factors", "2", "4"], "--factors must include 1")
    missing = "no " + os.path.join(run_dir, "epoch_0007.pt") + "; it has epochs 0, 1, 2, 3"
    refused(capsys, main, [*base, "--at", "7"], missing)
    refused(capsys, main, [*base, "--at", "1", "--factors", "1", "16"], "less than one step at the largest factor")
    refused(capsys, main, [*base, "--at", "1", "--factors", "1", "3"], "give a multiple of 192")
    refused(capsys, main, [run_dir, "--out", out, "--samples", "1024", "--at", "2"],
            "runs past the run's last step (24)")
    refused(capsys, main, [*base[:-1], "0", "--at", "1"], "--samples must be >= 1")
    refused(capsys, main, [*base], "give --at")
    bare = tmp_path / "bare"  # a checkpoint of the weights alone
    bare.mkdir()
    state = load_checkpoint(os.path.join(run_dir, "epoch_0001.pt"))
    torch.save({k: v for k, v in state.items() if k not in ("optimizer", "scheduler")}, bare / "epoch_0001.pt")
    refused(capsys, main, [str(bare), "--out", out, "--samples", "512", "--at", "1"], "has no optimizer, scheduler")
    assert not os.path.exists(out) and tree_digest(run_dir) == before


def test_smoothing_and_the_local_critical_batch_by_hand():
    assert smoothed([4.0, 2.0, 1.0], 0.5) == 0.5 * 1.0 + 0.5 * (0.5 * 2.0 + 0.5 * 4.0)
    assert smoothed([1.0, float("nan")], 0.5) == float("inf")
    assert local_critical_batch({1: 1.0, 2: 1.005, 4: 1.02, 8: 0.99}, 64, 0.01) == 512
    assert local_critical_batch({1: 1.0, 2: 1.5, 4: float("inf")}, 64, 0.01) == 64
    assert local_critical_batch({1: float("inf"), 2: float("inf")}, 64, 0.01) == 64  # the run itself diverged


def load_json(path):
    return json.load(open(path))["result"]


def read_log(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_a_branch_starts_from_the_checkpoint_s_own_optimizer_state_whatever_ran_before_it(run_dir, tmp_path):
    """Momentum buffers are loaded as they are stored: a branch that updated them in place must not hand them on
    (it did: k=2 at epoch 2 then started from k=1's final momentum, and a resumed study, which reuses k=1 from
    disk instead of running it, differed from an uninterrupted one)."""
    def cfg(name):
        return BranchConfig(run=run_dir, at=(2,), factors=(1, 2), samples=512, out=str(tmp_path / name))

    study(cfg("ran"), SINGLE)  # k=1, then k=2, in this process
    (tmp_path / "reused").mkdir()
    shutil.copy(tmp_path / "ran" / "at0002_k1.json", tmp_path / "reused")  # k=1 read back, as after a kill
    study(cfg("reused"), SINGLE)
    k2 = [load_json(tmp_path / name / "at0002_k2.json") for name in ("ran", "reused")]
    assert k2[0]["weights_sha256"] == k2[1]["weights_sha256"] and k2[0]["step_losses"] == k2[1]["step_losses"]
