import json
import os
import re

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.base.config import SurfaceConfig
from landscape.base.errors import UserError
from landscape.base.grid import parse_range
from landscape.core.directions import DirectionSpec, create_random_directions
from landscape.core.grid_eval import EvalSet, PointEvaluator
from landscape.core.params import PointSetter, model_tensors, snapshot
from landscape.core.surface_file import read_surface
from landscape.pipelines.from_checkpoint import run_surface
from landscape.runtime.metrics import mse
from landscape.runtime.sources import TensorSource
from tests.conftest import SINGLE

CPU = torch.device("cpu")


def _cfg(ckpt, out, **kw):
    return SurfaceConfig(checkpoint=ckpt, out=str(out), progress=False, **kw)


@pytest.mark.parametrize("ckpt_fixture", ["mlp_ckpt", "bn_ckpt"])
def test_centre_point_reproduces_the_checkpoint_metrics(request, tmp_path, ckpt_fixture):
    ckpt = request.getfixturevalue(ckpt_fixture)
    s = read_surface(run_surface(_cfg(ckpt, tmp_path, x="-1:1:3", y="-1:1:3"), SINGLE).path)
    stored = torch.load(ckpt, weights_only=True)["metrics"]
    assert s.origin.metrics == stored
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert s.values[key][1, 1] == pytest.approx(stored[key], rel=1e-6, abs=1e-9), key
        assert s.values[key][0, 0] != pytest.approx(stored[key], rel=1e-6)  # the corners really moved


def test_evaluator_leaves_the_model_untouched(mlp_ckpt):
    from landscape.models.checkpoint_file import load_data_for, load_model

    model, ckpt = load_model(mlp_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    theta0 = snapshot(model_tensors(model))
    dirs = create_random_directions(theta0, 2, DirectionSpec())
    data = load_data_for(ckpt)
    ev = PointEvaluator(model, theta0, dirs, [EvalSet("test", TensorSource(data.x_test, data.y_test, CPU, 256))])
    ev((0.5, -0.5))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("ckpt_fixture, dir_type", [("mlp_ckpt", "weights"), ("bn_ckpt", "weights"),
                                                    ("bn_ckpt", "states")])
def test_several_points_per_pass_give_the_values_of_one_point_per_pass(request, tmp_path, ckpt_fixture, dir_type):
    """vmap over stacked weight sets (BatchNorm running statistics batched too, for 'states'); 20 points in
    passes of 3 leave a short last pass."""
    ckpt = request.getfixturevalue(ckpt_fixture)
    kw = dict(x="-1:1:5", y="-1:1:4", dir_type=dir_type, samples=64, flush_seconds=0.0)
    one = read_surface(run_surface(_cfg(ckpt, tmp_path / "one", **kw), SINGLE).path)
    res = run_surface(_cfg(ckpt, tmp_path / "many", points_per_pass=3, **kw), SINGLE)
    assert (res.computed, res.total) == (20, 20)
    many = read_surface(res.path)
    assert many.done.all()
    for k in one.values:
        np.testing.assert_allclose(many.values[k], one.values[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert np.ptp(one.values["train_loss"]) > 0.1  # the points really differ


def test_auto_compile_stays_eager_on_a_small_grid_and_says_so(mlp_ckpt, tmp_path, capsys):
    kw = dict(x="-1:1:3", y="-1:1:3", samples=256)
    run_surface(_cfg(mlp_ckpt, tmp_path / "eager", compile=False, **kw), SINGLE)
    assert "torch.compile" not in capsys.readouterr().out  # a choice the user made is not announced
    run_surface(_cfg(mlp_ckpt, tmp_path / "auto", **kw), SINGLE)
    assert re.search(r"^torch.compile: off \(about 0 s of eager work per process, < 120 s\)$",
                     capsys.readouterr().out, re.M)


@pytest.mark.slow
def test_auto_compile_on_a_large_grid_compiles_and_keeps_the_values(mlp_ckpt, tmp_path, monkeypatch, capsys):
    """Every grid is large when the threshold is 0 s: auto compiles, says so, and the values are the eager ones
    to float tolerance; when compiling fails, it says so and the values are the eager ones exactly."""
    import landscape.core.grid_eval
    import landscape.pipelines.grid_job

    kw = dict(x="-1:1:3", y="-1:1:3", samples=256)
    eager = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path / "eager", compile=False, **kw), SINGLE).path)
    for module in (landscape.core.grid_eval, landscape.pipelines.grid_job):
        monkeypatch.setattr(module, "COMPILE_AFTER_S", 0.0)
    capsys.readouterr()
    auto = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path / "auto", **kw), SINGLE).path)
    assert re.search(r"^torch.compile: on \(about [0-9]+ s of eager work per process, >= 0 s\)$",
                     capsys.readouterr().out, re.M)
    for k in eager.values:
        np.testing.assert_allclose(auto.values[k], eager.values[k], rtol=1e-5, atol=1e-6, err_msg=k)

    def no_compiler(model, **kw):
        def fail(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return fail

    monkeypatch.setattr(landscape.core.grid_eval.torch, "compile", no_compiler)
    failed = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path / "failed", **kw), SINGLE).path)
    assert "torch.compile: failed (InvalidCxxCompiler: No working C++ compiler found), evaluating eagerly" in \
        capsys.readouterr().out
    for k in eager.values:
        np.testing.assert_array_equal(failed.values[k], eager.values[k], err_msg=k)


def test_stacked_weights_are_the_points_weights(mlp_ckpt):
    from landscape.models.checkpoint_file import load_model

    model, _ = load_model(mlp_ckpt)
    theta0 = snapshot(model_tensors(model))
    dirs = create_random_directions(theta0, 2, DirectionSpec())
    setter = PointSetter(model_tensors(model), theta0, dirs)
    coords = torch.tensor([[0.0, 0.0], [0.5, -0.25], [-1.0, 2.0]])
    stacked = setter.stacked(coords)
    for i, (a, b) in enumerate(coords.tolist()):
        setter((a, b))
        for name, t in model.named_parameters():
            torch.testing.assert_close(stacked[name][i], t.detach(), rtol=1e-6, atol=1e-7)


def test_linear_model_with_squared_loss_gives_an_exact_parabola():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(200, 5), torch.randn(200, 3)
    theta0 = snapshot(model_tensors(model), dtype=torch.float64)
    model = model.double()
    d = create_random_directions(theta0, 1, DirectionSpec(ignore="none"))
    ev = PointEvaluator(model, theta0, d, [EvalSet("train", TensorSource(x.double(), y.double(), CPU, 256), mse)])
    alphas = np.linspace(-2, 2, 9)
    losses = np.array([ev((a,))[0].item() for a in alphas])
    coeffs = np.polyfit(alphas, losses, 2)
    assert np.abs(np.polyval(coeffs, alphas) - losses).max() < 1e-9 * losses.max()
    assert coeffs[0] > 0


@pytest.mark.parametrize("spec, msg", [("-1:1:0", "at least 2"), ("1:-1:5", "below MAX"), ("a:b:c", "MIN:MAX:NUM"),
                                       ("-1:1", "MIN:MAX:NUM"), ("0:0:3", "below MAX"), ("nan:1:3", "MIN:MAX:NUM")])
def test_bad_grid_specs(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_range(spec)


def test_grid_spec_is_the_reference_syntax():
    assert np.allclose(parse_range("-1:1:5"), [-1, -0.5, 0, 0.5, 1])


def test_hdf5_round_trip_with_dimension_scales(mlp_ckpt, tmp_path):
    path = run_surface(_cfg(mlp_ckpt, tmp_path, x="-1:1:4", y="-0.5:0.5:3"), SINGLE).path
    with h5py.File(path, "r") as f:
        for name in ("train_loss", "done"):
            assert f[name].shape == (3, 4)  # (len(y), len(x))
            assert [d[0].name for d in f[name].dims] == ["/ycoordinates", "/xcoordinates"]
            assert [d.label for d in f[name].dims] == ["y", "x"]
        assert f["done"][...].all()
        assert f.attrs["schema_version"] == 2
        state = torch.load(mlp_ckpt, weights_only=True)["state_dict"]
        # only what the directions move is stored (biases are zeroed by --ignore biasbn); every tensor is listed
        assert set(f["directions/d1"]) == set(f["directions/d2"]) == {k for k, v in state.items() if v.ndim > 1}
        assert [k for k, _ in json.loads(f["directions"].attrs["tensors"])] == list(state)
        assert len(f.attrs["checkpoint_sha256"]) == 64
    s = read_surface(path)
    assert np.allclose(s.x, np.linspace(-1, 1, 4)) and np.allclose(s.y, np.linspace(-0.5, 0.5, 3))
    assert s.origin.checkpoint == os.path.abspath(mlp_ckpt) and s.origin.model["name"] == "mlp"
    assert (s.origin.training.global_batch_size, s.origin.training.weight_decay) == (64, 0.0)
    assert s.config["x"] == "-1:1:4" and s.schema_version == 2


def test_1d_surface_shape_and_it_is_the_alpha_axis_of_the_2d_one(mlp_ckpt, tmp_path):
    one = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path, x="-1:1:5"), SINGLE).path)
    two = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path, x="-1:1:5", y="-1:1:3"), SINGLE).path)
    assert one.values["test_loss"].shape == (5,)
    np.testing.assert_allclose(one.values["test_loss"], two.values["test_loss"][1, :], rtol=1e-12)  # the row y=0


def test_interrupted_run_resumes_to_the_same_file_without_recomputing(mlp_ckpt, tmp_path, monkeypatch):
    full = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path / "full", x="-1:1:7", y="-1:1:5"), SINGLE).path)
    calls = {"n": 0}
    real = PointEvaluator.__call__

    def dies_after_20(self, coords):
        calls["n"] += 1
        if calls["n"] > 21:  # the first call is the sanity report's centre
            raise KeyboardInterrupt("simulated kill")
        return real(self, coords)

    monkeypatch.setattr(PointEvaluator, "__call__", dies_after_20)
    cfg = _cfg(mlp_ckpt, tmp_path / "cut", x="-1:1:7", y="-1:1:5", flush_seconds=0.0)
    with pytest.raises(KeyboardInterrupt):
        run_surface(cfg, SINGLE)
    monkeypatch.setattr(PointEvaluator, "__call__", real)
    partial = read_surface(cfg.path)
    assert partial.done.sum() == 20
    res = run_surface(cfg, SINGLE)
    assert (res.already_done, res.computed) == (20, 15)
    resumed = read_surface(res.path)
    for k in full.values:
        assert np.array_equal(full.values[k], resumed.values[k]), k


def test_mismatched_resume_is_refused_and_the_file_kept(mlp_ckpt, mlp_ckpt_b, tmp_path):
    cfg = _cfg(mlp_ckpt, tmp_path, x="-1:1:3", y="-1:1:3", name="s")
    path = run_surface(cfg, SINGLE).path
    before = open(path, "rb").read()
    for change, msg in [({"x": "-2:2:3"}, "another x grid"), ({"seed": 1}, "other directions"),
                        ({"checkpoint": mlp_ckpt_b}, "another checkpoint"), ({"samples": 10}, "samples")]:
        with pytest.raises(UserError, match=msg):
            run_surface(SurfaceConfig(**{**cfg.__dict__, **change}), SINGLE)
    assert open(path, "rb").read() == before


def test_directions_from_a_file_are_reused_and_checked(mlp_ckpt, mlp_ckpt_b, bn_ckpt, tmp_path):
    first = run_surface(_cfg(mlp_ckpt, tmp_path, x="-1:1:3", y="-1:1:3", seed=5), SINGLE).path
    again = run_surface(_cfg(mlp_ckpt, tmp_path, x="-1:1:3", y="-1:1:3", name="reuse", directions_file=first), SINGLE)
    np.testing.assert_array_equal(read_surface(first).values["test_loss"],
                                  read_surface(again.path).values["test_loss"])
    with pytest.raises(ValueError, match="another model"):
        run_surface(_cfg(bn_ckpt, tmp_path, x="-1:1:3", y="-1:1:3", directions_file=first), SINGLE)


def test_interpolation_reaches_the_second_checkpoint(mlp_ckpt, mlp_ckpt_b, tmp_path):
    s = read_surface(run_surface(_cfg(mlp_ckpt, tmp_path, x="0:1:3", target=mlp_ckpt_b, dir_type="states"),
                                 SINGLE).path)
    b = torch.load(mlp_ckpt_b, weights_only=True)["metrics"]
    assert s.values["test_loss"][0] == pytest.approx(s.origin.metrics["test_loss"], rel=1e-6)
    assert s.values["test_loss"][-1] == pytest.approx(b["test_loss"], rel=1e-5)
