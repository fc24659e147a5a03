"""Large-batch remedies in the trainer: lr scaling, Ghost BatchNorm, regime adaptation, LARS and LAMB, SAM."""

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from landscape.models.checkpoint_file import load_model
from landscape.optim.ghost_bn import ghost_batchnorm
from tests.conftest import SINGLE, killed_then_resumed, train_config
from trainers.config import TrainConfig, peak_lr, plan_of, run_length, schedule_of
from trainers.loop import fit
from trainers.sweep import is_complete
from trainers.train import get_parser


def _manual_batchnorm(x, mean, var, weight, bias, momentum, eps):
    """Train-mode BatchNorm over all of x (N, C), written out: the output, and the running statistics after one
    update (the variance stored unbiased, as torch does)."""
    mu, v = x.mean(0), x.var(0, unbiased=False)
    out = (x - mu) / torch.sqrt(v + eps) * weight + bias
    n = x.shape[0]
    return out, (1 - momentum) * mean + momentum * mu, (1 - momentum) * var + momentum * v * n / (n - 1)


def _layer(features=5, seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(features, momentum=0.3)
    with torch.no_grad():  # not the identity affine, not the initial statistics
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    return bn


def test_ghost_batches_of_half_the_batch_normalize_each_half_and_update_the_statistics_twice():
    bn = _layer()
    x = torch.randn(16, 5) * 3 + torch.arange(16.0)[:, None] / 4  # halves with other means
    w, b, mean, var = bn.weight.detach(), bn.bias.detach(), bn.running_mean.clone(), bn.running_var.clone()
    first, mean, var = _manual_batchnorm(x[:8], mean, var, w, b, 0.3, bn.eps)
    second, mean, var = _manual_batchnorm(x[8:], mean, var, w, b, 0.3, bn.eps)
    ghost = ghost_batchnorm(nn.Sequential(bn), 8)[0].train()
    out = ghost(x)
    torch.testing.assert_close(out, torch.cat([first, second]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ghost.running_mean, mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ghost.running_var, var, rtol=1e-6, atol=1e-6)
    assert int(ghost.num_batches_tracked) == 2
    whole, _, _ = _manual_batchnorm(x, bn.running_mean, bn.running_var, w, b, 0.3, bn.eps)
    assert (out - whole).abs().max() > 0.1  # the halves' statistics differ from the whole batch's


def test_a_ghost_batch_of_the_whole_batch_is_plain_batchnorm_and_eval_mode_is_untouched():
    plain, ghost = _layer(seed=1), ghost_batchnorm(nn.Sequential(_layer(seed=1)), 16)[0]
    x = torch.randn(16, 5)
    assert torch.equal(plain.train()(x), ghost.train()(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(plain, name), getattr(ghost, name)), name
    small = ghost_batchnorm(nn.Sequential(_layer(seed=1)), 4)[0]
    assert torch.equal(_layer(seed=1).eval()(x), small.eval()(x))  # eval: the running statistics, any ghost size


def test_a_ghost_batchnorm_run_trains_differently_and_its_checkpoint_loads_into_the_plain_model(tmp_path):
    kw = dict(model_kwargs={"hidden": [32, 32], "batchnorm": True}, batch_size=64, epochs=2)
    fit(train_config(tmp_path / "plain", **kw), SINGLE)
    fit(train_config(tmp_path / "ghost", ghost_batch_size=16, **kw), SINGLE)
    plain, _ = load_model(str(tmp_path / "plain" / "last.pt"))
    ghost, ckpt = load_model(str(tmp_path / "ghost" / "last.pt"))  # a plain mlp, loaded strictly
    assert type(ghost[2]) is nn.BatchNorm1d and ckpt["train_config"]["ghost_batch_size"] == 16
    assert not torch.allclose(plain[2].running_var, ghost[2].running_var)  # 16-sample statistics are noisier


def test_scale_lr_rules_the_bare_flag_and_runs_stored_with_the_old_switch(tmp_path):
    parse = get_parser().parse_args
    assert parse(["--out", "r", "--scale-lr"]).scale_lr == "linear"
    assert parse(["--out", "r", "--scale-lr", "sqrt", "--epochs", "2"]).scale_lr == "sqrt"
    assert parse(["--out", "r"]).scale_lr is None
    cfg = TrainConfig(out="r", lr=0.1, batch_size=512, base_batch_size=128)
    assert [peak_lr(replace(cfg, scale_lr=r)) for r in (None, "linear", "sqrt")] == pytest.approx([0.1, 0.4, 0.2])
    assert TrainConfig(out="r", scale_lr=True).scale_lr == "linear" and TrainConfig(out="r").scale_lr is None
    # a run stored by 0.7, whose train_config says scale_lr: true, resumes under --scale-lr
    cfg = train_config(tmp_path / "r", scale_lr="linear", base_batch_size=32, epochs=1)
    fit(cfg, SINGLE)
    last = tmp_path / "r" / "last.pt"
    state = torch.load(last, weights_only=True)
    state["train_config"]["scale_lr"] = True
    torch.save(state, last)
    assert fit(replace(cfg, resume=True), SINGLE)["epoch"] == 1  # already complete: the stored run is this one
    assert math.isclose(state["optimizer"]["param_groups"][0]["initial_lr"], 0.05 * 64 / 32)


def test_regime_adaptation_takes_the_small_batch_s_steps_and_stretches_the_schedule(tmp_path):
    """512 training samples: batch 32 takes 16 steps an epoch, so 2 epochs are 32 steps; batch 128 takes 4 an
    epoch, so it trains 8 epochs, and its milestone (epoch 1) and warmup (half an epoch) stretch 4x."""
    cfg = train_config(tmp_path / "r", batch_size=128, base_batch_size=32, epochs=2, regime_adaptation=True,
                       schedule="step", milestones=(1,), gamma=0.5, warmup_epochs=0.5, save_every=100)
    plan = plan_of(cfg, 1, 512)
    length = run_length(cfg, plan, 512)
    assert (length.epochs, length.stretch) == (8, 4.0)
    lr = schedule_of(cfg, plan.steps_per_epoch, length)
    assert lr(7) == pytest.approx(1.0) and lr(6) < 1.0  # warmup: 2 epochs x 4 steps
    assert lr(15) == pytest.approx(1.0) and lr(16) == pytest.approx(0.5)  # the milestone, at epoch 4 of 8
    ckpt = fit(cfg, SINGLE)
    assert (ckpt["epoch"], ckpt["step"], ckpt["run_epochs"]) == (8, 32, 8)
    assert is_complete(str(tmp_path / "r"), cfg.epochs)  # the sweep's check reads the run's own length
    plain = fit(replace(cfg, out=str(tmp_path / "p"), regime_adaptation=False), SINGLE)
    assert (plain["epoch"], plain["step"]) == (2, 8)


REMEDIES = {"sqrt": dict(scale_lr="sqrt", base_batch_size=16),
            "goyal": dict(scale_lr="linear", base_batch_size=16, warmup_epochs=1.5, schedule="step", milestones=(2,)),
            "ghost": dict(ghost_batch_size=16, model_kwargs={"hidden": [32, 32], "batchnorm": True}),
            "regime": dict(regime_adaptation=True, base_batch_size=32, epochs=2, schedule="cosine",
                           warmup_epochs=0.5),
            "lars": dict(optimizer="lars", lr=2.0, weight_decay=5e-4),
            "lamb": dict(optimizer="lamb", lr=0.01, model_kwargs={"hidden": [32, 32], "batchnorm": True}),
            "sam": dict(sam=0.05, sam_m=16, sam_adaptive=True, model_kwargs={"hidden": [32, 32], "batchnorm": True}),
            "ramp": dict(micro_batch_size=16, batch_ramp="16:2", schedule="cosine"),
            "tau": dict(optimizer="adamw", lr=3e-3, weight_decay=0.05, scale_lr="sqrt", base_batch_size=16,
                        scale_wd="tau"),
            "schedule": dict(micro_batch_size=16, batch_schedule="16:0,32:1,64:2", scale_lr="sqrt", base_batch_size=16,
                             schedule="cosine", track_noise=2),
            "tracked": dict(track_sharpness=5, track_samples=128, track_noise=3, optimizer="adam", lr=3e-3),
            "noise_micro": dict(track_noise=2, micro_batch_size=16)}


@pytest.mark.parametrize("remedy", sorted(REMEDIES))
def test_a_killed_and_resumed_remedy_run_equals_an_uninterrupted_one(remedy, tmp_path, monkeypatch):
    kw = {"epochs": 3, "batch_size": 64, **REMEDIES[remedy]}
    a, b = killed_then_resumed(train_config(tmp_path / "full", **kw), train_config(tmp_path / "cut", **kw), SINGLE,
                               monkeypatch)
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    tracked = [[json.loads(line) for line in open(tmp_path / run / "metrics.jsonl") if '"kind"' in line]
               for run in ("full", "cut")]
    assert tracked[0] == tracked[1]  # the warm-started eigenvalues too, from the eigenvector the checkpoint keeps


def _layered(weight_grad):
    """Linear(3, 2) + BatchNorm1d(2) with the linear weight [[3, 0, 4], [0, 0, 0]] (norm 5), its gradient given,
    and every 1-D tensor's value 1 and gradient [0.5, -0.5]."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0, 4], [0, 0, 0]]))
        for p in model.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
    model[0].weight.grad = weight_grad.clone()
    for p in model.parameters():
        if p.ndim == 1:
            p.grad = torch.tensor([0.5, -0.5])
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lars_scales_each_weight_by_its_trust_ratio_and_leaves_biases_and_norms_plain(weight_decay):
    from landscape.optim.builders import make_optimizer

    g = torch.tensor([[0.0, 2, 0], [0, 0, 0]])  # norm 2
    model = _layered(g)
    make_optimizer(model, "lars", lr=1.0, weight_decay=weight_decay, momentum=0.9).step()
    w = torch.tensor([[3.0, 0, 4], [0, 0, 0]])
    trust = 0.001 * 5 / (2 + 5 * weight_decay + 1e-8)  # eta |w| / (|g| + wd |w| + eps), You et al. 2017
    torch.testing.assert_close(model[0].weight.detach(), w - trust * (g + weight_decay * w))
    if weight_decay == 0:
        assert model[0].weight[0, 1].item() == pytest.approx(-0.005)  # written out: 0.001 x 5 / 2 x 2
    for p in (model[0].bias, model[1].weight, model[1].bias):  # plain SGD: no decay, no trust ratio
        torch.testing.assert_close(p.detach(), torch.tensor([0.5, 1.5]))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lamb_scales_each_weight_s_adam_step_by_its_trust_ratio_and_leaves_biases_and_norms_plain(weight_decay):
    from landscape.optim.builders import make_optimizer

    g = torch.tensor([[0.0, 2, 0], [0, 0, 0]])
    model = _layered(g)
    make_optimizer(model, "lamb", lr=0.01, weight_decay=weight_decay, betas=(0.9, 0.999)).step()
    w = torch.tensor([[3.0, 0, 4], [0, 0, 0]])
    adam = g / (g.abs() + 1e-6)  # the first bias-corrected Adam step: m/(sqrt(v) + eps) = g/(|g| + eps)
    update = adam + weight_decay * w
    trust = 5 / update.norm()  # |w| / |update|, You et al. 2019
    torch.testing.assert_close(model[0].weight.detach(), w - 0.01 * trust * update)
    if weight_decay == 0:
        assert model[0].weight[0, 1].item() == pytest.approx(-0.05, rel=1e-5)  # written out: 0.01 x 5 x 1
    for p in (model[0].bias, model[1].weight, model[1].bias):  # Adam's step, no decay, no trust ratio
        torch.testing.assert_close(p.detach(), torch.tensor([1 - 0.01, 1 + 0.01]), rtol=1e-5, atol=1e-7)


def test_lars_and_lamb_without_timm_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    import sys

    from landscape.base.flags import run_cli
    from trainers.train import main

    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.optim", None)
    for name in ("lars", "lamb"):
        with pytest.raises(SystemExit) as exc:
            run_cli(main, ["--dataset", "synthetic", "--optimizer", name, "--out", str(tmp_path / name)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "needs timm's optimizers; install timm" in err[0]
        assert not (tmp_path / name).exists()  # a refused command leaves no empty folder behind


def _two_pass_sam(model, x, y, m, rho, lr, adaptive=False):
    """A SAM step of plain SGD written out with torch.func: per group of m samples (strided: group g is samples g,
    g + G, ... of the G = len(x) / m groups) the gradient g at w, the step e = rho g/|g| (ASAM: rho w^2 g/|w g|), the
    gradient at w + e; the update is lr times their mean."""
    from torch.func import functional_call, grad

    w = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss(params, xc, yc):
        return nn.functional.cross_entropy(functional_call(model, params, (xc,)), yc)

    total = {k: torch.zeros_like(v) for k, v in w.items()}
    count = len(x) // m
    chunks = [(x[g::count], y[g::count]) for g in range(count)]
    for xc, yc in chunks:
        g = grad(loss)(w, xc, yc)
        t = {k: w[k].abs() if adaptive else torch.ones_like(w[k]) for k in w}
        norm = torch.sqrt(sum(((t[k] * g[k]) ** 2).sum() for k in w))
        e = {k: rho * t[k] ** 2 * g[k] / norm for k in w}
        g2 = grad(loss)({k: w[k] + e[k] for k in w}, xc, yc)
        for k in w:
            total[k] += g2[k] / len(chunks)
    return {k: w[k] - lr * total[k] for k in w}


@pytest.mark.parametrize("m, adaptive", [(4, False), (None, False), (4, True)])
def test_one_sam_step_equals_the_two_pass_computation(m, adaptive):
    from landscape.optim.sam import sam_step
    from landscape.optim.step import wrap_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    expected = _two_pass_sam(model, x, y, m or 8, rho=0.5, lr=0.1, adaptive=adaptive)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    losses = []
    sam_step(wrap_model(model, SINGLE), model, opt, sched, [(x, y)], precision="fp32", info=SINGLE, losses=losses,
             rho=0.5,
             adaptive=adaptive, m=m)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], rtol=1e-5, atol=1e-6)
    assert len(losses) == 1  # one loss per micro-batch, as a plain step logs
    plain = _two_pass_sam(model, x, y, m or 8, rho=1e-12, lr=0.1)  # rho -> 0 is plain SGD: a different step
    assert max((plain[k] - expected[k]).abs().max() for k in plain) > 1e-4


def test_sam_keeps_the_batchnorm_statistics_of_the_pass_at_the_weights():
    from landscape.optim.sam import sam_step

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).train()
    reference = copy.deepcopy(model)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with torch.no_grad():
        for g in range(2):
            reference(x[g::2])  # the ascent passes alone, at w, in order: the strided groups of 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sam_step(model, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), [(x, y)], precision="fp32",
             info=SINGLE, losses=[], rho=0.5, m=4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model[1], name), getattr(reference[1], name)), name


def test_sam_flags_refuse_a_zero_radius_and_options_without_sam():
    with pytest.raises(ValueError, match="--sam must be > 0"):
        TrainConfig(out="r", sam=0.0)
    with pytest.raises(ValueError, match="need --sam RHO"):
        TrainConfig(out="r", sam_m=4)


@pytest.mark.slow
@pytest.mark.parametrize("m", ["32", "64"])
def test_sam_on_two_processes_equals_one_process_with_the_same_m(tmp_path, m):
    """The groups are strided as DistributedSampler deals the samples, so a group of m is the same samples however the
    batch is split over ranks (m = 32: 4 groups of the step's 128 samples, 2 on each of 2 ranks; m = 64: one group
    on each); each step all-reduces once, the gradient at the perturbed points."""
    from tests.conftest import TRAIN_ARGS, run_module

    args = [*TRAIN_ARGS, "--batch-size", "128", "--sam", "0.05", "--sam-m", m, "--epochs", "1"]
    one = run_module("trainers.train", *args, "--out", str(tmp_path / "one"))
    two = run_module("trainers.train", *args, "--out", str(tmp_path / "two"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_scale_wd_tau_holds_the_base_batch_s_timescale_and_the_records_carry_it(tmp_path):
    from trainers.config import peak_lr, tau_of, weight_decay_of

    cfg = train_config(tmp_path / "r", optimizer="adamw", batch_size=256, base_batch_size=64, lr=0.01,
                       scale_lr="sqrt", weight_decay=0.1, scale_wd="tau", epochs=2)
    assert peak_lr(cfg) == pytest.approx(0.02) and weight_decay_of(cfg) == pytest.approx(0.1 * 4 * 0.5)
    assert tau_of(256, peak_lr(cfg), weight_decay_of(cfg), 512) == pytest.approx(tau_of(64, 0.01, 0.1, 512))
    assert tau_of(64, 0.01, 0.1, 512) == pytest.approx(64 / (0.01 * 0.1 * 512))
    fit(cfg, SINGLE)
    log = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["tau"] for r in log] == pytest.approx([tau_of(64, 0.01, 0.1, 512)] * 2)  # the base batch's, held
    plain = fit(replace(cfg, out=str(tmp_path / "p"), scale_wd=None), SINGLE)
    assert plain["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(0.1)
    assert [json.loads(line)["tau"] for line in open(tmp_path / "p" / "metrics.jsonl")] == \
        pytest.approx([tau_of(256, 0.02, 0.1, 512)] * 2)
    with pytest.raises(Exception, match="--optimizer sgd or adamw, not adam"):
        replace(cfg, optimizer="adam")


def test_a_batch_schedule_grows_the_batch_by_stages_with_the_lr_rule_and_the_schedule_follows_the_samples(tmp_path):
    from landscape.optim.builders import RampedSchedule, Schedule, make_batch_schedule, make_plan

    plan = make_plan(128, 1, 512, micro_batch_size=16)  # 8 accumulation steps of 16, 4 steps an epoch
    stages = make_batch_schedule(plan, [(32, 0), (64, 2), (128, 3)], 512, "linear")
    assert [stages.plan_at(e).global_batch_size for e in range(5)] == [32, 32, 64, 128, 128]
    assert [stages.plan_at(e).steps_per_epoch for e in range(4)] == [16, 16, 8, 4]
    assert stages.samples_before(40) == 1024 + 8 * 64 and stages.epoch_of(39) == 2 and stages.epoch_of(40) == 3
    assert [stages.lr_factor(s) for s in (0, 31, 32, 40)] == [0.25, 0.25, 0.5, 1.0]  # linear: the stage's batch
    cosine = Schedule("cosine", 5, 4)
    lr = RampedSchedule(cosine, stages)
    assert lr(16) == pytest.approx(0.25 * cosine(4.0)) and lr(36) == pytest.approx(0.5 * cosine(10.0))
    sqrt = make_batch_schedule(plan, [(32, 0), (128, 1)], 512, "sqrt")
    assert sqrt.lr_factor(0) == pytest.approx(0.5)
    cfg = train_config(tmp_path / "r", batch_size=128, micro_batch_size=16, batch_schedule="32:0,64:2,128:3",
                       scale_lr="linear", base_batch_size=128, epochs=4, lr=0.2, schedule="constant")
    ckpt = fit(cfg, SINGLE)
    assert ckpt["step"] == 16 + 16 + 8 + 4
    log = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["global_batch_size"] for r in log] == [32, 32, 64, 128]
    assert [r["lr"] for r in log] == pytest.approx([0.05, 0.05, 0.1, 0.2])  # the epoch's first lr, by the rule


def test_a_batch_ramp_grows_the_batch_by_accumulation_and_the_schedule_follows_the_samples(tmp_path):
    from landscape.optim.builders import RampedSchedule, Schedule, make_plan, make_ramp

    plan = make_plan(128, 1, 512, micro_batch_size=16)  # 8 accumulation steps of 16, 4 steps an epoch
    ramp = make_ramp(plan, 32, 2, 512)  # 2 accumulation steps at epoch 0, 5 at epoch 1, 8 from epoch 2 on
    assert [ramp.accumulation(e) for e in range(4)] == [2, 5, 8, 8]
    assert [ramp.plan_at(e).steps_per_epoch for e in range(3)] == [16, 6, 4]  # 512 // 32, 512 // 80, 512 // 128
    assert ramp.samples_before(16) == 512 and ramp.samples_before(22) == 512 + 480
    cosine = Schedule("cosine", 4, 4)
    ramped = RampedSchedule(cosine, ramp)
    assert ramped(16) == pytest.approx(cosine(4.0))  # after one epoch of samples: the full batch's step 4
    assert ramped(8) == pytest.approx(cosine(2.0)) and ramped(30) == pytest.approx(cosine(30 - 16 - 6 + 7.75))
    cfg = train_config(tmp_path / "r", batch_size=128, micro_batch_size=16, batch_ramp="32:2", epochs=3,
                       schedule="cosine")
    ckpt = fit(cfg, SINGLE)
    assert ckpt["step"] == 16 + 6 + 4
    log = [__import__("json").loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["global_batch_size"] for r in log] == [32, 80, 128]


def test_each_remedy_owns_a_piece_of_the_train_config_and_the_gap_figure_trains_the_trainer_s_recipes(tmp_path):
    import dataclasses

    from figures import generalization_gap as gap
    from trainers.remedies import RECIPES, REMEDIES

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert len(fields) == len(set(fields))
    owned = [f.name for r in REMEDIES.values() for f in dataclasses.fields(r.flags)]
    assert len(owned) == len(set(owned)) and set(owned) <= set(fields)  # one owner per flag
    assert all(issubclass(TrainConfig, r.flags) for r in REMEDIES.values())
    plain = TrainConfig(out=str(tmp_path))
    assert not any(r.active(plain) for r in REMEDIES.values())
    used = {}
    for name in ("goyal", "hoffer", "lars", "lamb", "sam", "ramp", "tau"):
        cfg = gap.config_of(gap.PRESETS["smoke"], name, 0, str(tmp_path), "cpu")
        used[name] = {r.name for r in REMEDIES.values() if r.active(cfg)}
    assert used == {"goyal": set(), "hoffer": {"ghost_batchnorm", "regime_adaptation"}, "lars": set(),
                    "lamb": set(), "sam": {"sam"}, "ramp": {"batch_growth"}, "tau": {"decay_scaling"}}
    assert set(RECIPES) == set(used)
    assert set(gap.PRESETS["cifar"].remedies) | set(gap.PRESETS["lm"].remedies) <= set(RECIPES)
