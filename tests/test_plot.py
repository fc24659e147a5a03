import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from landscape.base.figure_config import PlotConfig  # noqa: E402
from landscape.core.surface_file import Surface  # noqa: E402
from landscape.drawing import artists  # noqa: E402
from landscape.output import render  # noqa: E402
from tests import figure_checks  # noqa: E402


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


def _read_saved(monkeypatch) -> dict:
    """{file name: (problems, contour levels, y labels)} of every figure render saves from here on."""
    real, seen = render.save, {}

    def reading(fig, stem, *rest, **kw):
        seen[stem.rsplit("/", 1)[-1]] = (figure_checks.problems(fig), figure_checks.contour_levels(fig),
                                         [ax.get_ylabel() for ax in fig.axes])
        return real(fig, stem, *rest, **kw)

    monkeypatch.setattr(render, "save", reading)
    return seen


def _plane(top: float = 3.0, **annotations) -> Surface:
    from landscape.core.surface_file import Annotations

    x, y = np.linspace(-1, 1, 21), np.linspace(-1, 1, 17)
    z = np.add.outer(2 * y**2, x**2) * (top / 3) + 0.01
    return Surface(x=x, y=y, values={"train_loss": z, "train_acc": 100 - 10 * z}, done=np.ones(z.shape, bool),
                   annotations=Annotations(**annotations))


def test_plot2d_figures_read_alone_at_li_et_al_levels_and_the_page_draws_the_same(tmp_path, monkeypatch):
    from landscape.core.surface_file import Markers
    from landscape.output import viewers

    seen = _read_saved(monkeypatch)
    path = Markers(names=tuple(f"epoch {i}" for i in range(12)), kind="path",
                   coords=np.c_[np.linspace(-0.8, 0.1, 12), np.linspace(0.7, 0.0, 12)])
    points = Markers(names=("A", "B", "bend"), coords=np.array([[0.0, 0.0], [0.9, 0.0], [0.0, 0.9]]))
    curve = np.c_[np.linspace(0, 0.9, 10), 0.3 * np.sin(np.linspace(0, 3, 10))]
    for name, s in {"plain": _plane(), "path": _plane(markers=path, axis_labels=("1st PC: 80 %", "2nd PC: 9 %")),
                    "plane": _plane(markers=points, curve=curve)}.items():
        render.render_2d(s, str(tmp_path / name), PlotConfig(formats=("png",)))
    assert len(seen) == 3 * 2 * 4
    assert {k: p for k, (p, *_) in seen.items() if p} == {}  # labels, colourbars, a legend for the curve, no overlap
    paper = np.arange(0.1, 10, 0.5)
    for kind in ("contour", "contourf"):
        assert np.allclose(seen[f"plain_train_loss_{kind}"][1][0], paper)  # the loss: the paper's levels
        acc = seen[f"plain_train_acc_{kind}"][1][0]  # another metric: 20 over its own range
        assert len(acc) == 20 and figure_checks.evenly_spaced(acc)
    page = viewers.html_figure(_plane(), "t")
    loss, acc = (t for t in page.data if t.name in ("train_loss", "train_acc"))
    assert (loss.contours.z.start, loss.contours.z.size) == pytest.approx((0.1, 0.5))
    assert np.nanmax(np.asarray(loss.z, float)) <= paper[-1]  # drawn flat above the top level, as the PNGs
    assert acc.contours.z.size == pytest.approx(np.diff(seen["plain_train_acc_contour"][1][0])[0])


def test_a_loss_that_crosses_few_of_li_et_al_levels_gets_its_own_and_levels_or_loss_max_choose():
    shallow, high = _plane(top=0.4), _plane()
    high.values["train_loss"] = high.values["train_loss"] + 40  # a loss above 10 everywhere
    for s in (shallow, high):
        z = s.values["train_loss"]
        levels = artists.loss_levels(z)
        assert len(levels) == 20 and levels[0] == pytest.approx(z.min()) and levels[-1] == pytest.approx(z.max())
    z = _plane().values["train_loss"]
    assert np.allclose(artists.loss_levels(z, 7), np.linspace(z.min(), z.max(), 7))
    assert np.allclose(artists.loss_levels(z, vmax=2.0), np.linspace(z.min(), 2.0, 20))
    with pytest.raises(Exception, match="--levels must be >= 2"):
        PlotConfig(levels=1)


def test_1d_path_density_and_hessian_map_figures_read_alone_and_a_log_axis_says_so(tmp_path, monkeypatch):
    seen = _read_saved(monkeypatch)
    x = np.linspace(-1, 1, 31)
    s = Surface(x=x, y=None, values={"train_loss": x**2 + 0.01, "train_acc": 90 - 10 * x**2,
                                     "test_loss": x**2 + 0.1, "test_acc": 80 - 10 * x**2}, done=np.ones(31, bool))
    render.render_1d([("", s)], str(tmp_path / "one"), PlotConfig(formats=("png",)), "one")
    render.render_1d([("small", s), ("large", s)], str(tmp_path / "two"), PlotConfig(formats=("png",)), "two")
    render.render_1d([("", s)], str(tmp_path / "log"), PlotConfig(formats=("png",), log=True), "log")
    grid = np.linspace(0, 5, 100)
    render.render_density([("BS=64", grid, np.exp(-grid))], 0.1, str(tmp_path / "density"), ("png",))
    plane = _plane()
    plane.values = {"lambda_max": plane.values["train_loss"] + 1, "lambda_min": -0.1 * plane.values["train_loss"]}
    render.render_hessian_map(plane, str(tmp_path / "map"), PlotConfig(formats=("png",)))
    from landscape.core.curve_file import Curve
    from landscape.core.surface_file import Origin

    t = np.linspace(0, 1, 11)
    bump = {"train_loss": 0.1 + np.sin(np.pi * t), "train_acc": 99 - 20 * np.sin(np.pi * t),
            "test_loss": 0.3 + np.sin(np.pi * t), "test_acc": 90 - 20 * np.sin(np.pi * t)}
    paths = {name: Surface(x=t, y=None, values={k: v * scale for k, v in bump.items()}, done=np.ones(11, bool))
             for name, scale in (("line", 1.0), ("aligned_line", 0.6), ("curve", 0.2))}
    curve = Curve(t=t, paths=paths, curve="bezier", origin=Origin(checkpoint="/r/bs64/last.pt",
                                                                   target="/r/bs1000/last.pt"))
    render.render_curve(curve, str(tmp_path / "path"), PlotConfig(formats=("png",)))
    render.render_curve(curve, str(tmp_path / "path_log"), PlotConfig(formats=("png",), log=True))
    assert {k: p for k, (p, *_) in seen.items() if p} == {}
    assert sorted(seen) == ["density", "log", "map", "one", "path", "path_log", "two"]
    assert seen["one"][2] == ["loss", "accuracy (%)"] and seen["log"][2] == ["loss (log scale)", "accuracy (%)"]
    assert seen["path"][2] == ["train loss", "train error (%)", "test loss", "test error (%)"]
    assert seen["path_log"][2][0] == "train loss (log scale)" and seen["path_log"][2][1] == "train error (%)"
