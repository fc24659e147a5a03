import numpy as np
import pytest
import torch
from torch import nn

from landscape.hessian import HessianOperator, eigenvalues, hutchinson_trace, width_1d


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
    op = HessianOperator(model, x, y, batch_size=25)  # uneven batches: weighting by count must be exact
    eig = eigenvalues(op, k=3, tol=1e-10, min_restarts=1000)
    assert eig.min_converged
    np.testing.assert_allclose(eig.top, exact[::-1][:3], rtol=1e-6, atol=1e-9)
    assert eig.min == pytest.approx(exact[0], rel=1e-6, abs=1e-9)
    tr = hutchinson_trace(op, samples=200, seed=1)
    assert abs(tr.estimate - exact.sum()) < 4 * tr.stderr
    assert tr.stderr > 0


def test_hvp_matches_the_dense_product(tiny):
    model, x, y = tiny
    h = _dense_hessian(model, x, y)
    op = HessianOperator(model, x, y, batch_size=32)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), h @ v, rtol=1e-9, atol=1e-12)


def test_width_of_a_parabola():
    a = np.linspace(-1, 1, 201)
    assert width_1d(a, 4 * a**2, threshold=1.0) == pytest.approx(1.0, abs=1e-3)  # 4a^2 <= 1  <=>  |a| <= 0.5
    assert width_1d(a, 0.1 * a**2, threshold=1.0) == pytest.approx(2.0)  # never crosses: cut at the edges
    sharp, flat = width_1d(a, 10 * a**2, 0.5), width_1d(a, a**2, 0.5)
    assert sharp < flat


def _spawned_top_eigenvalue(rank, world, port, x, y, state, out):
    import os

    import torch.distributed as dist

    from landscape.distributed import cleanup_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    model.load_state_dict(state)
    op = HessianOperator(model, x[rank::world], y[rank::world], batch_size=7)
    eig = eigenvalues(op, k=2, tol=1e-10)
    tr = hutchinson_trace(op, samples=5, seed=3)
    if rank == 0:
        out.put((eig.top, tr.estimate))
    cleanup_distributed()
    os._exit(0)  # no interpreter finalization after gloo: see landscape.cli._exit


@pytest.mark.slow
def test_two_processes_give_the_same_spectrum_as_one(tiny):
    import socket

    import torch.multiprocessing as mp

    model, x, y = tiny
    one = HessianOperator(model, x, y, batch_size=7)
    eig, tr = eigenvalues(one, k=2, tol=1e-10), hutchinson_trace(one, samples=5, seed=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.spawn(_spawned_top_eigenvalue, args=(2, port, x, y, model.state_dict(), out), nprocs=2, join=True)
    top, trace = out.get()
    np.testing.assert_allclose(top, eig.top, rtol=1e-8)
    assert trace == pytest.approx(tr.estimate, rel=1e-8)
