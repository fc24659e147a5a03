"""Curvature tracked while training: the stability thresholds, the preconditioned eigenvalue against a dense
Hessian, and the tracked lambda_max against landscape.sharpness's on the same checkpoint and samples."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from landscape.curvature.edge import adam_preconditioner, stability_threshold, top_eigenvalue
from landscape.curvature.hessian import HessianOperator
from tests.conftest import SINGLE, train_config
from trainers.loop import fit


def test_stability_thresholds_of_each_optimizer():
    assert stability_threshold("sgd", 0.1) == pytest.approx(20.0)  # 2 / lr
    assert stability_threshold("sgd", 0.1, momentum=0.9) == pytest.approx(38.0)  # 2 (1 + beta) / lr
    assert stability_threshold("sgd", 0.1, momentum=0.9, nesterov=True) == pytest.approx(3.8 / (2.8 * 0.1))
    assert stability_threshold("adam", 1e-3, beta1=0.9) == pytest.approx(3.8 / (0.1 * 1e-3))
    assert stability_threshold("lars", 1.0) is None and stability_threshold("lamb", 1e-3) is None


def test_the_preconditioned_top_eigenvalue_is_that_of_the_dense_p_inverse_h():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    sizes, shapes = [p.numel() for p in params], [p.shape for p in params]

    def loss(w):
        ws = [t.view(s) for t, s in zip(torch.split(w, sizes), shapes)]
        h = torch.tanh(x @ ws[0].T + ws[1])
        return nn.functional.cross_entropy(h @ ws[2].T + ws[3], y)

    dense = torch.autograd.functional.hessian(loss, flat).numpy()
    p = adam_preconditioner(opt, params)
    d = 1 / np.sqrt(p)
    expected = np.linalg.eigvalsh(d[:, None] * dense * d[None, :])[-1]
    lam, v = top_eigenvalue(HessianOperator(model, (x, y)), tol=1e-8, preconditioner=p)
    assert lam == pytest.approx(expected, rel=1e-6)
    assert np.linalg.eigvalsh(dense)[-1] != pytest.approx(expected, rel=0.1)  # the preconditioning matters here


def test_the_tracked_lambda_max_at_the_last_step_is_landscape_sharpness_s(tmp_path):
    from landscape.base.config import SharpnessConfig, SurfaceConfig
    from landscape.pipelines.sharpness_table import run_sharpness

    cfg = train_config(tmp_path / "r", epochs=2, track_sharpness=3, track_samples=200)
    ckpt = fit(cfg, SINGLE)
    tracked = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    tracked = [r for r in tracked if r.get("kind") == "sharpness"]
    assert [r["step"] for r in tracked] == [3, 6, 9, 12, 15, 16]  # every 3 steps, and the last (2 x 8)
    assert tracked[-1]["threshold"] == pytest.approx(2 * 1.9 / 0.05)  # heavy ball, beta 0.9, lr 0.05
    assert "v" in ckpt["tracking"]
    rows = run_sharpness(SurfaceConfig(str(tmp_path / "r" / "last.pt"), samples=200, splits=("train",),
                                       out=str(tmp_path / "s"), progress=False),
                         SharpnessConfig(measures=("lambda_max",)), SINGLE, write=False).rows
    reference = next(r["value"] for r in rows if r["measure"] == "lambda_max" and r["subset"] == "all")
    assert tracked[-1]["lambda_max"] == pytest.approx(reference, rel=2e-3)  # both to Lanczos's tol = 1e-3
