import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from landscape.base.config import PlotConfig  # noqa: E402
from landscape.core.surface_file import Surface  # noqa: E402
from landscape.drawing import artists  # noqa: E402
from landscape.pipelines import render  # noqa: E402


def _bowl(nan_corner: bool):
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    z = np.add.outer(2 * y**2, x**2) + 0.1  # (len(y), len(x)): row = y
    if nan_corner:
        z[0, 0], z[-1, -1] = np.nan, np.inf
    return x, y, z


@pytest.mark.parametrize("nan_corner", [False, True])
@pytest.mark.parametrize("fn", [artists.contour, artists.contourf, artists.heatmap])
def test_2d_plots_render_including_non_finite_points(fn, nan_corner):
    x, y, z = _bowl(nan_corner)
    fig, ax = plt.subplots()
    artist = fn(ax, x, y, z)
    fig.canvas.draw()
    assert artist is not None
    plt.close(fig)


@pytest.mark.parametrize("nan_corner", [False, True])
def test_3d_surface_renders(nan_corner):
    x, y, z = _bowl(nan_corner)
    fig = plt.figure()
    ax = fig.add_subplot(projection="3d")
    surf = artists.surface3d(ax, x, y, z, vmax=2.0)
    fig.canvas.draw()
    assert surf is not None
    plt.close(fig)


def test_levels_ignore_non_finite_values_and_clip():
    _, _, z = _bowl(True)
    levels = artists.levels_for(z, 5, vmax=1.0)
    assert levels[0] == pytest.approx(0.1) and levels[-1] == 1.0
    assert artists.finite_range(np.full((2, 2), np.nan)) == (0.0, 1.0)


def test_1d_curves_and_file_rendering(tmp_path):
    x = np.linspace(-1, 1, 11)
    s = Surface(x=x, y=None, values={"train_loss": x**2, "train_acc": 90 - 10 * x**2, "test_loss": x**2 + 0.1,
                                     "test_acc": np.where(x > 0.8, np.nan, 80.0)}, done=np.ones(11, bool))
    files = render.render_1d([("a", s), ("b", s)], str(tmp_path / "o"), PlotConfig(log=True))
    assert sorted(p.rsplit(".", 1)[1] for p in files) == ["pdf", "png"]
    x2, y2, z = _bowl(True)
    s2 = Surface(x=x2, y=y2, values={"test_loss": z}, done=np.ones(z.shape, bool))
    files = render.render_2d(s2, str(tmp_path / "s"), PlotConfig(formats=("png",)))
    assert len(files) == 4 and all((tmp_path / f.split("/")[-1]).stat().st_size > 1000 for f in files)
