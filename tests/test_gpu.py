"""CUDA paths: every CLI once on a GPU, bf16 against fp32, K vmapped points against K single points, NCCL with one
rank, the trainer with bf16 autocast and resume, language models (trainer, surface centre, Hessian). Run by
`make gpu-check` (benchmarks/gpu.py) on a machine with a GPU; skipped elsewhere. Tolerances are stated where they
are used, with the reason.
"""

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from landscape.core.surface_file import read_surface
from landscape.runtime.distributed import DistInfo
from tests.conftest import IMG_DATA, killed_then_resumed, run_module, train_config
from trainers.loop import fit

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = DistInfo(0, 0, 1, torch.device("cuda", 0)) if torch.cuda.is_available() else None
GRID = ["--x=-1:1:5", "--y=-1:1:4", "--no-progress", "--formats", "png"]


def _surface(ckpt, out, *flags, nproc=None):
    res = run_module("landscape.plot2d", ckpt, *GRID, "--out", str(out), *flags, nproc=nproc)
    assert res.returncode == 0, res.stderr
    (h5,) = [f for f in os.listdir(out) if f.endswith(".h5")]
    return read_surface(str(out / h5)), res.stdout


def _assert_values_close(a, b, loss_rtol, acc_atol):
    for k in a.values:
        if k.endswith("_acc"):  # percent; a sample whose top two logits nearly tie may flip
            np.testing.assert_allclose(a.values[k], b.values[k], atol=acc_atol, err_msg=k)
        else:
            np.testing.assert_allclose(a.values[k], b.values[k], rtol=loss_rtol, err_msg=k)


def test_plot2d_fp32_on_cuda_equals_the_cpu(mlp_ckpt, bn_ckpt, tmp_path):
    # fp32 means fp32: the engine turns TF32 off, so only summation order separates the devices
    for name, ckpt in [("mlp", mlp_ckpt), ("resnet", bn_ckpt)]:
        cpu, _ = _surface(ckpt, tmp_path / f"{name}_cpu", "--device", "cpu")
        gpu, out = _surface(ckpt, tmp_path / f"{name}_gpu", "--device", "cuda", "--precision", "fp32")
        _assert_values_close(cpu, gpu, loss_rtol=1e-5, acc_atol=1e-9)
        assert gpu.fingerprint["precision"] == "fp32"
        assert len([f for f in os.listdir(tmp_path / f"{name}_gpu") if f.endswith(".png")]) == 16


def test_bf16_values_are_within_two_percent_of_fp32(bn_ckpt, tmp_path):
    # bf16 keeps 8 bits of mantissa (~0.4% per product); over a ResNet-20 the mean loss moves by well under 2%
    fp32, _ = _surface(bn_ckpt, tmp_path / "fp32", "--device", "cuda", "--precision", "fp32")
    bf16, _ = _surface(bn_ckpt, tmp_path / "bf16", "--device", "cuda", "--precision", "auto")  # bf16 on CUDA
    assert bf16.fingerprint["precision"] == "bf16"
    _assert_values_close(fp32, bf16, loss_rtol=2e-2, acc_atol=3.0)


def test_vmapped_points_equal_single_points_on_cuda(mlp_ckpt, tmp_path):
    one, _ = _surface(mlp_ckpt, tmp_path / "one", "--device", "cuda", "--precision", "fp32")
    many, _ = _surface(mlp_ckpt, tmp_path / "many", "--device", "cuda", "--precision", "fp32",
                       "--points-per-pass", "8")
    _assert_values_close(one, many, loss_rtol=1e-5, acc_atol=1e-9)


def test_nccl_with_one_rank_equals_a_plain_process(mlp_ckpt, tmp_path):
    plain, _ = _surface(mlp_ckpt, tmp_path / "plain", "--device", "cuda")
    ranked, stdout = _surface(mlp_ckpt, tmp_path / "nccl", "--device", "cuda", nproc=1)
    for k in plain.values:  # the same device, kernels and order: equal to the last bit
        np.testing.assert_array_equal(plain.values[k], ranked.values[k], err_msg=k)


def test_plot1d_on_cuda(mlp_ckpt, mlp_ckpt_b, tmp_path):
    res = run_module("landscape.plot1d", mlp_ckpt, mlp_ckpt_b, "--out", str(tmp_path), "--x=-0.5:1.5:9",
                     "--no-progress", "--device", "cuda", "--formats", "png")
    assert res.returncode == 0, res.stderr
    assert read_surface(str(tmp_path / "mlp_run0_last_to_mlp_run_b0_last_interp.h5")).done.all()


def test_trainer_bf16_on_cuda_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = train_config(tmp_path / "full", data_kwargs=IMG_DATA, model="resnet20", model_kwargs={}, epochs=3,
                       batch_size=64, device="cuda", precision="bf16")
    a, b = killed_then_resumed(cfg, replace(cfg, out=str(tmp_path / "cut")), CUDA, monkeypatch)
    assert a["epoch"] == b["epoch"] == 3 and a["train_config"]["precision"] == "bf16"
    for k in a["state_dict"]:  # one process, the same kernels: the resumed run is the uninterrupted one
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_sweep_on_cuda(tmp_path):
    res = run_module("trainers.sweep", "--dataset", "synthetic", "--model", "mlp", "--batch-sizes", "32", "128",
                     "--weight-decays", "0", "--epochs", "1", "--out", str(tmp_path), "--no-progress",
                     "--device", "cuda")
    assert res.returncode == 0, res.stderr
    runs = tmp_path / "synthetic_mlp"
    assert sorted(os.listdir(runs)) == ["bs128_wd0", "bs32_wd0"]
    assert all(os.path.exists(runs / d / "last.pt") for d in os.listdir(runs))


def test_sharpness_table_on_cuda_equals_the_cpu(mlp_ckpt, tmp_path):
    from landscape.base.config import SurfaceConfig
    from landscape.pipelines.sharpness_table import SharpnessConfig, run_sharpness
    from tests.conftest import SINGLE

    sc = SharpnessConfig(measures=("lambda_max", "trace", "density", "epsilon", "adaptive", "average", "width"),
                         trace_products=9, density_runs=2, density_steps=10,
                         width_directions=2, x="-1:1:11")
    tables = [run_sharpness(SurfaceConfig(mlp_ckpt, splits=("train",), samples=256, out=str(tmp_path),
                                          device=device, progress=False), sc, info, write=False).rows
              for device, info in [("cpu", SINGLE), ("cuda", CUDA)]]
    for cpu, gpu in zip(*tables):
        assert cpu["measure"] == gpu["measure"]
        assert gpu["value"] == pytest.approx(cpu["value"], rel=1e-3, abs=1e-6), cpu["measure"]


def test_a_streamed_loader_on_cuda_equals_resident_tensors():
    # batches come from pinned memory on a side stream, one ahead: the values must not notice
    import landscape
    from tests import userland

    model = userland.make_mlp()
    d = landscape.random_directions(model, n=2)
    kw = {"x": "-1:1:5", "y": "-1:1:3", "device": "cuda", "progress": False, "batch_size": 20}
    resident = landscape.surface(model, userland.tensors(), d, **kw)
    streamed = landscape.surface(model, userland.loader(), d, **kw)
    x, y = userland.tensors()
    on_gpu = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.cuda(), y.cuda()), batch_size=20)
    already_there = landscape.surface(model, on_gpu, d, **kw)  # batches on the GPU are not pinned, only used
    for k in resident.values:
        np.testing.assert_allclose(resident.values[k], streamed.values[k], rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(resident.values[k], already_there.values[k], rtol=1e-6, err_msg=k)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was


@pytest.mark.parametrize("model", ["transformer", "lstm_lm"])
def test_language_models_on_cuda(model, tmp_path):
    # the trainer in bf16 autocast; then the surface's centre in fp32 on CUDA reproduces the stored validation loss
    # (the trainer evaluates in fp32), and lambda_max (double backward: math attention, no cuDNN RNN) matches the CPU
    from landscape.base.config import SurfaceConfig
    from landscape.pipelines.sharpness_table import SharpnessConfig, run_sharpness
    from tests.conftest import SINGLE
    from tests.test_lm import lm_config

    kwargs = {"d_model": 16, "n_layer": 1, "n_head": 2} if model == "transformer" else {"d_model": 16, "hidden": 16}
    ckpt = fit(lm_config(tmp_path / "run", model=model, model_kwargs=kwargs, device="cuda", precision="bf16"), CUDA)
    assert ckpt["train_config"]["precision"] == "bf16"
    path = str(tmp_path / "run" / "last.pt")
    res = run_module("landscape.plot1d", path, "--x=-0.5:0.5:3", "--splits", "test", "--device", "cuda",
                     "--precision", "fp32", "--out", str(tmp_path / "s"), "--no-progress", "--formats", "png")
    assert res.returncode == 0, res.stderr
    (h5,) = [f for f in os.listdir(tmp_path / "s") if f.endswith(".h5")]
    s = read_surface(str(tmp_path / "s" / h5))
    assert s.values["test_loss"][1] == pytest.approx(ckpt["metrics"]["test_loss"], rel=1e-5)
    sc = SharpnessConfig(measures=("lambda_max",))
    top = [run_sharpness(SurfaceConfig(path, splits=("train",), samples=64, out=str(tmp_path), device=device,
                                       progress=False), sc, info, write=False).rows[0]["value"]
           for device, info in [("cpu", SINGLE), ("cuda", CUDA)]]
    assert top[1] == pytest.approx(top[0], rel=1e-3)
