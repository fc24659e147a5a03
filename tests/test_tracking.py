"""Curvature tracked while training: the stability thresholds, the preconditioned eigenvalue against a dense
Hessian, and the tracked lambda_max against landscape.sharpness's on the same checkpoint and samples."""

import json
from dataclasses import replace

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
    from landscape.base.config import SurfaceConfig
    from landscape.pipelines.sharpness_table import SharpnessConfig, run_sharpness

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


def _first_step_gradients(run, batch_indices):
    """The gradient (flat, float64) of the mean cross-entropy at the run's initial weights over each index set."""
    from landscape.data.datasets import load_dataset
    from landscape.models.checkpoint_file import load_model

    model, ckpt = load_model(str(run / "epoch_0000.pt"))
    data = load_dataset(ckpt["data"]["name"], **ckpt["data"]["kwargs"])
    model.train()
    grads = []
    for idx in batch_indices:
        model.zero_grad()
        nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    return torch.stack(grads)


def _two_batch(g, small, big):
    g2_small, g2_big = float(g.pow(2).sum(1).mean()), float(g.mean(0).pow(2).sum())
    g2 = (big * g2_big - small * g2_small) / (big - small)
    return g2, (g2_small - g2_big) / (1 / small - 1 / big)


def _sampler_indices(n, replicas, rank, seed=0):
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(0)
    return torch.tensor(list(iter(sampler)))


def _noise_records(run):
    return [r for r in map(json.loads, open(run / "metrics.jsonl")) if r.get("kind") == "noise"]


def test_the_noise_scale_from_micro_batches_is_the_two_batch_estimate_of_their_gradients(tmp_path):
    """One process, 4 micro-batches of 16: the first step's record equals the estimate computed here from the four
    micro-batch gradients at the initial weights; and measuring changes nothing in the training."""
    cfg = train_config(tmp_path / "r", batch_size=64, micro_batch_size=16, epochs=1, track_noise=1)
    tracked = fit(cfg, SINGLE)
    idx = _sampler_indices(512, 1, 0)[:64]
    g2, trace = _two_batch(_first_step_gradients(tmp_path / "r", idx.view(4, 16)), 16, 64)
    first = _noise_records(tmp_path / "r")[0]
    assert (first["source"], first["step"], first["b_small"], first["b_big"]) == ("micro-batches", 1, 16, 64)
    assert first["g2"] == pytest.approx(g2, rel=1e-5) and first["trace_sigma"] == pytest.approx(trace, rel=1e-5)
    plain = fit(train_config(tmp_path / "p", batch_size=64, micro_batch_size=16, epochs=1), SINGLE)
    for k in plain["state_dict"]:
        assert torch.equal(plain["state_dict"][k], tracked["state_dict"][k]), k


def test_the_estimator_leaves_batchnorm_and_training_alone(tmp_path):
    kw = dict(model_kwargs={"hidden": [32, 32], "batchnorm": True}, batch_size=64, epochs=1)
    tracked = fit(train_config(tmp_path / "r", track_noise=2, **kw), SINGLE)
    plain = fit(train_config(tmp_path / "p", **kw), SINGLE)
    assert _noise_records(tmp_path / "r")[0]["source"] == "draws"
    for k in plain["state_dict"]:  # running statistics included
        assert torch.equal(plain["state_dict"][k], tracked["state_dict"][k]), k


@pytest.mark.slow
def test_under_ddp_the_noise_scale_comes_from_each_rank_s_gradient_and_their_mean(tmp_path):
    """Two gloo ranks of 32 samples: the communication hook's per-rank squared norms and the all-reduced mean give
    the estimate computed here from the two ranks' gradients at the initial weights."""
    from tests.conftest import TRAIN_ARGS, run_module

    run = tmp_path / "two"
    res = run_module("trainers.train", *TRAIN_ARGS, "--track-noise", "1", "--epochs", "1", "--out", str(run),
                     nproc=2)
    assert res.returncode == 0, res.stderr
    shards = torch.stack([_sampler_indices(512, 2, r)[:32] for r in range(2)])
    g2, trace = _two_batch(_first_step_gradients(run, shards), 32, 64)
    first = _noise_records(run)[0]
    assert (first["source"], first["b_small"], first["b_big"]) == ("ddp", 32, 64)
    assert first["g2"] == pytest.approx(g2, rel=1e-4) and first["trace_sigma"] == pytest.approx(trace, rel=1e-4)


def _scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_events_read_back_and_a_resume_continues_them_without_duplicates(tmp_path, monkeypatch):
    from tests.conftest import killed_then_resumed

    kw = dict(epochs=4, tensorboard=True, track_sharpness=4, track_samples=128)
    killed_then_resumed(train_config(tmp_path / "full", **kw), train_config(tmp_path / "cut", **kw), SINGLE,
                        monkeypatch)
    for tag in ("epoch/test_loss", "epoch/lr", "sharpness/lambda_max", "sharpness/threshold"):
        full, cut = _scalars(tmp_path / "full", tag), _scalars(tmp_path / "cut", tag)
        assert full and [s for s, _ in cut] == sorted({s for s, _ in cut}), tag  # each step once, in order
        assert [s for s, _ in cut] == [s for s, _ in full], tag
        assert [v for _, v in cut] == pytest.approx([v for _, v in full]), tag
    assert [s for s, _ in _scalars(tmp_path / "full", "epoch/test_loss")] == [8, 16, 24, 32]
    assert len(list((tmp_path / "cut" / "tensorboard").iterdir())) == 2  # the killed run's file and the resumed one's


def test_events_a_kill_left_past_the_checkpoint_are_hidden_on_resume(tmp_path, monkeypatch):
    """Killed after epoch 3's events were written but before its checkpoint: the resumed run redoes epoch 3, and
    the reader shows step 24 once, with the resumed run's values."""
    from trainers import loop

    cfg = train_config(tmp_path / "r", epochs=4, tensorboard=True)
    real = loop.ckpt_io.save_checkpoint

    def dies_at_epoch_3(ckpt, path):
        if ckpt["epoch"] == 3:
            raise KeyboardInterrupt("simulated kill")
        real(ckpt, path)

    monkeypatch.setattr(loop.ckpt_io, "save_checkpoint", dies_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, SINGLE)
    monkeypatch.setattr(loop.ckpt_io, "save_checkpoint", real)
    fit(replace(cfg, resume=True), SINGLE)
    fit(train_config(tmp_path / "full", epochs=4, tensorboard=True), SINGLE)
    cut, full = _scalars(tmp_path / "r", "epoch/test_loss"), _scalars(tmp_path / "full", "epoch/test_loss")
    assert [s for s, _ in cut] == [8, 16, 24, 32]
    assert [v for _, v in cut] == pytest.approx([v for _, v in full])


def test_tensorboard_without_its_package_is_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from landscape.base.flags import run_cli
    from trainers.train import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["--dataset", "synthetic", "--tensorboard", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "needs the tensorboard package" in err[0]
    assert not (tmp_path / "r" / "last.pt").exists()


def test_b_noise_is_tr_h_sigma_over_g_h_g_of_the_drawn_micro_batches_with_the_dense_hessian():
    """estimate_b_noise against the same micro-batches' gradients and the dense Hessian of their loss, by hand."""
    from torch.func import functional_call

    from landscape.monitoring import estimate_b_noise

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(96, 5, dtype=torch.float64), torch.randint(0, 3, (96,))
    est = estimate_b_noise(model, x, y, 8, torch.Generator().manual_seed(3), n_micro=6)
    idx = torch.randperm(96, generator=torch.Generator().manual_seed(3))[:48]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat, xb, yb):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return torch.nn.functional.cross_entropy(functional_call(model, parts, (xb,)), yb)

    g = torch.stack([torch.func.grad(loss)(flat0, x[c], y[c]) for c in idx.view(6, 8)])
    h = torch.func.hessian(loss)(flat0, x[idx], y[idx])
    mean, spread = g.mean(0), g - g.mean(0)
    trace_h_sigma = 8 / 5 * float(sum(d @ h @ d for d in spread))
    ghg = float(mean @ h @ mean) - trace_h_sigma / 48
    assert est.trace_h_sigma == pytest.approx(trace_h_sigma, rel=1e-6)
    assert est.ghg == pytest.approx(ghg, rel=1e-6) and est.products == 7
    assert est.b_noise == pytest.approx(trace_h_sigma / ghg, rel=1e-6)
    assert est.simple.g2 == pytest.approx((48 * float(mean @ mean) - 8 * float(g.pow(2).sum(1).mean())) / 40, rel=1e-6)


def test_b_noise_of_a_language_model_takes_its_token_loss():
    """(B, T, V) outputs and (B, T) targets: the Hessian's loss is the data's metric, the gradients' the same mean."""
    from landscape.monitoring import estimate_b_noise

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Tanh(), nn.Linear(8, 11))
    x, y = torch.randint(0, 11, (64, 6)), torch.randint(0, 11, (64, 6))
    est = estimate_b_noise(model, x, y, 4, torch.Generator().manual_seed(1), n_micro=4, metric="next_token")
    assert est.products == 5 and np.isfinite(est.trace_h_sigma) and np.isfinite(est.ghg)
