"""The figure scripts end to end on their seconds-long 'smoke' presets (generated data)."""

import csv
import json
import os
import re

import numpy as np
import pytest

from landscape.models import load_checkpoint
from tests import figure_checks
from tests.conftest import run_module

pytestmark = pytest.mark.slow


def drawn_figures(main, args, monkeypatch) -> dict[str, dict]:
    """Run a figure script's main in this process (on a folder whose runs and surfaces exist, so it only draws),
    and read each figure's artists as it is saved: {file name: {"problems": [...], "levels": [...]}}."""
    from landscape.output import render

    real, seen = render.save, {}

    def reading(fig, stem, *rest, **kw):
        seen[os.path.basename(stem)] = {"problems": figure_checks.problems(fig),
                                        "levels": figure_checks.contour_levels(fig)}
        return real(fig, stem, *rest, **kw)

    monkeypatch.setattr(render, "save", reading)
    main(args)
    return seen


def test_flat_vs_sharp_writes_figures_and_summary_reuses_everything_and_reads_alone(tmp_path, monkeypatch):
    res = run_module("figures.flat_vs_sharp", "--preset", "smoke", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert len(rows) == 4
    for col in ("batch_size", "weight_decay", "test_error", "lambda_max", "trace", "width_1d"):
        assert all(r[col] not in ("", "nan") for r in rows), col
    for name in ("flat_vs_sharp", "no_filter_norm"):
        assert os.path.getsize(tmp_path / f"{name}.png") > 10_000 and os.path.exists(tmp_path / f"{name}.pdf")
    assert len(os.listdir(tmp_path / "surfaces")) == 12
    assert sorted(os.listdir(tmp_path / "pages")) == sorted(f"bs{b}_wd{w}_2d.html" for b in (16, 256)
                                                             for w in ("0", "0.0005"))
    for page in os.listdir(tmp_path / "pages"):  # the loss's contours at the figure's linear levels, on every page
        first = re.search(r'"contours":\{"z":\{(.*?)"usecolormap"', open(tmp_path / "pages" / page).read()).group(1)
        assert '"end":9.6' in first and '"size":0.5,' in first and '"start":0.1,' in first, (page, first)
    again = run_module("figures.flat_vs_sharp", "--preset", "smoke", "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete") == 4
    assert again.stdout.count("0 points computed") == 12
    check_flat_vs_sharp_panels(tmp_path, monkeypatch)


def check_flat_vs_sharp_panels(tmp_path, monkeypatch):
    """Its figures read alone (labels, legends, colourbars, no texts running together), at the paper's linear levels
    in all four 2D panels (log-spaced only when asked, and then the title says so)."""
    import numpy as np

    from figures import flat_vs_sharp

    args = ["--preset", "smoke", "--out", str(tmp_path)]
    drawn = drawn_figures(flat_vs_sharp.main, args, monkeypatch)
    assert drawn["flat_vs_sharp"]["problems"] == [] and drawn["no_filter_norm"]["problems"] == []
    levels = drawn["flat_vs_sharp"]["levels"]
    assert len(levels) == 4 and all(np.array_equal(lv, levels[0]) for lv in levels)
    assert figure_checks.evenly_spaced(levels[0]) and levels[0][0] == pytest.approx(0.1)
    logged = drawn_figures(flat_vs_sharp.main, [*args, "--log-contours"], monkeypatch)
    assert not figure_checks.evenly_spaced(logged["flat_vs_sharp"]["levels"][0])


def test_connectivity_joins_three_pairs_three_ways_and_reuses_everything(tmp_path, monkeypatch):
    res = run_module("figures.connectivity", "--preset", "smoke", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["pair"], r["path"]) for r in rows] == [(pair, path) for pair in ("batch", "weight_decay", "seed")
                                                      for path in ("line", "aligned_line", "curve")]
    for col in ("train_loss_barrier", "test_loss_barrier", "train_error_barrier", "test_error_barrier"):
        assert all(float(r[col]) >= 0 for r in rows), col  # t = 0 rises by nothing: no barrier is negative
    seed = {r["path"]: r for r in rows if r["pair"] == "seed"}
    assert float(seed["line"]["units_moved_pct"]) > 50  # two seeds: most units change places
    assert float(seed["aligned_line"]["train_loss_barrier"]) < float(seed["line"]["train_loss_barrier"])
    assert os.path.getsize(tmp_path / "connectivity.png") > 10_000 and os.path.exists(tmp_path / "connectivity.pdf")
    assert len([f for f in os.listdir(tmp_path / "connect") if f.endswith(".h5")]) == 6  # 3 curve files, 3 planes
    again = run_module("figures.connectivity", "--preset", "smoke", "--out", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete") == 5 and again.stdout.count("0 points along the paths") == 3
    from figures import connectivity

    drawn = drawn_figures(connectivity.main, ["--preset", "smoke", "--out", str(tmp_path)], monkeypatch)
    assert drawn["connectivity"]["problems"] == []


def test_generalization_gap_trains_every_remedy_and_writes_its_figures_table_and_verdict(tmp_path, monkeypatch):
    res = run_module("figures.generalization_gap", "--preset", "smoke", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = {r["run"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert list(rows) == ["small", "naive", "goyal", "hoffer", "lars", "sam", "ramp", "tau"]
    assert float(rows["small"]["gap_recovered"]) == 1 and float(rows["naive"]["gap_recovered"]) == 0
    assert rows["hoffer"]["bn_batch"] == "16" and rows["naive"]["bn_batch"] == "128"  # the ghost batch
    assert int(rows["hoffer"]["steps"]) >= int(rows["small"]["steps"]) > int(rows["naive"]["steps"])  # regime
    for col in ("test_error", "lambda_max", "trace", "epsilon_sharpness", "width"):
        assert all(r[col] not in ("", "nan") for r in rows.values()), col
    for name in ("gap_curves", "edge_of_stability", "minima", "final"):
        assert os.path.getsize(tmp_path / f"{name}.png") > 10_000 and os.path.exists(tmp_path / f"{name}.pdf")
    assert "rank correlation over the 7 large-batch runs" in res.stdout
    tau = load_checkpoint(str(tmp_path / "runs" / "tau_s0" / "last.pt"))["optimizer"]["param_groups"][0]
    assert tau["weight_decay"] == pytest.approx(5e-4 * (128 / 16) ** 0.5)  # holding the small batch's tau
    tracked = [json.loads(line) for line in open(tmp_path / "runs" / "naive_s0" / "metrics.jsonl")]
    assert any(r.get("kind") == "sharpness" and r["threshold"] for r in tracked)
    again = run_module("figures.generalization_gap", "--preset", "smoke", "--out", str(tmp_path))
    assert again.returncode == 0 and again.stdout.count("already complete") == 8, again.stderr
    from figures import generalization_gap

    drawn = drawn_figures(generalization_gap.main, ["--preset", "smoke", "--out", str(tmp_path)], monkeypatch)
    assert {k: v["problems"] for k, v in drawn.items()} == {k: [] for k in ("gap_curves", "edge_of_stability",
                                                                             "minima", "final")}
    levels = drawn["minima"]["levels"]  # every run's minimum at the same linear levels
    assert len(levels) == 8 and all(np.array_equal(lv, levels[0]) for lv in levels)
    assert figure_checks.evenly_spaced(levels[0])


def test_batch_scaling_writes_three_plots_and_tables(tmp_path, monkeypatch):
    res = run_module("figures.batch_scaling", "--preset", "smoke", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [int(r["batch_size"]) for r in rows] == [16, 64, 256]
    for r in rows:  # the median of interleaved rounds, with its quartiles; the run's own pass kept beside it
        q25, median, q75 = (float(r[k]) for k in ("images_per_second_q25", "images_per_second",
                                                  "images_per_second_q75"))
        assert 0 < q25 <= median <= q75 and float(r["run_images_per_second"]) > 0
    rates = json.load(open(tmp_path / "runs" / "throughput.json"))["result"]
    assert {k: len(v) for k, v in rates.items()} == {"16": 3, "64": 3, "256": 3}
    assert "B_simple =" in res.stdout
    for name in ("scaling", "throughput", "steps_to_target", "noise_scale"):
        assert os.path.exists(tmp_path / f"{name}.png") and os.path.exists(tmp_path / f"{name}.pdf")
    assert len(list(csv.DictReader(open(tmp_path / "noise_scale.csv")))) >= 2
    from figures import batch_scaling

    drawn = drawn_figures(batch_scaling.main, ["--preset", "smoke", "--out", str(tmp_path)], monkeypatch)
    assert {k: v["problems"] for k, v in drawn.items()} == {k: [] for k in ("scaling", "throughput",
                                                                             "steps_to_target", "noise_scale")}
    assert json.load(open(tmp_path / "runs" / "throughput.json"))["result"] == rates  # measured once, reused


def test_language_model_presets_run_end_to_end(tmp_path):
    """figures.batch_scaling and figures.flat_vs_sharp on a Transformer (their lm presets, shrunk)."""
    res = run_module("figures.batch_scaling", "--preset", "lm-smoke", "--out", str(tmp_path / "scaling"))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "scaling" / "summary.csv")))
    assert all(float(r["tokens_per_second"]) == pytest.approx(16 * float(r["images_per_second"])) for r in rows)
    assert "steps to test loss 2.9" in res.stdout and "B_crit = E_min/S_min" in res.stdout
    res = run_module("figures.flat_vs_sharp", "--preset", "lm-smoke", "--out", str(tmp_path / "fvs"))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "fvs" / "summary.csv")))
    assert len(rows) == 4 and all(float(r["test_ppl"]) > 1 and float(r["lambda_max"]) > 0 for r in rows)
    assert res.stdout.count("Test loss") == 2  # the verdict compares validation losses for a language model


def test_trajectory_figure_writes_both_paths_and_reuses_everything(tmp_path, monkeypatch):
    res = run_module("figures.trajectory", "--preset", "smoke", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [int(r["batch_size"]) for r in rows] == [16, 256]
    assert all(int(r["checkpoints"]) == 5 and 0.5 < float(r["pc1_explained"]) <= 1 for r in rows)
    assert os.path.getsize(tmp_path / "trajectory.png") > 10_000 and os.path.exists(tmp_path / "trajectory.pdf")
    assert all(os.path.exists(tmp_path / f"trajectory_bs{b}_wd0.0005.html") for b in (16, 256))
    again = run_module("figures.trajectory", "--preset", "smoke", "--out", str(tmp_path))
    assert again.returncode == 0 and again.stdout.count("0 points computed") == 2, again.stdout + again.stderr
    from figures import trajectory

    drawn = drawn_figures(trajectory.main, ["--preset", "smoke", "--out", str(tmp_path)], monkeypatch)
    assert drawn["trajectory"]["problems"] == []


def test_hessian_directions_figure_reads_alone(mlp_ckpt, tmp_path, monkeypatch):
    from figures import hessian_directions

    args = [mlp_ckpt, "--random", "2", "--x=-0.5:0.5:5", "--samples", "64", "--out", str(tmp_path)]
    res = run_module("figures.hessian_directions", *args)
    assert res.returncode == 0, res.stderr
    assert os.path.getsize(tmp_path / "hessian_directions.png") > 10_000
    assert len(os.listdir(tmp_path / "surfaces")) == 3
    drawn = drawn_figures(hessian_directions.main, args, monkeypatch)  # the surfaces are reused: it only draws
    assert drawn["hessian_directions"]["problems"] == []


def test_every_preset_draws_its_minima_at_many_evenly_spaced_levels():
    """Each preset's linear levels (arange: start, stop, step) and log ones (geomspace: start, stop, num) make a
    real set of rings; a (start, stop, num) left in the linear field would give one level."""
    from figures import flat_vs_sharp, generalization_gap, trajectory
    from figures.common import contour_levels

    for module, field in ((flat_vs_sharp, "contour_levels"), (trajectory, "contour_levels"),
                          (generalization_gap, "levels")):
        for name, p in module.PRESETS.items():
            linear, scale = contour_levels(getattr(p, field), p.log_levels)
            assert scale == "linear" and len(linear) >= 10 and figure_checks.evenly_spaced(linear), (module, name)
            logged, scale = contour_levels(getattr(p, field), p.log_levels, log=True)
            assert scale == "log-spaced" and len(logged) >= 10 and not figure_checks.evenly_spaced(logged), name
