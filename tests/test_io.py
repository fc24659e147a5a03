"""The HDF5 schema: the reference implementation's 2D layout (row = y, column = x), checked with plain h5py and
matplotlib's convention; files of the previous release (schema 1, tests/data) still read, and resume."""

import os
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from landscape.base.config import SurfaceConfig
from landscape.base.errors import UserError
from landscape.core.surface_file import read_directions, read_surface
from landscape.models.checkpoint_file import load_data_for, load_model
from landscape.pipelines.from_checkpoint import run_surface
from tests.conftest import SINGLE

DATA = os.path.join(os.path.dirname(__file__), "data")


def loss_at(ckpt: str, directions: list[dict[str, np.ndarray]], coords: tuple[float, ...], split: str) -> float:
    """The mean cross-entropy at theta0 + sum c_i d_i, computed directly, without the surface engine."""
    model, ck = load_model(ckpt)
    x, y = load_data_for(ck).split(split)
    theta0 = dict(model.named_parameters())
    params = {k: theta0[k].detach() + sum(c * torch.from_numpy(d[k]) for c, d in zip(coords, directions))
              for k in theta0}
    with torch.no_grad():
        return F.cross_entropy(functional_call(model, params, (x,)), y).item()


def test_2d_values_are_row_y_column_x_as_the_reference_and_matplotlib_read_them(mlp_ckpt, tmp_path):
    """A 7 x 5 grid with asymmetric ranges: [i, j] of the file holds the loss at (x[j], y[i]), so
    contour(*np.meshgrid(x, y), z) draws each value where it belongs."""
    path = run_surface(SurfaceConfig(mlp_ckpt, out=str(tmp_path), x="-1:0.5:7", y="-0.2:0.6:5", splits=("test",),
                                     progress=False), SINGLE).path
    with h5py.File(path, "r") as f:
        x, y, z = f["xcoordinates"][...], f["ycoordinates"][...], f["test_loss"][...]
        assert z.shape == (5, 7)
        assert f["test_loss"].dims[0][0].name == "/ycoordinates" and f["test_loss"].dims[1][0].name == "/xcoordinates"
    dirs = read_directions(path)
    X, Y = np.meshgrid(x, y)  # the grid the reference implementation and matplotlib pair with z
    for i, j in [(0, 6), (4, 0), (1, 3), (3, 5)]:
        assert (X[i, j], Y[i, j]) == (x[j], y[i])
        assert z[i, j] == pytest.approx(loss_at(mlp_ckpt, dirs, (x[j], y[i]), "test"), rel=1e-5)
    assert not np.allclose(z[1, 3], loss_at(mlp_ckpt, dirs, (x[1], y[3]), "test"), rtol=1e-3)  # transposed: wrong


def test_schema_1_files_read_with_the_same_meaning():
    """Written by landscape 0.1.0, which stored (x[i], y[j]) at [i, j]: read as row = y all the same."""
    path = os.path.join(DATA, "v1_tiny_2d.h5")
    s = read_surface(path)
    with h5py.File(path, "r") as f:
        raw = f["train_loss"][...]
        assert f.attrs["schema_version"] == 1 and raw.shape == (4, 3)
    assert s.schema_version == 1 and s.is_2d
    assert s.values["train_loss"].shape == (3, 4) and s.done.shape == (3, 4) and s.done.all()
    np.testing.assert_array_equal(s.values["train_loss"], raw.T)
    assert set(s.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    dirs, ckpt = read_directions(path), os.path.join(DATA, "v1_tiny.pt")
    for i, j in [(0, 3), (2, 0), (1, 2)]:
        assert s.values["train_loss"][i, j] == pytest.approx(loss_at(ckpt, dirs, (s.x[j], s.y[i]), "train"), rel=1e-5)
    assert (s.origin.training.global_batch_size, s.origin.training.weight_decay) == (16, 0.0)
    assert s.origin.model["name"] == "mlp" and s.origin.metrics["test_acc"] == pytest.approx(71.875)
    assert s.config["x"] == "-1:1:4" and s.fingerprint["ycoordinates"] == [-0.5, 0.0, 0.5]
    one = read_surface(os.path.join(DATA, "v1_tiny_1d.h5"))
    assert one.values["test_loss"].shape == (5,) and not one.is_2d


def _v1_copy(tmp_path, blank: list[tuple[int, int]]) -> str:
    """The schema-1 fixture in a fresh folder, beside its checkpoint, with some points blanked as a kill would."""
    for name in ("v1_tiny_2d.h5", "v1_tiny.pt"):
        shutil.copy(os.path.join(DATA, name), tmp_path / name)
    path = str(tmp_path / "v1_tiny_2d.h5")
    with h5py.File(path, "r+") as f:
        for i, j in blank:  # schema 1: [x index, y index]
            f["done"][i, j] = 0
            for m in ("train_loss", "train_acc", "test_loss", "test_acc"):
                f[m][i, j] = np.nan
    return path


def _v1_request(tmp_path, **kw) -> SurfaceConfig:
    # the fixture's own directions, byte for byte, so the resume check sees the same directions
    return SurfaceConfig(str(tmp_path / "v1_tiny.pt"), out=str(tmp_path), name="v1_tiny", x="-1:1:4",
                         y="-0.5:0.5:3", directions_file=str(tmp_path / "v1_tiny_2d.h5"), progress=False, **kw)


def test_resuming_a_schema_1_file_rewrites_it_in_schema_2_and_computes_only_the_missing_points(tmp_path):
    before = read_surface(os.path.join(DATA, "v1_tiny_2d.h5"))
    path = _v1_copy(tmp_path, blank=[(0, 2), (3, 1)])  # x index, y index
    run = run_surface(_v1_request(tmp_path), SINGLE)
    assert (run.computed, run.already_done) == (2, 10)
    after = read_surface(path)
    assert after.schema_version == 2 and after.done.all()
    with h5py.File(path, "r") as f:
        assert f["train_loss"].shape == (3, 4) and f["train_loss"].dims[0][0].name == "/ycoordinates"
    for m in before.values:
        kept = np.ones((3, 4), bool)
        kept[2, 0] = kept[1, 3] = False  # the blanked points, now (y index, x index)
        np.testing.assert_array_equal(after.values[m][kept], before.values[m][kept], err_msg=m)
        np.testing.assert_allclose(after.values[m], before.values[m], rtol=1e-6, err_msg=m)
    assert after.origin == before.origin and after.fingerprint == before.fingerprint


def test_a_refused_resume_of_a_schema_1_file_leaves_it_untouched(tmp_path):
    path = _v1_copy(tmp_path, blank=[(0, 0)])
    raw = open(path, "rb").read()
    with pytest.raises(UserError, match="another x grid"):
        run_surface(SurfaceConfig(**{**_v1_request(tmp_path).__dict__, "x": "-2:2:4"}), SINGLE)
    assert open(path, "rb").read() == raw


def test_directions_hash_is_the_one_schema_1_stored():
    from landscape.core.surface_file import directions_sha256

    path = os.path.join(DATA, "v1_tiny_2d.h5")
    assert directions_sha256(read_directions(path)) == read_surface(path).directions_sha256
