"""Connectivity: permutation alignment (weight matching), curves between two checkpoints and their training, loss
barriers, the curve file, and `python -m landscape.connect` as a user runs it."""

from __future__ import annotations

import copy
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import refused, run_module, tree_digest

import landscape
from landscape.base.config import SurfaceConfig
from landscape.base.curve_config import CurveConfig
from landscape.base.errors import UserError
from landscape.connect import main as connect_main
from landscape.connectivity import curve_training
from landscape.connectivity.alignment import align, align_models, permuted, random_permutations
from landscape.connectivity.barriers import barrier, barrier_rows
from landscape.connectivity.curves import CurveModule, coefficients, midpoint, plane_coordinates
from landscape.connectivity.permutations import spec_for
from landscape.core.curve_file import read_curve
from landscape.core.params import PointSetter, model_tensors, snapshot
from landscape.core.surface_file import read_surface
from landscape.models.checkpoint_file import load_checkpoint, make_checkpoint, save_checkpoint
from landscape.models.registry import build_model
from tests import userland

# every registry model with hidden units, with an input batch
REGISTRY = [("mlp", {}, (6, 40)), ("mlp", {"batchnorm": True}, (6, 40)), ("cnn1d", {}, (6, 40)),
            ("cnn2d", {}, (6, 1, 28, 28)), ("vgg9", {}, (6, 3, 32, 32)), ("resnet20", {}, (6, 3, 32, 32)),
            ("resnet20_noshort", {}, (6, 3, 32, 32)), ("wide_resnet", {"depth": 8, "width": 2}, (6, 3, 16, 16)),
            ("transformer", {"num_classes": 28, "input_shape": (12,), "d_model": 32, "n_layer": 2, "n_head": 4}, None),
            ("transformer", {"num_classes": 28, "input_shape": (12,), "d_model": 32, "n_layer": 1, "n_head": 4,
                             "positions": "rotary", "tie_weights": True}, None)]


def trained_statistics(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """BatchNorm statistics that are not the initial zeros and ones, so that permuting them is tested."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("name,kwargs,shape", REGISTRY, ids=lambda v: str(v)[:30])
def test_a_scrambled_registry_model_is_aligned_back_to_the_original(name, kwargs, shape):
    torch.manual_seed(0)
    x = torch.randint(0, 28, (6, 12)) if shape is None else torch.randn(*shape)
    model = trained_statistics(build_model(name, **kwargs), x)
    spec = spec_for(model)
    scrambled = copy.deepcopy(model)
    scrambled.load_state_dict(permuted(spec, model.state_dict(), random_permutations(spec, seed=1)))
    with torch.no_grad():
        assert torch.allclose(scrambled(x), model(x), atol=1e-5)  # the same function
        assert not torch.equal(scrambled.state_dict()[next(iter(spec.axes))], model.state_dict()[next(iter(spec.axes))])
    aligned, found = align_models(model, scrambled, batch=x)
    for k, v in model.state_dict().items():  # weights and BatchNorm statistics, compared as values: ties may differ
        assert torch.allclose(aligned.state_dict()[k].float(), v.float(), atol=1e-6), k
    with torch.no_grad():
        assert torch.allclose(aligned(x), model(x), atol=1e-5)
    assert found.moved > 0.9 * found.units and found.distance_after < 1e-5 < found.distance_before
    again, itself = align_models(model, copy.deepcopy(model))
    assert itself.moved == 0 and itself.distance_before == 0  # the identity is found when there is nothing to do


def test_weight_matching_beats_the_identity_on_independent_networks():
    torch.manual_seed(0)
    a, b = build_model("mlp", hidden=[64, 64]), build_model("mlp", hidden=[64, 64])
    spec = spec_for(a)
    found = align(spec, a.state_dict(), b.state_dict(), {k for k, _ in a.named_parameters()})
    assert found.distance_after < 0.95 * found.distance_before
    assert found.sweeps >= 2 and "hidden units moved" in found.summary()


def test_a_model_without_a_spec_is_refused_in_one_line_naming_the_fix():
    lstm = build_model("lstm_lm", num_classes=20, d_model=8, hidden=8)
    with pytest.raises(UserError, match="--align-spec") as err:
        spec_for(lstm)
    assert "\n" not in str(err.value) and "LSTMLanguageModel" in str(err.value)
    with pytest.raises(UserError, match="not an nn.Sequential"):
        spec_for(userland.Residual())


def test_a_users_spec_aligns_their_own_model_and_a_wrong_one_is_caught():
    torch.manual_seed(0)
    model, x = userland.Residual(), torch.randn(10, 8)
    spec = spec_for(model, "tests.userland:residual_spec")
    scrambled = copy.deepcopy(model)
    scrambled.load_state_dict(permuted(spec, model.state_dict(), random_permutations(spec, 3)))
    aligned, found = landscape.align(model, scrambled, "tests.userland:residual_spec", batch=x)
    assert all(torch.allclose(aligned.state_dict()[k], v, atol=1e-6) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="does not keep the network's function"):
        landscape.align(model, scrambled, "tests.userland:residual_spec_missing_a_tensor", batch=x)
    with pytest.raises(UserError, match="needs one entry per axis"):
        spec_for(model, {"inp.weight": ["h"]})
    with pytest.raises(UserError, match="has 16 units but"):
        spec_for(model, {"inp.weight": ["h", None], "out.weight": ["h", None]})


@pytest.mark.parametrize("make", ["torchvision.models:resnet18", "timm:create_model"])
def test_torchvision_and_timm_resnets_align_without_a_spec(make):
    torch.manual_seed(0)
    if make.startswith("timm"):
        timm = pytest.importorskip("timm")
        model = timm.create_model("resnet18", num_classes=10)
    else:
        import torchvision
        model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    model = trained_statistics(model, x)
    spec = spec_for(model)
    scrambled = copy.deepcopy(model)
    scrambled.load_state_dict(permuted(spec, model.state_dict(), random_permutations(spec, 2)))
    aligned, found = align_models(model, scrambled, batch=x)
    assert found.distance_after < 1e-5 and found.units == 2880
    with torch.no_grad():
        assert torch.allclose(aligned(x), model(x), atol=1e-5)


def test_the_readmes_spec_example_aligns_its_model():
    text = open(pathlib.Path(__file__).parents[1] / "README.md").read()
    block = text.split("<!-- connect-spec -->", 1)[1].split("```", 2)[1].split("\n", 1)[1]
    scope: dict = {}
    exec(block, scope)
    torch.manual_seed(0)
    model, spec = scope["Residual"](), scope["residual_spec"]
    scrambled = copy.deepcopy(model)
    scrambled.load_state_dict(permuted(spec_for(model, spec(model)), model.state_dict(), random_permutations(
        spec_for(model, spec(model)), 4)))
    aligned, found = landscape.align(model, scrambled, spec(model), batch=torch.randn(5, 8))
    assert found.moved > 0 and found.distance_after < 1e-6


def test_curve_endpoints_are_exact_and_a_midpoint_bezier_is_the_straight_line():
    torch.manual_seed(0)
    a, b = build_model("mlp", hidden=[8]), build_model("mlp", hidden=[8])
    ta, tb = snapshot(dict(a.named_parameters())), snapshot(dict(b.named_parameters()))
    for kind in ("bezier", "polychain"):
        curve = CurveModule(a, kind, ta, tb, midpoint(ta, tb))
        curve.set_t(0.0)
        assert all(torch.equal(curve.weights()[k], ta[k]) for k in ta)
        curve.set_t(1.0)
        assert all(torch.equal(curve.weights()[k], tb[k]) for k in tb)
        for t in np.linspace(0, 1, 11):  # the midpoint bend: the line, for either curve
            curve.set_t(t)
            line = {k: (1 - t) * ta[k] + t * tb[k] for k in ta}
            assert all(torch.allclose(curve.weights()[k], line[k], atol=1e-6) for k in ta)
        assert sum(coefficients(kind, 0.3)) == pytest.approx(1.0)
    # the evaluation's weights (c_A A + c_C C + c_B B into the model's own tensors) are A and B bit for bit at the ends
    model = copy.deepcopy(a)
    zero = {k: torch.zeros_like(v) for k, v in ta.items()}
    setter = PointSetter(model_tensors(model), zero, [ta, midpoint(ta, tb), tb])
    for t, end in ((0.0, ta), (1.0, tb)):
        setter(coefficients("bezier", t))
        assert all(torch.equal(dict(model.named_parameters())[k].detach(), end[k]) for k in end)
    # the curve on the plane through A, B and the bend: from (0, 0) to (1, 0), through the bend for a chain
    coords = plane_coordinates("polychain", [0.0, 0.5, 1.0], (0.3, 1.0))
    assert np.allclose(coords, [[0, 0], [0.3, 1.0], [1, 0]])


def test_the_barrier_is_the_rise_above_the_endpoints_mix_not_above_their_mean():
    t = np.linspace(0, 1, 5)
    assert barrier(t, np.array([1.0, 2.0, 3.0, 4.0, 5.0])).height == pytest.approx(0.0)  # a straight rise: none
    b = barrier(t, np.array([0.0, 1.0, 3.0, 2.5, 2.0]))  # endpoints 0 and 2: the mix at t=0.5 is 1, the value 3
    assert b.height == pytest.approx(2.0) and b.t == 0.5 and b.peak == 3.0
    assert np.isnan(barrier(t, np.array([0.0, np.nan, 1.0, 1.0, 1.0])).height)  # a point missing: no number yet


def written(folder, suffix: str) -> str:
    """The file of `folder` whose name ends in `suffix` (connect names its files after the checkpoints' tags)."""
    found = [str(p) for p in pathlib.Path(folder).iterdir() if p.name.endswith(suffix)]
    assert len(found) == 1, (suffix, sorted(os.listdir(folder)))
    return found[0]


def connect_options(**kw):
    return {"epochs": 2, "points": 5, "samples": 128, "progress": False, "device": "cpu", **kw}


def test_a_permuted_checkpoint_aligns_back_with_barrier_zero(bn_ckpt, tmp_path):
    """A ResNet's checkpoint and a copy with its units scrambled: the line between them climbs, the aligned line
    is flat (barrier 0, BatchNorm re-estimated at every t), and the function was never changed."""
    ckpt = load_checkpoint(bn_ckpt)
    model = build_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    spec = spec_for(model)
    scrambled = {**ckpt, "state_dict": permuted(spec, ckpt["state_dict"], random_permutations(spec, 5))}
    save_checkpoint(scrambled, str(tmp_path / "scrambled.pt"))
    curve = landscape.connect_checkpoints(bn_ckpt, str(tmp_path / "scrambled.pt"), str(tmp_path / "out"),
                                          **connect_options(curve="none", align=True, samples=64))
    rows = {(r["path"], r["metric"]): r for r in landscape.barriers(curve)}
    assert rows[("aligned_line", "train_loss")]["barrier"] == pytest.approx(0.0, abs=1e-5)
    assert rows[("aligned_line", "test_error")]["barrier"] == pytest.approx(0.0, abs=1e-9)
    assert rows[("line", "train_loss")]["barrier"] > 0.1
    aligned = np.array(curve.paths["aligned_line"].values["train_loss"])
    assert np.allclose(aligned, aligned[0], atol=1e-5)  # every t is the same network
    assert curve.alignment["moved"] > 0 and curve.alignment["distance_after"] < 1e-4
    written = sorted(p.name.rsplit("_", 1)[1] for p in (tmp_path / "out").iterdir())
    assert written == ["aligned.pt", "connect.h5"]  # --curve none trains no bend


def test_curve_training_lowers_the_peak_and_a_killed_run_resumes_to_the_same_bend(mlp_ckpt, mlp_ckpt_b, tmp_path,
                                                                                   monkeypatch):
    options = connect_options(epochs=4, lr=0.05, save_seconds=0.0)
    full = landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_b, str(tmp_path / "full"), **options)
    line, trained = (full.paths[p].values["train_loss"] for p in ("line", "curve"))
    assert barrier(full.t, line).height > 0.05  # these two minima have a barrier on the line ...
    assert trained.max() < line.max()  # ... and the trained curve passes lower
    assert np.array_equal(trained[[0, -1]], line[[0, -1]])  # both paths start at A and end at B

    real, calls = curve_training.train_step, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(curve_training, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_b, str(tmp_path / "cut"), **options)
    state = written(tmp_path / "cut", "_training.pt")
    assert not any(p.endswith(".h5") for p in os.listdir(tmp_path / "cut"))
    monkeypatch.setattr(curve_training, "train_step", real)
    resumed = landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_b, str(tmp_path / "cut"), **options)
    for p in full.paths:
        assert np.array_equal(resumed.paths[p].values["train_loss"], full.paths[p].values["train_loss"]), p
    assert resumed.training["epoch_losses"] == full.training["epoch_losses"]
    assert not os.path.exists(state)  # the state is in the curve file now
    bend = load_checkpoint(written(tmp_path / "cut", "_bend.pt"))
    assert bend["curve"]["curve"] == "bezier" and bend["curve"]["aligned"] is False


def test_a_run_killed_while_evaluating_resumes_its_points(mlp_ckpt, mlp_ckpt_c, tmp_path, monkeypatch):
    from landscape.core import surface_file

    options = connect_options(curve="polychain", epochs=1)
    full = landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_c, str(tmp_path / "full"), **options)
    real, rows = surface_file.SurfaceWriter.write, []

    def killed(self, flat_idx, values):
        rows.append(1)
        if len(rows) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(self, flat_idx, values)

    monkeypatch.setattr(surface_file.SurfaceWriter, "write", killed)
    options["flush_seconds"] = 0.0
    with pytest.raises(KeyboardInterrupt):
        landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_c, str(tmp_path / "cut"), **options)
    monkeypatch.setattr(surface_file.SurfaceWriter, "write", real)
    partial = read_curve(written(tmp_path / "cut", "_connect.h5"))
    assert 0 < partial.paths["line"].done.sum() < len(partial.t)
    resumed = landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_c, str(tmp_path / "cut"), **options)
    on_disk = read_curve(written(tmp_path / "cut", "_connect.h5"))
    for p in full.paths:
        for m, v in full.paths[p].values.items():
            assert np.array_equal(resumed.paths[p].values[m], v) and np.array_equal(on_disk.paths[p].values[m], v)
    assert barrier_rows(on_disk) == barrier_rows(full)
    with pytest.raises(UserError, match="is a curve file, not a surface file"):  # each kind refuses the other
        read_surface(written(tmp_path / "cut", "_connect.h5"))


def test_the_midpoint_bezier_evaluates_to_the_line(mlp_ckpt, mlp_ckpt_b, tmp_path):
    curve = landscape.connect_checkpoints(mlp_ckpt, mlp_ckpt_b, str(tmp_path), **connect_options(lr=0.0, epochs=1))
    for m, v in curve.paths["line"].values.items():
        assert np.allclose(curve.paths["curve"].values[m], v, rtol=1e-5, atol=1e-6), m


def cli_args(a, b, out, *extra):
    return [a, b, "--out", str(out), "--epochs", "2", "--points", "5", "--samples", "128", "--no-progress",
            "--formats", "png", "--device", "cpu", *extra]


@pytest.mark.slow
def test_two_processes_train_the_same_curve_as_one(mlp_ckpt, mlp_ckpt_b, tmp_path):
    one = run_module("landscape.connect", *cli_args(mlp_ckpt, mlp_ckpt_b, tmp_path / "one", "--align"))
    two = run_module("landscape.connect", *cli_args(mlp_ckpt, mlp_ckpt_b, tmp_path / "two", "--align"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "on 2 processes" not in one.stdout and "figures:" in two.stdout
    c1, c2 = (read_curve(written(tmp_path / d, "_connect.h5")) for d in ("one", "two"))
    assert c1.alignment == c2.alignment
    assert np.allclose(c1.training["epoch_losses"], c2.training["epoch_losses"], rtol=1e-5)
    for p in c1.paths:
        for m, v in c1.paths[p].values.items():
            assert np.allclose(c2.paths[p].values[m], v, rtol=1e-5, atol=1e-6), (p, m)
    b1, b2 = (load_checkpoint(written(tmp_path / d, "_bend.pt"))["state_dict"] for d in ("one", "two"))
    assert all(torch.allclose(b1[k], b2[k], atol=1e-6) for k in b1)


@pytest.mark.slow
def test_connect_cli_writes_its_files_and_plot2d_draws_the_curve_on_its_plane(mlp_ckpt, mlp_ckpt_b, tmp_path):
    res = run_module("landscape.connect", *cli_args(mlp_ckpt, mlp_ckpt_b, tmp_path, "--align"))
    assert res.returncode == 0, res.stderr
    assert "alignment:" in res.stdout and "aligned_line" in res.stdout and "barrier" in res.stdout
    stem = written(tmp_path, "_connect.h5")[:-len("_connect.h5")]
    for suffix in ("_connect.h5", "_connect.png", "_bend.pt", "_aligned.pt"):
        assert os.path.exists(f"{stem}{suffix}"), suffix
    light = subprocess.run([sys.executable, "-c", "import sys; from landscape.connect import main; main(["
                            f"{stem + '_connect.h5'!r}, '--out', {str(tmp_path / 're2')!r}, '--formats', 'png']); "
                            "assert 'torch' not in sys.modules, 'a re-plot loaded torch'"], capture_output=True,
                           text=True, cwd=str(pathlib.Path(__file__).parents[1]))
    assert light.returncode == 0 and written(tmp_path / "re2", "_connect.png"), light.stderr  # a re-plot, light
    plane = run_module("landscape.plot2d", mlp_ckpt, "--plane", f"{stem}_aligned.pt", f"{stem}_bend.pt",
                       "--plane-points", "5", "--samples", "64", "--no-progress", "--formats", "png", "--out",
                       str(tmp_path), "--name", "plane")
    assert plane.returncode == 0, plane.stderr
    s = read_surface(str(tmp_path / "plane_plane.h5"))
    with pytest.raises(UserError, match="is a surface file, not a curve file"):
        read_curve(str(tmp_path / "plane_plane.h5"))
    bend_at = s.annotations.markers.coords[2]
    assert np.allclose(s.annotations.curve[[0, -1]], [[0, 0], [1, 0]])  # from A to B ...
    assert np.allclose(s.annotations.curve[50], [0.5 * bend_at[0] + 0.25, 0.5 * bend_at[1]])  # ... Bezier at t=1/2
    interp = run_module("landscape.plot1d", mlp_ckpt, f"{stem}_aligned.pt", "--x=0:1:3", "--samples", "64",
                        "--no-progress", "--formats", "png", "--out", str(tmp_path), "--name", "interp")
    aligned = run_module("landscape.plot1d", mlp_ckpt, mlp_ckpt_b, "--align", "--x=0:1:3", "--samples", "64",
                         "--no-progress", "--formats", "png", "--out", str(tmp_path), "--name", "aligned")
    assert interp.returncode == 0 and aligned.returncode == 0, interp.stderr + aligned.stderr
    assert "hidden units moved" in aligned.stdout
    same = [read_surface(str(tmp_path / f"{n}_interp.h5")).values["train_loss"] for n in ("interp", "aligned")]
    assert np.allclose(*same, rtol=1e-6)  # --align equals interpolating to the aligned checkpoint connect wrote


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(mlp_ckpt, mlp_ckpt_b, bn_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    other = tmp_path / "wide.pt"  # the same data, another width
    ckpt = load_checkpoint(mlp_ckpt)
    wide = build_model("mlp", num_classes=4, input_shape=[16], hidden=[48, 32])
    save_checkpoint(make_checkpoint(wide, "mlp", {"num_classes": 4, "input_shape": [16], "hidden": [48, 32]},
                                    ckpt["data"]["name"], ckpt["data"]["kwargs"]), str(other))
    lstm = build_model("lstm_lm", num_classes=28, d_model=8, hidden=8)
    unalignable = tmp_path / "lstm.pt"
    grammar = {"seq_len": 8, "train_tokens": 2048, "val_tokens": 512}
    save_checkpoint(make_checkpoint(lstm, "lstm_lm", {"num_classes": 28, "d_model": 8, "hidden": 8}, "grammar",
                                    grammar), str(unalignable))
    lstm_b = build_model("lstm_lm", num_classes=28, d_model=8, hidden=8)  # other initial weights
    save_checkpoint(make_checkpoint(lstm_b, "lstm_lm", {"num_classes": 28, "d_model": 8, "hidden": 8}, "grammar",
                                    grammar), str(tmp_path / "lstm_b.pt"))
    cases = [([mlp_ckpt, str(other)], "different architectures"),
             ([mlp_ckpt, bn_ckpt], "different architectures"),
             ([str(unalignable), str(tmp_path / "lstm_b.pt"), "--align"], "cannot align LSTMLanguageModel"),
             ([mlp_ckpt, mlp_ckpt_b, "--curve", "wiggly"], "invalid choice")]
    # the first through a real process; the others in this one (the same run_cli, without the import time)
    res = run_module("landscape.connect", *cases[0][0], "--out", str(out), "--no-progress")
    assert res.returncode == 2 and cases[0][1] in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    for args, message in cases[1:]:
        assert refused(capsys, connect_main, [*args, "--out", str(out), "--no-progress"], message)
        assert not out.exists()
    first = run_module("landscape.connect", *cli_args(mlp_ckpt, mlp_ckpt_b, out, "--epochs", "1"))
    assert first.returncode == 0, first.stderr
    before = tree_digest(out)
    for extra, message in [(["--curve", "polychain"], "another --curve"), (["--align"], "another --align"),
                           (["--lr", "0.1"], "other curve training settings")]:
        assert refused(capsys, connect_main, cli_args(mlp_ckpt, mlp_ckpt_b, out, "--epochs", "1", *extra), message)
        assert tree_digest(out) == before
    with pytest.raises(UserError, match="add --align"):
        SurfaceConfig(checkpoint="a.pt", target="b.pt", align_spec="x.json")
    with pytest.raises(UserError, match="--points must be >= 2"):
        CurveConfig(points=1)


def test_a_bend_written_into_a_tied_model_moves_both_names():
    from landscape.pipelines.connect_job import with_tensors

    model = build_model("transformer", num_classes=20, input_shape=(8,), d_model=16, n_layer=1, n_head=2,
                        tie_weights=True)
    new = torch.randn_like(model.tok.weight)
    state = with_tensors(model, {"tok.weight": new}).state_dict()
    assert torch.equal(state["tok.weight"], new) and torch.equal(state["head.weight"], new)
    assert not torch.equal(model.tok.weight, new)  # the model given is left as it was
