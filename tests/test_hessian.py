import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from landscape.curvature.density import spectral_density
from landscape.curvature.hessian import HessianOperator, eigenvalues, hutchinson_trace, hutchpp_trace
from landscape.curvature.sharpness import width_1d


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(97, 4, dtype=torch.float64), torch.randint(0, 3, (97,))
    return model, x, y


def _dense_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def mean_loss(flat):
        ps = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        out = torch.func.functional_call(model, ps, (x,))
        return nn.functional.cross_entropy(out, y)

    return torch.autograd.functional.hessian(mean_loss, torch.cat([p.reshape(-1) for p in params]))


def test_lanczos_and_hutchinson_agree_with_the_dense_hessian(tiny):
    model, x, y = tiny
    exact = torch.linalg.eigvalsh(_dense_hessian(model, x, y)).numpy()
    op = HessianOperator(model, (x, y), batch_size=25)  # uneven batches: weighting by count must be exact
    eig = eigenvalues(op, k=3, tol=1e-10, min_restarts=1000, smallest=True)
    assert eig.min_converged
    np.testing.assert_allclose(eig.top, exact[::-1][:3], rtol=1e-6, atol=1e-9)
    assert eig.min == pytest.approx(exact[0], rel=1e-6, abs=1e-9)
    tr = hutchinson_trace(op, samples=200, seed=1)
    assert abs(tr.estimate - exact.sum()) < 4 * tr.stderr
    assert tr.stderr > 0


def test_hvp_matches_the_dense_product_with_kept_or_rebuilt_graphs_and_any_batches(tiny):
    model, x, y = tiny
    h = _dense_hessian(model, x, y)
    v = torch.randn(h.shape[0], dtype=torch.float64)
    kept = HessianOperator(model, (x, y), batch_size=32)
    rebuilt = HessianOperator(model, (x, y), batch_size=32, cache_bytes=0)  # over budget: graphs rebuilt per product
    assert kept.cached and not rebuilt.cached
    for op in (kept, rebuilt):
        torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-9, atol=1e-12)

    class Keyword(nn.Module):  # a model called with keyword inputs, on dict batches
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, features):
            return self.net(features)

    batches = [{"features": x[i:i + 40], "labels": y[i:i + 40]} for i in range(0, len(x), 40)]
    on_dicts = HessianOperator(Keyword(), batches)
    torch.testing.assert_close(on_dicts.matvec(v), h @ v, rtol=1e-9, atol=1e-12)


def test_lambda_min_only_when_asked_and_eigenvectors_when_asked(tiny):
    model, x, y = tiny
    op = HessianOperator(model, (x, y))
    top = eigenvalues(op, tol=1e-8)
    both = eigenvalues(op, tol=1e-8, smallest=True, vectors=True)
    assert np.isnan(top.min) and not top.min_converged and top.vectors is None
    assert np.isfinite(both.min) and both.matvecs > top.matvecs
    v = torch.cat([t.reshape(-1) for t in both.vectors[0].values()]).double()
    torch.testing.assert_close(op.matvec(v), both.top[0] * v, rtol=1e-5, atol=1e-6)


def test_hutchpp_and_slq_agree_with_the_dense_spectrum(tiny):
    model, x, y = tiny
    h = _dense_hessian(model, x, y).numpy()
    exact, n = np.linalg.eigvalsh(h), h.shape[0]
    op = HessianOperator(model, (x, y))
    pp, plain = hutchpp_trace(op, products=30, seed=0), hutchinson_trace(op, samples=30, seed=0)
    assert abs(pp.estimate - exact.sum()) < 4 * pp.stderr and pp.stderr < plain.stderr
    d = spectral_density(op, runs=8, steps=12, seed=0)
    assert np.allclose(d.weights.sum(1), 1)
    rng = np.random.default_rng(0)  # the start vectors SLQ drew: its first moment is exactly v^T H v / n
    for r in range(8):
        v = rng.choice([-1.0, 1.0], n)
        assert d.moment(1)[r] == pytest.approx(v @ h @ v / n, rel=1e-8)
    for k, target in [(1, exact.sum() / n), (2, (exact**2).sum() / n)]:
        m = d.moment(k)
        assert abs(m.mean() - target) < 4 * m.std(ddof=1) / np.sqrt(len(m))
    # the outliers sit where the exact eigenvalues are: the top Ritz values of every run
    np.testing.assert_allclose(d.nodes[:, -1], exact[-1], rtol=1e-6)
    np.testing.assert_allclose(d.nodes[:, -2], exact[-2], rtol=1e-3)


def test_width_of_a_parabola():
    a = np.linspace(-1, 1, 201)
    assert width_1d(a, 4 * a**2, threshold=1.0) == pytest.approx(1.0, abs=1e-3)  # 4a^2 <= 1  <=>  |a| <= 0.5
    assert width_1d(a, 0.1 * a**2, threshold=1.0) == pytest.approx(2.0)  # never crosses: cut at the edges
    sharp, flat = width_1d(a, 10 * a**2, 0.5), width_1d(a, a**2, 0.5)
    assert sharp < flat


def _spawned_top_eigenvalue(rank, world, port, x, y, state, out):
    import os

    import torch.distributed as dist

    from landscape.runtime.distributed import cleanup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    model.load_state_dict(state)
    op = HessianOperator(model, (x[rank::world], y[rank::world]), batch_size=7)
    eig = eigenvalues(op, k=2, tol=1e-10)
    tr = hutchinson_trace(op, samples=5, seed=3)
    hpp, slq = hutchpp_trace(op, products=9, seed=3), spectral_density(op, runs=2, steps=8, seed=3)
    if rank == 0:
        out.put((eig.top, tr.estimate, hpp.estimate, slq.nodes))
    cleanup_distributed()
    os._exit(0)  # no interpreter finalization after gloo: see landscape.base.flags._exit


@pytest.mark.slow
def test_two_processes_give_the_same_spectrum_as_one(tiny):
    import socket

    import torch.multiprocessing as mp

    model, x, y = tiny
    one = HessianOperator(model, (x, y), batch_size=7)
    eig, tr = eigenvalues(one, k=2, tol=1e-10), hutchinson_trace(one, samples=5, seed=3)
    hpp, slq = hutchpp_trace(one, products=9, seed=3), spectral_density(one, runs=2, steps=8, seed=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.spawn(_spawned_top_eigenvalue, args=(2, port, x, y, model.state_dict(), out), nprocs=2, join=True)
    top, trace, trace_pp, nodes = out.get()
    np.testing.assert_allclose(top, eig.top, rtol=1e-8)
    assert trace == pytest.approx(tr.estimate, rel=1e-8)
    assert trace_pp == pytest.approx(hpp.estimate, rel=1e-8)
    np.testing.assert_allclose(nodes, slq.nodes, rtol=1e-7, atol=1e-10)


def test_top_eigenvectors_of_a_parameter_subset_are_the_dense_subblock_ones(tiny):
    model, x, y = tiny
    h = _dense_hessian(model, x, y).numpy()
    sizes = [p.numel() for p in model.parameters()]
    first = slice(0, sizes[0])  # "0.weight" alone: the Hessian's leading sub-block
    eig = eigenvalues(HessianOperator(model, (x, y), params={"0.weight"}), k=2, tol=1e-10, vectors=True)
    values, vectors = eig.top, eig.vectors
    exact_vals, exact_vecs = np.linalg.eigh(h[first, first])
    np.testing.assert_allclose(values, exact_vals[::-1][:2], rtol=1e-6)
    for v, e in zip(vectors, exact_vecs[:, ::-1].T):
        assert set(v) == {"0.weight"}
        flat = v["0.weight"].double().numpy().ravel()
        assert abs(abs(flat @ e) - 1) < 1e-5 and flat[np.argmax(np.abs(flat))] > 0  # unit, sign fixed


def test_hessian_directions_are_scaled_eigenvectors_of_the_moved_weights(mlp_ckpt, tmp_path):
    from conftest import SINGLE

    from landscape.base.config import SurfaceConfig
    from landscape.core.directions import DirectionSpec, create_random_directions
    from landscape.core.params import model_tensors, norm, snapshot
    from landscape.core.surface_file import read_directions, read_surface
    from landscape.models.checkpoint_file import load_data_for, load_model
    from landscape.pipelines.from_checkpoint import run_surface

    cfg = SurfaceConfig(mlp_ckpt, directions_file="hessian", x="-0.5:0.5:3", y="-0.5:0.5:3", samples=128,
                        out=str(tmp_path), progress=False)
    s = read_surface(run_surface(cfg, SINGLE).path)
    d1, d2 = ({k: torch.from_numpy(v) for k, v in d.items()} for d in read_directions(cfg.path))
    model, ckpt = load_model(mlp_ckpt)
    theta0 = snapshot(model_tensors(model))
    assert norm(d1) == pytest.approx(norm(create_random_directions(theta0, 1, DirectionSpec())[0]), rel=1e-5)
    assert all(float(d1[k].abs().max()) == 0 for k in d1 if d1[k].dim() == 1)  # biases stay, as with biasbn
    assert abs(sum(float((d1[k].double() * d2[k].double()).sum()) for k in d1)) < 1e-3 * norm(d1) ** 2
    names = {k for k in d1 if d1[k].dim() > 1}
    x, y = load_data_for(ckpt).split("train")
    from landscape.core.grid_eval import select_samples

    x, y = select_samples(x, y, 128, "train")
    op = HessianOperator(model, (x, y), params=names)
    flat = torch.cat([d1[k].reshape(-1).double() for k in op.names])
    hv = op.matvec(flat)
    lam = float(flat @ hv / (flat @ flat))
    assert float((hv - lam * flat).norm() / hv.norm()) < 1e-2  # an eigenvector...
    assert lam == pytest.approx(eigenvalues(op, tol=1e-6).top[0], rel=1e-3)  # ...the top one
    assert s.annotations.axis_labels[0].startswith("1st Hessian eigenvector")
    assert run_surface(cfg, SINGLE).computed == 0  # a rerun resumes with the file's eigenvectors
    from landscape.base.errors import UserError

    with pytest.raises(UserError, match="other directions"):  # random directions never resume a Hessian file
        run_surface(dataclasses.replace(cfg, directions_file=None), SINGLE)
    random_first = dataclasses.replace(cfg, directions_file=None, out=str(tmp_path / "r"))
    run_surface(random_first, SINGLE)
    with pytest.raises(UserError, match="other directions"):  # nor does a Hessian request resume a random file
        run_surface(dataclasses.replace(random_first, directions_file="hessian"), SINGLE)


@pytest.mark.slow
def test_hessian_map_centre_is_the_checkpoints_eigenvalues_and_two_processes_equal_one(mlp_ckpt, tmp_path,
                                                                                      one_thread):
    from conftest import SINGLE, run_module

    from landscape.base.config import SurfaceConfig
    from landscape.core.grid_eval import select_samples
    from landscape.core.surface_file import read_surface
    from landscape.models.checkpoint_file import load_data_for, load_model
    from landscape.pipelines.from_checkpoint import run_hessian_map

    args = [mlp_ckpt, "--x=-0.5:0.5:3", "--y=-0.5:0.5:3", "--samples", "64", "--no-progress", "--formats", "png"]
    two = run_module("landscape.hessian_map", *args, "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    assert "% of the points (lambda_min >= -0.01 lambda_max)" in two.stdout
    assert len(list((tmp_path / "two").glob("*_hessian.png"))) == 1
    cfg = SurfaceConfig(mlp_ckpt, x="-0.5:0.5:3", y="-0.5:0.5:3", samples=64, progress=False, out=str(tmp_path / "one"))
    s1 = run_hessian_map(cfg, SINGLE).surface
    s2 = read_surface(next(str(p) for p in (tmp_path / "two").glob("*_hessian.h5")))
    for m in ("lambda_max", "lambda_min"):
        np.testing.assert_array_equal(s1.values[m], s2.values[m])
    model, ckpt = load_model(mlp_ckpt)
    x, y = select_samples(*load_data_for(ckpt).split("train"), 64, "train")
    e = eigenvalues(HessianOperator(model, (x, y)), tol=1e-3, smallest=True)
    assert s1.values["lambda_max"][1, 1] == pytest.approx(e.top[0], rel=1e-6)
    assert s1.values["lambda_min"][1, 1] == pytest.approx(e.min, rel=1e-6, abs=1e-9)
    again = run_hessian_map(cfg, SINGLE)  # a rerun resumes: nothing left to compute
    assert (again.computed, again.already_done) == (0, 9)


def test_weights_the_loss_never_reads_have_a_zero_hessian(tiny):
    model, x, y = tiny

    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.spare = nn.Parameter(torch.ones(3, dtype=torch.float64))  # registered, never used
            self.net = model

        def forward(self, inputs):
            return self.net(inputs)

    h = _dense_hessian(model, x, y)
    v = torch.randn(3 + h.shape[0], dtype=torch.float64)
    out = HessianOperator(WithSpare(), (x, y)).matvec(v)
    assert out[:3].abs().max() == 0
    torch.testing.assert_close(out[3:], h @ v[3:], rtol=1e-9, atol=1e-12)
    assert HessianOperator(WithSpare(), (x, y), params={"spare"}).matvec(v[:3]).abs().max() == 0
