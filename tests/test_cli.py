"""End-to-end runs of the CLIs as a user types them, in subprocesses (and under torchrun with gloo)."""

import os
import shutil

import numpy as np
import pytest
import torch

from landscape.core.surface_file import read_surface
from tests.conftest import PLOT2D_ARGS, run_module

pytestmark = pytest.mark.slow


def test_trainer_cli_on_two_processes_writes_a_checkpoint_that_reproduces_its_accuracy(tmp_path):
    out = tmp_path / "run"
    res = run_module("trainers.train", "--dataset", "mnist1d", "--model", "mlp", "--batch-size", "256",
                     "--weight-decay", "5e-4", "--epochs", "2", "--out", str(out), "--no-progress", "--device", "cpu",
                     nproc=2)
    assert res.returncode == 0, res.stderr
    assert "img/s" in res.stdout and "done:" in res.stdout
    from landscape.models.checkpoint_file import load_data_for, load_model
    from landscape.runtime.forward import loss_accuracy

    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["plan"]["world_size"] == 2 and ckpt["plan"]["global_batch_size"] == 256
    model, ckpt = load_model(str(out / "last.pt"))
    data = load_data_for(ckpt)
    assert loss_accuracy(model, data.x_test, data.y_test).acc == pytest.approx(ckpt["metrics"]["test_acc"], abs=1e-9)
    assert sorted(os.listdir(out)) == ["config.json", "epoch_0000.pt", "epoch_0002.pt", "last.pt", "metrics.jsonl"]


def test_plot2d_one_and_two_processes_write_equal_surfaces_and_figures(mlp_ckpt, plot2d_one, tmp_path):
    args = [mlp_ckpt, *PLOT2D_ARGS]
    shutil.copytree(plot2d_one, tmp_path / "one")
    two = run_module("landscape.plot2d", *args, "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    assert "on 2 processes" in two.stdout
    a = read_surface(str(tmp_path / "one" / "mlp_run0_last_2d.h5"))
    b = read_surface(str(tmp_path / "two" / "mlp_run0_last_2d.h5"))
    for k in a.values:
        np.testing.assert_allclose(a.values[k], b.values[k], rtol=1e-7, err_msg=k)
    vmapped = run_module("landscape.plot2d", *args, "--out", str(tmp_path / "vmap"), "--points-per-pass", "3", nproc=2)
    assert vmapped.returncode == 0, vmapped.stderr
    c = read_surface(str(tmp_path / "vmap" / "mlp_run0_last_2d.h5"))
    for k in a.values:
        np.testing.assert_allclose(c.values[k], a.values[k], rtol=1e-5, err_msg=k)
    pngs = [f for f in os.listdir(tmp_path / "two") if f.endswith(".png")]
    assert len(pngs) == 16  # 4 metrics x (contour, contourf, heatmap, 3d)
    again = run_module("landscape.plot2d", *args, "--out", str(tmp_path / "one"))
    assert "computed 0 of 20 points (20 already done)" in again.stdout
    replot = run_module("landscape.plot2d", str(tmp_path / "one" / "mlp_run0_last_2d.h5"), "--formats", "pdf")
    assert replot.returncode == 0, replot.stderr
    assert os.path.exists(tmp_path / "one" / "mlp_run0_last_2d_test_loss_contour.pdf")


def test_plot1d_interpolation_and_overlay(mlp_ckpt, mlp_ckpt_b, tmp_path):
    res = run_module("landscape.plot1d", mlp_ckpt, mlp_ckpt_b, "--out", str(tmp_path), "--x=-0.5:1.5:9",
                     "--no-progress")
    assert res.returncode == 0, res.stderr
    assert os.path.exists(tmp_path / "mlp_run0_last_to_mlp_run_b0_last_interp.png")
    res = run_module("landscape.plot1d", mlp_ckpt, mlp_ckpt_b, "--overlay", "--out", str(tmp_path), "--x=-1:1:5",
                     "--no-progress", "--log")
    assert res.returncode == 0, res.stderr
    assert os.path.exists(tmp_path / "overlay_1d.pdf")


def test_help_lists_options_with_defaults():
    for module in ("landscape.plot2d", "landscape.plot1d", "trainers.train", "trainers.sweep"):
        res = run_module(module, "--help")
        assert res.returncode == 0
        assert "default:" in res.stdout and "--out" in res.stdout and "(default: None)" not in res.stdout
