"""Sharpness measures against closed forms: Keskar's epsilon-sharpness on a separable quadratic (the maximizer
is a corner of the box), adaptive sharpness on a linear loss (rho times a norm of g*|w|) and on a quadratic (a
corner for p = inf), m-sharpness as the mean of per-chunk closed forms, average sharpness on a quadratic
(sigma^2/2 sum D w^2 in expectation), and the spread of widths."""

import numpy as np
import pytest
import torch
from torch import nn

from landscape.curvature.sharpness import (
    MeanLoss,
    adaptive_sharpness,
    average_sharpness,
    epsilon_sharpness,
    spread,
    worst_case_increase,
)


def total(out, batch):  # the model's outputs are per-sample losses
    return {"loss": out.sum(dtype=torch.float64), "count": torch.tensor(float(len(out)), dtype=torch.float64)}


class Quadratic(nn.Module):
    """f(w) = 1/2 sum_i D_i (w_i - c_i)^2 for every sample."""

    def __init__(self, w, d, c):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.register_buffer("d", torch.tensor(d, dtype=torch.float64))
        self.register_buffer("c", torch.tensor(c, dtype=torch.float64))

    def forward(self, x):
        return (0.5 * self.d * (self.w - self.c) ** 2).sum().expand(len(x))


class Linear(nn.Module):
    """Sample j's loss is g_j . w (g_j: the sample's row of x)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return x @ self.w


W = [0.5, -1.0, 2.0, -0.3, 1.5, 0.8]
D = [1.0, 3.0, 0.5, 2.0, 0.2, 4.0]
DATA = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4))


def test_keskar_full_space_finds_the_corner_of_the_box():
    eps = 0.05
    w, d = np.array(W), np.array(D)
    c = w - np.sign(w) * 0.5  # |w - c| > eps(|w| + 1): f grows monotonically toward one side of each box edge
    f = MeanLoss(Quadratic(W, D, c.tolist()), DATA, total)
    m = epsilon_sharpness(f, eps=eps, maxiter=50, seed=3)
    y_star = eps * (np.abs(w) + 1) * np.sign(w - c)
    fx, fmax = 0.5 * (d * (w - c) ** 2).sum(), 0.5 * (d * (w + y_star - c) ** 2).sum()
    np.testing.assert_allclose(m.argmax, y_star, rtol=1e-9)
    assert m.value == pytest.approx(100 * (fmax - fx) / (1 + fx), rel=1e-9)
    assert m.settings["eps"] == eps and m.settings["maxiter"] == 50 and m.settings["seed"] == 3


def test_keskar_in_a_one_dimensional_subspace_takes_the_better_end():
    eps = 0.01
    w, d = np.array(W), np.array(D)
    c = w - 3.0  # far away: along any direction the loss is monotone over the small box
    f = MeanLoss(Quadratic(W, D, c.tolist()), DATA, total)
    m = epsilon_sharpness(f, eps=eps, subspace=1, maxiter=50, seed=0)
    a = np.linalg.qr(np.random.default_rng(0).standard_normal((len(w), 1)))[0]  # the same draw as the measure's
    bound = eps * (abs(float(a[:, 0] @ w)) + 1)
    ends = [0.5 * (d * (w + s * bound * a[:, 0] - c) ** 2).sum() for s in (-1, 1)]
    fx = 0.5 * (d * (w - c) ** 2).sum()
    assert m.value == pytest.approx(100 * (max(ends) - fx) / (1 + fx), rel=1e-9)
    assert abs(m.argmax[0]) == pytest.approx(bound)


@pytest.mark.parametrize("p", ["2", "inf"])
def test_adaptive_sharpness_of_a_linear_loss_is_rho_times_the_dual_norm(p):
    rho = 0.1
    g = torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0, -1.0]], dtype=torch.float64).expand(4, -1)
    f = MeanLoss(Linear(W), (g, torch.zeros(4)), total)
    gw = g[0].numpy() * np.abs(W)
    expected = rho * (np.linalg.norm(gw) if p == "2" else np.abs(gw).sum())  # the dual of l2 is l2, of l-inf l1
    m = adaptive_sharpness([f], rho, p, steps=3)
    assert m.value == pytest.approx(expected, rel=1e-9)


def test_adaptive_sharpness_of_a_quadratic_in_l_inf_is_the_far_corner():
    rho = 0.2
    f = MeanLoss(Quadratic(W, D, [0.0] * 6), DATA, total)
    w, d = np.array(W), np.array(D)
    inc, delta = worst_case_increase(f, rho, "inf", steps=5)
    assert inc == pytest.approx(0.5 * (d * w**2).sum() * ((1 + rho) ** 2 - 1), rel=1e-9)
    np.testing.assert_allclose(delta, rho * w, rtol=1e-12)  # each weight pushed rho of itself further out


def test_m_sharpness_is_the_mean_over_chunks_of_their_own_worst_cases():
    rho, m = 0.1, 2
    g = torch.tensor(np.random.default_rng(1).standard_normal((6, 6)))
    chunks = [MeanLoss(Linear(W), (g[i:i + m], torch.zeros(m)), total, reduce=False) for i in range(0, 6, m)]
    got = adaptive_sharpness(chunks, rho, "2", steps=2, chunks_reduced=True)
    each = [rho * np.linalg.norm(g[i:i + m].numpy().mean(0) * np.abs(W)) for i in range(0, 6, m)]
    assert got.value == pytest.approx(np.mean(each), rel=1e-9)
    assert got.stderr == pytest.approx(np.std(each, ddof=1) / np.sqrt(3), rel=1e-9)
    whole = adaptive_sharpness([MeanLoss(Linear(W), (g, torch.zeros(6)), total)], rho, "2", steps=2)
    assert whole.value < got.value  # the mean of per-chunk worst cases exceeds the whole data's (triangle inequality)


def test_average_sharpness_of_a_quadratic_is_half_sigma_squared_times_the_weighted_curvature():
    sigma = 0.1
    w, d = np.array(W), np.array(D)
    f = MeanLoss(Quadratic(W, D, W), DATA, total)  # at its minimum
    m = average_sharpness(f, sigma, draws=400, seed=0)
    expected = 0.5 * sigma**2 * (d * w**2).sum()
    assert abs(m.value - expected) < 4 * m.stderr
    assert 0 < m.stderr < 0.2 * expected


def test_mean_loss_value_and_gradient_are_the_true_ones():
    f = MeanLoss(Quadratic(W, D, [0.0] * 6), DATA, total)
    theta = np.linspace(-1, 1, 6)
    value, grad = f.value_and_grad(theta)
    assert value == pytest.approx(0.5 * (np.array(D) * theta**2).sum()) and value == pytest.approx(f(theta))
    np.testing.assert_allclose(grad, np.array(D) * theta)


def test_spread_reports_mean_standard_error_and_range():
    s = spread([1.0, 2.0, 4.0])
    assert s.value == pytest.approx(7 / 3) and s.stderr == pytest.approx(np.std([1, 2, 4], ddof=1) / np.sqrt(3))
    assert (s.settings["min"], s.settings["max"], s.settings["n"]) == (1.0, 4.0, 3)


@pytest.mark.slow
def test_the_sharpness_command_per_layer_and_two_processes_equal_one(mlp_ckpt, tmp_path, one_thread):
    import json

    from conftest import SINGLE, run_module

    from landscape.base.config import SurfaceConfig
    from landscape.pipelines.sharpness_table import SharpnessConfig, run_sharpness

    args = ["--samples", "128", "--measures", "lambda_max", "trace", "density", "epsilon", "adaptive", "average",
            "width", "--per-layer", "--trace-products", "9", "--width-directions", "2", "--x=-1:1:9",
            "--density-runs", "2", "--density-steps", "8", "--draws", "4", "--no-progress"]
    two = run_module("landscape.sharpness", mlp_ckpt, *args, "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    assert "epsilon_sharpness_0.001" in two.stdout and "width" in two.stdout and "_density.png" in two.stdout
    table = json.loads(next((tmp_path / "two").glob("*_sharpness.json")).read_text())["result"]["rows"]
    assert len(list((tmp_path / "two").glob("*_sharpness.csv"))) == 1
    cfg = SurfaceConfig(mlp_ckpt, splits=("train",), samples=128, out=str(tmp_path / "one"), progress=False)
    sc = SharpnessConfig(measures=("lambda_max", "trace", "density", "epsilon", "adaptive", "average", "width"),
                         per_layer=True, trace_products=9, width_directions=2, density_runs=2, density_steps=8,
                         draws=4, x="-1:1:9")
    one = run_sharpness(cfg, sc, SINGLE).rows
    assert [(r["subset"], r["measure"]) for r in one] == [(r["subset"], r["measure"]) for r in table]
    for a, b in zip(one, table):  # the data split across 2 processes: the same numbers up to summation order
        assert b["value"] == pytest.approx(a["value"], rel=1e-4, abs=1e-9), (a["subset"], a["measure"])
    by = {(r["subset"], r["measure"]): r["value"] for r in one}
    layers = sorted({r["subset"] for r in one} - {"all"})
    assert len(layers) >= 2
    for layer in layers:  # a diagonal block's top eigenvalue never exceeds the whole Hessian's (interlacing)
        assert by[(layer, "lambda_max")] <= by[("all", "lambda_max")] * (1 + 1e-3)
    err = 4 * np.sqrt(sum(r["stderr"] ** 2 for r in one if r["measure"] == "trace"))
    assert abs(sum(by[(x, "trace")] for x in layers) - by[("all", "trace")]) < err  # traces add up over blocks
    again = run_module("landscape.sharpness", mlp_ckpt, *args, "--out", str(tmp_path / "two"))
    assert again.returncode == 0 and "reused" in again.stdout


def test_weights_the_loss_never_reads_have_a_zero_gradient():
    class WithSpare(Linear):
        def __init__(self):
            super().__init__(W)
            self.spare = nn.Parameter(torch.ones(3, dtype=torch.float64))  # registered, never used

    g = torch.ones(4, 6, dtype=torch.float64)
    value, grad = MeanLoss(WithSpare(), (g, torch.zeros(4)), total, params={"spare"}).value_and_grad(np.zeros(3))
    assert value == pytest.approx(sum(W)) and not grad.any()


SMALL = {"trace_products": 12, "width_directions": 2, "density_runs": 2, "density_steps": 8, "draws": 2,
         "lbfgs_iters": 2, "ascent_steps": 2, "eps": (1e-3, 5e-4)}


def test_every_registered_measure_has_a_cost_and_runs_and_writes_the_rows_it_names():
    import landscape
    from landscape.curvature.costs import UnitCosts
    from landscape.pipelines.sharpness_table import MEASURES, SharpnessConfig, measure_costs
    from tests import userland

    sc = SharpnessConfig(measures=tuple(MEASURES), **SMALL)
    costs = measure_costs(sc, UnitCosts(forward=1.0, gradient=2.0, product=3.0, graph_budget=0, parameters=100))
    assert list(costs) == list(MEASURES) and all(s > 0 and how for s, how in costs.values())
    model, data = userland.make_mlp(), userland.tensors()
    for name, measure in MEASURES.items():
        rows = landscape.sharpness_table(model, data, measures=(name,), x="-1:1:5", **SMALL)
        assert [r["measure"] for r in rows] == list(measure.columns(sc)), name
        assert all(np.isfinite(r["value"]) for r in rows), name


def test_a_measure_registered_by_a_user_joins_the_table_after_the_built_in_ones():
    import landscape
    from landscape.curvature.costs import UnitCosts
    from landscape.curvature.sharpness import Measured
    from landscape.pipelines.measure_registry import Measure, register_measure, row
    from landscape.pipelines.sharpness_table import MEASURES, measure_costs
    from tests import userland

    def grad_norm_rows(s, label, names, sc):  # |grad L| at the centre: one gradient
        _, g = s.mean_loss(names).value_and_grad(s.mean_loss(names).theta0)
        return [row(label, "gradient_norm", Measured(float(np.linalg.norm(g))))]

    register_measure(Measure("gradient_norm", grad_norm_rows, lambda sc, u: (u.gradient, "one gradient"),
                             lambda sc: ("gradient_norm",)))
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_measure(MEASURES["gradient_norm"])
        model, data = userland.make_mlp(), userland.tensors()
        rows = landscape.sharpness_table(model, data, measures=("gradient_norm", "lambda_max"))
        assert [r["measure"] for r in rows] == ["lambda_max", "gradient_norm"]  # the registry's order
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(data[0]), data[1]),
                                    list(model.parameters()))
        assert rows[1]["value"] == pytest.approx(float(torch.cat([g.flatten() for g in grads]).norm()), rel=1e-5)
        from landscape.pipelines.sharpness_table import SharpnessConfig
        u = UnitCosts(forward=1.0, gradient=2.0, product=3.0, graph_budget=0, parameters=100)
        assert measure_costs(SharpnessConfig(measures=("gradient_norm",)), u) == {
            "gradient_norm": (2.0, "one gradient")}
    finally:
        MEASURES.pop("gradient_norm", None)
    with pytest.raises(KeyError, match="gradient_norm"):
        landscape.sharpness_table(model, data, measures=("gradient_norm",))
