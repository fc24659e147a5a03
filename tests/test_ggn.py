"""The Gauss-Newton and Fisher operators against dense float64 matrices built here from the model's full Jacobian:
a tiny MLP and a tiny CNN, the whole matrix, its top eigenvalues and its trace; the GGN is the Hessian for a linear
model under MSE, and the Monte-Carlo Fisher tends to the GGN for cross-entropy."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape.base.errors import ConfigError
from landscape.curvature.ggn import EmpiricalFisherOperator, FisherOperator, GGNOperator, keyed_uniforms, sample_keys
from landscape.curvature.hessian import HessianOperator, eigenvalues
from landscape.curvature.operators import curvature_operator
from landscape.runtime.metrics import mse


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def data(model, n=24):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) if isinstance(model[0], nn.Linear) else \
        torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def jacobian(model, x):
    """(n, C, P): each sample's logits differentiated by every parameter, flat in named_parameters order."""
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes, sizes = [p.shape for p in model.parameters()], [p.numel() for p in model.parameters()]

    def f(w):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(w, sizes), shapes)}
        return functional_call(model, params, (x,))

    return torch.autograd.functional.jacobian(f, flat)


def dense(op):
    """The operator's matrix, column by column."""
    return torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)], dim=1).numpy()


@pytest.mark.parametrize("make", [mlp, cnn])
def test_ggn_and_both_fishers_equal_their_dense_matrices(make):
    model = make()
    x, y = data(model)
    J = jacobian(model, x)  # (n, C, P)
    p = torch.softmax(model(x), dim=-1).detach()
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # cross-entropy's Hessian in the logits, per sample
    ggn = torch.einsum("ncp,ncd,ndq->pq", J, H, J).numpy() / len(x)
    r = p - torch.nn.functional.one_hot(y, 3).double()  # each sample's gradient in the logits, at its label
    g = torch.einsum("ncp,nc->np", J, r)  # per-sample gradients in the weights
    fisher = (g.T @ g).numpy() / len(x)
    keys = sample_keys((x, y), 5)  # the Monte-Carlo Fisher's labels, two draws, by inverse CDF of its uniforms
    drawn = [(torch.cumsum(p, -1) < keyed_uniforms(keys, (len(x),), d)[:, None]).sum(-1) for d in (0, 1)]
    scores = [torch.einsum("ncp,nc->np", J, p - torch.nn.functional.one_hot(t, 3).double()) for t in drawn]
    mc = sum((s.T @ s).numpy() for s in scores) / (2 * len(x))
    G, F = GGNOperator(model, (x, y), batch_size=7), EmpiricalFisherOperator(model, (x, y), batch_size=7)
    MC = FisherOperator(model, (x, y), draws=2, seed=5, batch_size=7)
    for op, matrix in ((G, ggn), (F, fisher), (MC, mc)):
        found = dense(op)
        np.testing.assert_allclose(found, matrix, atol=1e-12)
        np.testing.assert_allclose(eigenvalues(op, k=3, tol=1e-10).top, np.linalg.eigvalsh(matrix)[::-1][:3],
                                   rtol=1e-7)
        assert np.trace(found) == pytest.approx(np.trace(matrix), rel=1e-12)
        assert np.linalg.eigvalsh(matrix).min() > -1e-12  # positive semi-definite


def test_the_ggn_of_a_linear_model_under_mse_is_its_hessian():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 2)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, 2, dtype=torch.float64)
    G, H = GGNOperator(model, (x, y), mse), HessianOperator(model, (x, y), mse)
    np.testing.assert_allclose(dense(G), dense(H), atol=1e-12)


def test_the_monte_carlo_fisher_tends_to_the_ggn_for_cross_entropy():
    model = mlp()
    x, y = data(model)
    G, F = GGNOperator(model, (x, y), batch_size=24), FisherOperator(model, (x, y), draws=4000, seed=0, batch_size=24)
    vs = torch.randn(3, G.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for v in vs:
        gv, fv = G.matvec(v), F.matvec(v)
        assert torch.linalg.norm(fv - gv) / torch.linalg.norm(gv) < 0.05
        assert torch.equal(fv, F.matvec(v))  # seeded: the same labels at every product


def test_the_fisher_draws_belong_to_the_samples_not_to_the_batches():
    model = mlp()
    x, y = data(model, n=30)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    whole = FisherOperator(model, (x, y), draws=3, seed=7, batch_size=30).matvec(v)
    np.testing.assert_allclose(FisherOperator(model, (x, y), draws=3, seed=7, batch_size=7).matvec(v), whole,
                               rtol=1e-12, atol=1e-14)
    assert not torch.allclose(FisherOperator(model, (x, y), draws=3, seed=8, batch_size=30).matvec(v), whole)
    linear = nn.Sequential(nn.Linear(4, 2)).double()  # MSE: the Gaussian's draws, 10 weights
    yr = torch.randn(30, 2, dtype=torch.float64)
    a = FisherOperator(linear, (x, yr), mse, draws=2, batch_size=30).matvec(v[:10])
    np.testing.assert_allclose(FisherOperator(linear, (x, yr), mse, draws=2, batch_size=4).matvec(v[:10]), a,
                               rtol=1e-12, atol=1e-14)


def _spawned_curvatures(rank, world, port, x, y, state, out):
    import os

    import torch.distributed as dist

    from landscape.curvature.hessian import hutchinson_trace
    from landscape.runtime.distributed import cleanup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = mlp()
    model.load_state_dict(state)
    found = {}
    for kind in ("ggn", "fisher", "empirical_fisher"):
        op = curvature_operator(kind, model, (x[rank::world], y[rank::world]), batch_size=5, seed=3, draws=2)
        found[kind] = (eigenvalues(op, k=3, tol=1e-10).top, hutchinson_trace(op, samples=4, seed=1).estimate)
    if rank == 0:
        out.put(found)
    cleanup_distributed()
    os._exit(0)  # no interpreter finalization after gloo: see landscape.base.flags._exit


@pytest.mark.slow
def test_two_processes_give_each_curvature_of_one():
    import socket

    import torch.multiprocessing as mp

    from landscape.curvature.hessian import hutchinson_trace

    model = mlp()
    x, y = data(model, n=26)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_spawned_curvatures, args=(2, port, x, y, model.state_dict(), out), nprocs=2, join=True)
    found = out.get()
    for kind in ("ggn", "fisher", "empirical_fisher"):
        op = curvature_operator(kind, model, (x, y), batch_size=9, seed=3, draws=2)
        np.testing.assert_allclose(found[kind][0], eigenvalues(op, k=3, tol=1e-10).top, rtol=1e-8)
        assert found[kind][1] == pytest.approx(hutchinson_trace(op, samples=4, seed=1).estimate, rel=1e-10)


def test_losses_without_what_an_operator_needs_are_refused():
    model = mlp()
    x, y = data(model)

    def hinge(outputs, batch):  # a loss of the outputs, with no predictive distribution
        margin = outputs.gather(1, batch[1][:, None]) - outputs.logsumexp(1, keepdim=True)
        return {"loss": (-margin).clamp(min=0).sum(), "count": torch.tensor(float(len(outputs)))}

    def constant(outputs, batch):  # not a function of the outputs at all
        return {"loss": torch.tensor(1.0, dtype=torch.float64) * len(batch[1]),
                "count": torch.tensor(float(len(batch[1])))}

    GGNOperator(model, (x, y), hinge).matvec(torch.ones(GGNOperator(model, (x, y), hinge).dim))
    with pytest.raises(ConfigError, match="predictive distribution: cross_entropy"):
        FisherOperator(model, (x, y), hinge)
    with pytest.raises(ConfigError, match="does not depend on the model's outputs"):
        GGNOperator(model, (x, y), constant)
    with pytest.raises(ConfigError, match="is not one of: hessian, ggn, fisher, empirical_fisher"):
        curvature_operator("gauss", model, (x, y))
    assert isinstance(curvature_operator("ggn", model, (x, y), cache_bytes=0, seed=1), GGNOperator)


def test_the_sharpness_table_reads_the_chosen_curvature_and_says_which(mlp_ckpt, tmp_path, capsys):
    import json

    import landscape
    from landscape.sharpness import main
    from tests import userland

    model, data = userland.make_mlp(), userland.tensors()
    rows = landscape.sharpness_table(model, data, measures=("lambda_max", "trace"), curvature="ggn",
                                     trace_products=12)
    by = {r["measure"]: r for r in rows}
    top = eigenvalues(GGNOperator(model, data), tol=1e-3).top[0]
    assert by["lambda_max"]["value"] == pytest.approx(top, rel=1e-9)
    assert by["lambda_max"]["settings"]["curvature"] == by["trace"]["settings"]["curvature"] == "ggn"
    main([mlp_ckpt, "--curvature", "empirical_fisher", "--measures", "lambda_max", "--samples", "64",
          "--out", str(tmp_path), "--device", "cpu", "--no-progress"])
    table = json.loads(next(tmp_path.glob("*_sharpness.json")).read_text())["result"]["rows"]
    assert table[0]["settings"]["curvature"] == "empirical_fisher" and table[0]["value"] > 0
    assert "empirical_fisher" in capsys.readouterr().out


def test_the_lean_lanczos_and_the_traces_agree_with_arpack_and_the_dense_matrix():
    from landscape.curvature.hessian import hutchpp_trace, lean_lanczos_top, trace_estimate

    model = cnn()
    x, y = data(model, n=40)
    H = HessianOperator(model, (x, y), batch_size=16)
    lam = np.linalg.eigvalsh(dense(H))
    assert lean_lanczos_top(H, tol=1e-10) == pytest.approx(lam[-1], rel=1e-8)
    assert eigenvalues(H, tol=1e-10).top[0] == pytest.approx(lam[-1], rel=1e-8)  # k=1: the lean path
    assert eigenvalues(H, k=1, tol=1e-10, vectors=True).top[0] == pytest.approx(lam[-1], rel=1e-8)  # ARPACK's
    small = trace_estimate(H, 30, seed=2, budget=0)  # Hutch++'s 20 vectors do not fit: Hutchinson
    assert small.method == "Hutchinson" and small.products == 30
    assert trace_estimate(H, 30, seed=2, budget=1 << 30) == hutchpp_trace(H, 30, seed=2)
    assert abs(small.estimate - lam.sum()) < 4 * small.stderr


def test_the_hessian_keeps_its_graphs_within_the_budget_and_gives_the_same_products():
    model = mlp()
    x, y = data(model, n=40)
    kept, rebuilt = (HessianOperator(model, (x, y), batch_size=16, cache_bytes=b) for b in (None, 0))
    assert kept.cached and not rebuilt.cached and kept.graph_bytes == rebuilt.graph_bytes > 0
    v = torch.randn(kept.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(kept.matvec(v), rebuilt.matvec(v), rtol=1e-12)
    np.testing.assert_allclose(kept.matvec(v), torch.from_numpy(dense(kept)) @ v, rtol=1e-10, atol=1e-12)


def test_data_subsets_and_the_samples_check_are_the_estimates_on_those_samples(capsys):
    import landscape
    from tests import userland

    model, (x, y) = userland.make_mlp(), userland.tensors(n=96)
    rows = landscape.sharpness_table(model, (x, y), measures=("lambda_max", "trace"), curvature="ggn",
                                     trace_products=12, data_subsets=3, samples_check=True, log=print)
    by = {r["measure"]: r for r in rows}
    parts = [eigenvalues(GGNOperator(model, (x[i:i + 32], y[i:i + 32])), tol=1e-3).top[0] for i in (0, 32, 64)]
    spread = by["lambda_max_over_subsets"]
    np.testing.assert_allclose(spread["settings"]["values"], parts, rtol=1e-9)
    assert spread["value"] == pytest.approx(np.mean(parts)) and spread["settings"]["max"] == max(parts)
    assert spread["stderr"] == pytest.approx(np.std(parts, ddof=1) / np.sqrt(3))
    check = by["lambda_max_vs_samples"]
    assert check["settings"]["samples"] == [12, 24, 48, 96]
    assert check["settings"]["values"][-1] == pytest.approx(by["lambda_max"]["value"], rel=1e-9)
    first = eigenvalues(GGNOperator(model, (x[:12], y[:12])), tol=1e-3).top[0]
    assert check["settings"]["values"][0] == pytest.approx(first, rel=1e-9)
    assert by["trace_over_subsets"]["settings"]["curvature"] == "ggn"
    out = capsys.readouterr().out
    assert "lambda_max over 3 disjoint subsets" in out and "samples check (samples)" in out


def test_a_ggn_map_and_ggn_directions_say_so_in_their_files(mlp_ckpt, tmp_path):
    from conftest import SINGLE

    from landscape.base.config import SurfaceConfig
    from landscape.core.grid_eval import select_samples
    from landscape.core.surface_file import read_surface
    from landscape.models.checkpoint_file import load_data_for, load_model
    from landscape.pipelines.from_checkpoint import run_hessian_map, run_surface

    cfg = SurfaceConfig(mlp_ckpt, x="-0.5:0.5:3", y="-0.5:0.5:3", samples=64, progress=False, out=str(tmp_path))
    run = run_hessian_map(cfg, SINGLE, curvature="ggn")
    assert run.path.endswith("_ggn.h5") and read_surface(run.path).fingerprint["curvature"] == "ggn"
    model, ckpt = load_model(mlp_ckpt)
    x, y = select_samples(*load_data_for(ckpt).split("train"), 64, "train")
    top = eigenvalues(GGNOperator(model, (x, y)), k=1, tol=1e-3, smallest=True)
    assert run.surface.values["lambda_max"][1, 1] == pytest.approx(top.top[0], rel=1e-6)
    assert run.surface.values["lambda_min"][1, 1] >= -1e-3 * top.top[0]  # positive semi-definite
    hessian_map = run_hessian_map(cfg, SINGLE)  # beside it, the Hessian's own file
    assert hessian_map.path.endswith("_hessian.h5") and hessian_map.computed == 9
    directions = dataclasses.replace(cfg, directions_file="ggn", samples=128, out=str(tmp_path / "d"))
    s = read_surface(run_surface(directions, SINGLE).path)
    assert s.annotations.axis_labels[0].startswith("1st GGN eigenvector") and s.config["directions_file"] == "ggn"


def test_the_monitor_tracks_the_chosen_curvature_and_says_whose_threshold_it_logs():
    import landscape
    from tests import userland

    model, data = userland.make_mlp(), userland.tensors(n=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = {}
    for kind in ("hessian", "ggn"):
        m = landscape.Monitor(model, data, opt, every=1, measures=("lambda_max",), samples=64, curvature=kind)
        records[kind] = m.measure()
    assert records["ggn"]["curvature"] == "ggn" and records["ggn"]["threshold_for"] == "hessian"
    assert records["ggn"]["threshold"] == records["hessian"]["threshold"] == pytest.approx(2 / 0.1)
    ggn_top = eigenvalues(GGNOperator(model, data, batch_size=256), tol=1e-6).top[0]
    assert records["ggn"]["lambda_max"] == pytest.approx(ggn_top, rel=1e-2)
    with pytest.raises(ConfigError, match="curvature must be one of"):
        landscape.Monitor(model, data, opt, curvature="kfac")
