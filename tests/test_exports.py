"""Exports of a surface file: VTK PolyData that ParaView reads (parsed here as XML: its point and polygon counts,
its values), and the interactive HTML page, opened in headless Chromium (rendered, not blank, no console errors)."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
from conftest import run_module

from landscape.core.surface_file import Annotations, Markers, Surface
from landscape.output import viewers


def _surface(nx: int = 7, ny: int = 5, markers: bool = True) -> Surface:
    x, y = np.linspace(-1, 1, nx), np.linspace(-0.5, 1.5, ny)
    xx, yy = np.meshgrid(x, y)
    z = 1 + xx ** 2 + 2 * (yy - 0.5) ** 2
    z[0, 0] = np.nan  # a point not computed yet
    m = Markers(("A", "B", "C"), np.array([[0.0, 0.0], [1.0, 0.0], [0.3, 1.0]]), "points") if markers else None
    return Surface(x, y, {"train_loss": z, "train_acc": 100 - z}, np.isfinite(z), annotations=Annotations(markers=m))


def _arrays(root: ET.Element) -> dict[str, np.ndarray]:
    return {a.get("Name"): np.array(a.text.split(), float) for a in root.iter("DataArray")}


def test_vtp_is_polydata_with_one_point_per_grid_point_and_one_quad_per_cell(tmp_path):
    s = _surface()
    path = viewers.write_vtp(s, str(tmp_path / "s.vtp"), "train_loss")
    root = ET.parse(path).getroot()
    assert root.get("type") == "PolyData"
    piece = root.find("PolyData/Piece")
    assert int(piece.get("NumberOfPoints")) == 35 and int(piece.get("NumberOfPolys")) == 6 * 4
    a = _arrays(root)
    points = a["Points"].reshape(-1, 3)
    assert len(a["train_loss"]) == 35 and len(a["offsets"]) == 24 and a["offsets"][-1] == 96
    conn = a["connectivity"].reshape(-1, 4).astype(int)
    assert conn.min() == 0 and conn.max() == 34
    z = s.values["train_loss"]
    top = np.nanmax(z)
    np.testing.assert_allclose(points[:, 2], np.where(np.isfinite(z), z, top).ravel(), rtol=1e-6)
    np.testing.assert_allclose(points[1, :2], [s.x[1], s.y[0]])  # the grid's flat order: row = y
    for quad in conn:  # every quad is one grid cell: its corners are neighbours
        xs, ys = points[quad, 0], points[quad, 1]
        assert len(set(np.round(xs, 9))) == 2 and len(set(np.round(ys, 9))) == 2


def test_vtp_log_scale_clipping_and_resampling(tmp_path):
    s = _surface()
    a = _arrays(ET.parse(viewers.write_vtp(s, str(tmp_path / "l.vtp"), "train_loss", log=True, zmax=1.0)).getroot())
    z = s.values["train_loss"]
    expected = np.where(np.isfinite(z), np.minimum(np.log(z + 0.1), 1.0), 1.0).ravel()  # not computed: at the top
    np.testing.assert_allclose(a["train_loss_log"], expected, rtol=1e-6)
    root = ET.parse(viewers.write_vtp(s, str(tmp_path / "i.vtp"), "train_loss", interp=20)).getroot()
    piece = root.find("PolyData/Piece")
    assert int(piece.get("NumberOfPoints")) == 400 and int(piece.get("NumberOfPolys")) == 361


@pytest.mark.slow
def test_export_command_and_its_refusals(tmp_path):
    from landscape.core.surface_file import open_surface

    s = _surface()
    h5 = str(tmp_path / "s.h5")
    writer = open_surface(h5, s.x, s.y, list(s.values), [{"w": np.zeros((2, 2), np.float32)}] * 2, origin=s.origin,
                          evaluation={},
                          config={}, annotations=s.annotations)
    writer.write(np.arange(35), np.stack([v.ravel() for v in s.values.values()], axis=1))
    writer.close()
    ok = run_module("landscape.export", h5, "--vtp", "--html", "--log")
    assert ok.returncode == 0, ok.stderr
    assert os.path.exists(tmp_path / "s_train_loss_log.vtp") and os.path.exists(tmp_path / "s.html")
    for args, msg in [((), "say what to write"), (("--vtp", "--interp", "1"), "--interp"),
                      (("--vtp", "--metric", "nope"), "no metric 'nope'")]:
        r = run_module("landscape.export", h5, *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("LANDSCAPE_REQUIRE_BROWSER"):
        pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
    return found


@pytest.mark.slow
def test_html_page_renders_offline_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium here (apt-get install chromium; .ci/run installs it)")
    page = viewers.write_html(_surface(21, 17), str(tmp_path / "page.html"), "a test surface")
    sources = []

    class Scripts(HTMLParser):
        def handle_starttag(self, tag, attrs):
            sources.extend(v for k, v in attrs if tag in ("script", "link") and k in ("src", "href"))

    Scripts().feed(open(page).read())
    assert sources == []  # every script is inline: the page fetches nothing
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,700", "--virtual-time-budget=10000",
           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", f"file://{page}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if ("Uncaught" in line or "rror" in line) and "GL Driver" not in line]
    assert not errors, errors
    img = matplotlib.image.imread(str(shot))[..., :3]
    assert img.shape[0] >= 600
    colours = len(np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0))
    assert img.std() > 0.05 and colours > 200, (img.std(), colours)  # a drawn surface, not a blank page
    dom = subprocess.run(cmd[:-2] + ["--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120)
    assert "gl-container" in dom.stdout and "a test surface" in dom.stdout
