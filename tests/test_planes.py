"""Planes through checkpoints: three of them (plot2d --plane), with their own losses at their markers; an
optimizer's trajectory on its principal components (landscape.trajectory), equal to an explicit PCA; and BatchNorm
statistics re-estimated at every point (--bn-recalibrate), equal to a manual re-estimation on 1 and 2 processes and
across a resume."""

from __future__ import annotations

import copy
import itertools
import weakref

import h5py
import numpy as np
import pytest
import torch
from conftest import SINGLE, run_module, train_config

from landscape.base.config import SurfaceConfig
from landscape.base.errors import UserError
from landscape.core.params import from_numpy
from landscape.core.pca import trajectory_pca
from landscape.core.surface_file import read_directions, read_surface
from landscape.models.checkpoint_file import load_data_for, load_model
from landscape.pipelines.from_checkpoint import run_surface
from trainers.loop import fit


def _state(path: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: v.double() for k, v in state.items() if v.is_floating_point()}


@pytest.mark.slow
def test_plane_puts_each_checkpoint_on_a_grid_point_with_its_own_loss(mlp_ckpt, mlp_ckpt_b, mlp_ckpt_c, tmp_path):
    r = run_module("landscape.plot2d", mlp_ckpt, "--plane", mlp_ckpt_b, mlp_ckpt_c, "--edges", "--x=-0.5:1.5:6",
                   "--out", str(tmp_path), "--no-progress", "--formats", "png", "--eval-batch-size", "100")
    assert r.returncode == 0, r.stderr
    s = read_surface(next(str(p) for p in tmp_path.glob("*_plane.h5")))
    a, b, c = _state(mlp_ckpt), _state(mlp_ckpt_b), _state(mlp_ckpt_c)
    ab = {k: b[k] - a[k] for k in a}
    ac = {k: c[k] - a[k] for k in a}
    alpha_c = sum(float((ac[k] * ab[k]).sum()) for k in a) / sum(float((ab[k] ** 2).sum()) for k in a)
    np.testing.assert_allclose(s.annotations.markers.coords, [[0, 0], [1, 0], [alpha_c, 1]], atol=1e-9)
    assert s.annotations.markers.names == ("mlp_run0_last", "mlp_run_b0_last", "mlp_run_c0_last")
    d1, d2 = (from_numpy(d) for d in read_directions(next(str(p) for p in tmp_path.glob("*_plane.h5"))))
    assert abs(sum(float((d1[k].double() * d2[k].double()).sum()) for k in d1)) < 1e-6  # Gram-Schmidt
    for ckpt, (alpha, beta) in zip((mlp_ckpt, mlp_ckpt_b, mlp_ckpt_c), s.annotations.markers.coords):
        i, j = list(s.y).index(beta), list(s.x).index(alpha)  # exactly on the grid, not interpolated
        own = torch.load(ckpt, weights_only=True)["metrics"]
        for m in ("train_loss", "test_loss", "test_acc"):
            assert s.values[m][i, j] == pytest.approx(own[m], rel=1e-5, abs=1e-9), (ckpt, m)
    assert len(list(tmp_path.glob("*_plane_edges.png"))) == 1
    edges = sorted(tmp_path.glob("*_interp.h5"))
    assert len(edges) == 3
    for e in edges:
        curve = read_surface(str(e))
        at1 = list(curve.x).index(1.0)
        target = torch.load(curve.origin.target, weights_only=True)["metrics"]
        assert curve.values["train_loss"][at1] == pytest.approx(target["train_loss"], rel=1e-5)


def test_plane_flags_are_checked():
    with pytest.raises(UserError, match="two checkpoints"):
        SurfaceConfig("a.pt", plane=("b.pt",))
    with pytest.raises(UserError, match="--edges"):
        SurfaceConfig("a.pt", edges=True, y="-1:1:3")
    with pytest.raises(UserError, match="leave out the second checkpoint"):
        SurfaceConfig("a.pt", plane=("b.pt", "c.pt"), target="d.pt")


def _manual_recalibration(ckpt: str, path: str, alpha: float, n_batches: int, batch_size: int) -> dict[str, float]:
    """The loss at theta0 + alpha*d1 with BatchNorm re-estimated by hand: a fresh model, the statistics reset,
    n_batches of the train split in train mode (cumulative average), then eval mode."""
    model, raw = load_model(ckpt)
    model = copy.deepcopy(model).double()
    d1 = from_numpy(read_directions(path)[0])
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.add_(d1[k].double(), alpha=alpha)
    model.float()
    data = load_data_for(raw)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    xs, ys = data.split("train")
    with torch.no_grad():
        for xb in itertools.islice(xs.split(batch_size), n_batches):
            model(xb)
    model.eval()
    out = {}
    with torch.no_grad():
        for split in ("train", "test"):
            x, y = data.split(split)
            out[f"{split}_loss"] = float(torch.nn.functional.cross_entropy(model(x), y))
    return out


def test_bn_recalibration_far_from_the_centre_equals_a_manual_one(bn_ckpt, tmp_path):
    common = dict(checkpoint=bn_ckpt, out=str(tmp_path), x="0:1.5:3", eval_batch_size=32, progress=False,
                  channels_last=False)
    stale = read_surface(run_surface(SurfaceConfig(**common, name="stale"), SINGLE).path)
    path = run_surface(SurfaceConfig(**common, name="bn", bn_recalibrate=3), SINGLE).path
    s = read_surface(path)
    manual = _manual_recalibration(bn_ckpt, path, 1.5, 3, 32)
    for m, v in manual.items():
        assert s.values[m][-1] == pytest.approx(v, rel=1e-4), m
    assert abs(s.values["train_loss"][-1] - stale.values["train_loss"][-1]) > 1e-3  # it did change something
    assert s.fingerprint["bn_recalibrate"] == 3
    with pytest.raises(UserError, match="another --bn-recalibrate"):
        run_surface(SurfaceConfig(**common, name="bn", bn_recalibrate=4), SINGLE)
    with pytest.raises(UserError, match="do not combine"):
        run_surface(SurfaceConfig(**common, name="k", bn_recalibrate=2, points_per_pass=2), SINGLE)


def test_bn_recalibration_of_a_model_without_batchnorm_is_refused(mlp_ckpt, tmp_path):
    with pytest.raises(UserError, match="no BatchNorm"):
        run_surface(SurfaceConfig(mlp_ckpt, out=str(tmp_path), x="0:1:2", bn_recalibrate=2, progress=False), SINGLE)


@pytest.mark.slow
def test_bn_recalibration_is_exact_on_two_processes_and_across_a_resume(bn_ckpt, tmp_path, one_thread):
    flags = dict(x="-1:1:3", y="-1:1:3", bn_recalibrate=2, eval_batch_size=64, progress=False)
    one = run_surface(SurfaceConfig(bn_ckpt, out=str(tmp_path / "one"), **flags), SINGLE).path
    two = run_module("landscape.plot2d", bn_ckpt, "--x=-1:1:3", "--y=-1:1:3", "--bn-recalibrate", "2",
                     "--eval-batch-size", "64", "--no-progress", "--formats", "png", "--out", str(tmp_path / "two"),
                     nproc=2)
    assert two.returncode == 0, two.stderr
    f2 = next(str(p) for p in (tmp_path / "two").glob("*.h5"))
    s1, s2 = read_surface(one), read_surface(f2)
    for m in s1.values:
        np.testing.assert_array_equal(s1.values[m], s2.values[m])
    with h5py.File(f2, "r+") as f:  # forget four points, as a kill would
        done = f["done"][...]
        done.reshape(-1)[[0, 3, 4, 8]] = 0
        f["done"][...] = done
    again = run_surface(SurfaceConfig(bn_ckpt, out=str(tmp_path / "two"), **flags), SINGLE)
    assert (again.computed, again.already_done) == (4, 5)
    s3 = read_surface(f2)
    for m in s1.values:
        np.testing.assert_array_equal(s1.values[m], s3.values[m])


# ----------------------------------------------------------------------------- trajectories (landscape.core.pca)

def _explicit_pca(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's PCA written out on the stacked matrix: centred SVD; (components, ratios, projections)."""
    centred = diffs - diffs.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    return vt, sv ** 2 / (sv ** 2).sum(), diffs @ vt[:2].T


@pytest.mark.parametrize("block", [1, 3, 50])
def test_trajectory_pca_from_the_gram_matrix_equals_an_explicit_pca(block):
    rng = np.random.default_rng(0)
    n, shapes = 9, {"a": (5, 4), "b": (7,)}
    mats = [{k: torch.from_numpy(rng.standard_normal(s) * (1 + i)).float() for k, s in shapes.items()}
            for i in range(n)]
    alive, peak = [0], [0]

    def diff(i):
        d = {k: v.clone() for k, v in mats[i].items()}
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(d["a"], lambda: alive.__setitem__(0, alive[0] - 1))
        return d

    pca = trajectory_pca(diff, n, mats[0], block=block)
    stacked = np.stack([np.concatenate([m[k].double().numpy().ravel() for k in shapes]) for m in mats])
    vt, ratio, coords = _explicit_pca(stacked)
    np.testing.assert_allclose(pca.explained_variance_ratio, ratio, atol=1e-9)
    for c in range(2):
        mine = np.concatenate([pca.directions[c][k].double().numpy().ravel() for k in shapes])
        sign = np.sign(mine @ vt[c])
        np.testing.assert_allclose(sign * mine, vt[c], atol=1e-5)
        np.testing.assert_allclose(sign * pca.coords[:, c], coords[:, c], atol=1e-4)
    assert peak[0] <= min(block, n) + 1  # never the whole trajectory in memory (with a small block)
    assert pca.reads <= n + n * (n + 1) // (2 * min(block, n)) + n + n


def test_trajectory_pca_refuses_too_few_or_collinear_checkpoints():
    one = {"w": torch.ones(3, 3)}
    with pytest.raises(UserError, match="at least 3"):
        trajectory_pca(lambda i: one, 2, one)
    with pytest.raises(UserError, match="span a plane"):
        trajectory_pca(lambda i: {"w": one["w"] * i}, 4, one)


@pytest.mark.slow
def test_trajectory_cli_on_a_run_folder(tmp_path):
    run = tmp_path / "run"
    fit(train_config(run, save_every=1, epochs=4), SINGLE)
    r = run_module("landscape.trajectory", str(run), "--out", str(tmp_path / "out"), "--no-progress",
                   "--formats", "png", "--x=-6:2:9", "--y=-2:2:5")
    assert r.returncode == 0, r.stderr
    s = read_surface(next(str(p) for p in (tmp_path / "out").glob("*_trajectory.h5")))
    states = [torch.load(run / f"epoch_{e:04d}.pt", weights_only=True)["state_dict"] for e in range(5)]
    names = [k for k, v in states[-1].items() if v.dim() > 1]  # biases ignored, as by random directions
    flat = np.stack([np.concatenate([(st[k] - states[-1][k]).double().numpy().ravel() for k in names])
                     for st in states[:-1]])
    _, ratio, coords = _explicit_pca(flat)
    np.testing.assert_allclose(s.annotations.explained_variance_ratio, ratio, atol=1e-6)
    m = s.annotations.markers
    assert m.kind == "path" and m.names == ("epoch 0", "epoch 1", "epoch 2", "epoch 3", "epoch 4")
    np.testing.assert_allclose(np.abs(m.coords[:-1]), np.abs(coords), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(m.coords[-1], [0, 0])
    assert s.annotations.axis_labels[0] == f"1st PC: {100 * ratio[0]:.2f} %"
    assert (tmp_path / "out" / "run_epoch_0004_trajectory_train_loss_contour.png").exists()
    final = torch.load(run / "epoch_0004.pt", weights_only=True)["metrics"]
    assert s.values["train_loss"][2, 6] == pytest.approx(final["train_loss"], rel=1e-5)  # (0, 0): the final weights
