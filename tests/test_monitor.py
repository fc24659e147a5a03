"""landscape.Monitor in a plain loop, in a real lightning.Trainer and in a real transformers.Trainer: the records
read back through each framework's own logger, training bit-identical with and without it, a resume measuring as
an uninterrupted run, thresholds read from the optimizer objects, and bad arguments refused by name."""

from __future__ import annotations

import copy
import csv
import glob
import os

import numpy as np
import pytest
import torch
from torch import nn

import landscape
from landscape.base.errors import ConfigError
from landscape.curvature.edge import top_eigenvalue
from landscape.curvature.hessian import HessianOperator

X = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()


def make_net(dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 4))


def plain_loop(model, opt, steps: int, monitor=None, start: int = 0) -> None:
    """A researcher's loop: random batches (global RNG, dropout), cross-entropy, an optimizer step, then the monitor."""
    for step in range(start, steps):
        g = torch.Generator().manual_seed(step)
        idx = torch.randint(0, len(X), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step()


def test_in_a_plain_loop_training_is_bit_identical_and_the_records_are_the_measures(capsys):
    torch.manual_seed(5)
    plain = make_net()
    plain_loop(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), 20)
    rng = torch.get_rng_state()
    torch.manual_seed(5)
    model, logged = make_net(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = landscape.Monitor(model, (X, Y), opt, every=10, log=logged.append)
    plain_loop(model, opt, 20, monitor)
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # weights, BatchNorm statistics and counters: the monitor changed nothing
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's stream, as without the monitor
    assert [r["step"] for r in logged] == [10, 20] and logged == monitor.records
    last = logged[-1]
    assert last["threshold"] == pytest.approx(2 * (1 + 0.9) / 0.1) and last["preconditioned"] is False
    assert last["b_small"] == 32 and last["b_big"] == 256 and last["noise_source"] == "draws"  # one batch a step
    check = HessianOperator(copy.deepcopy(model), (X, Y), "cross_entropy")  # the measure, from scratch
    assert last["lambda_max"] == pytest.approx(top_eigenvalue(check, tol=1e-6)[0], rel=1e-2)
    assert model.training  # the loop's mode, as it was


def accumulating_loop(model, opt, steps: int, monitor=None) -> list[list[torch.Tensor]]:
    """4 micro-batches of 8 per optimizer step, the loss divided by 4; returns each step's micro-batch indices."""
    taken = []
    for step in range(steps):
        idx = torch.randint(0, len(X), (32,), generator=torch.Generator().manual_seed(step)).view(4, 8)
        taken.append(list(idx))
        opt.zero_grad()
        for chunk in idx:
            (nn.functional.cross_entropy(model(X[chunk]), Y[chunk]) / 4).backward()
        opt.step()
        if monitor is not None:
            monitor.step()
    return taken


def test_with_accumulation_the_noise_scale_comes_from_the_step_s_own_micro_batches():
    """A loop that accumulates 4 micro-batches: the measured step's record is the two-batch estimate of those four
    gradients at the weights the step started from (computed here from scratch); training is bit-identical."""
    from landscape.monitoring.noise import two_batch_estimate

    plain = make_net(0.0)
    accumulating_loop(plain, torch.optim.SGD(plain.parameters(), lr=0.1), 6)
    model = make_net(0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = landscape.Monitor(model, (X, Y), opt, every=3, measures=("noise",))
    before = make_net(0.0)
    accumulating_loop(before, torch.optim.SGD(before.parameters(), lr=0.1), 2)  # the weights step 3 starts from
    chunks = accumulating_loop(model, opt, 6, monitor)[2]
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    grads = []
    for chunk in chunks:  # in train mode, as the loop computes them (BatchNorm on batch statistics)
        loss = nn.functional.cross_entropy(before(X[chunk]), Y[chunk])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(before.parameters()))]).double())
    small = float(torch.stack([g.pow(2).sum() for g in grads]).mean())
    expected = two_batch_estimate(small, float(torch.stack(grads).mean(0).pow(2).sum()), 8, 32)
    first = monitor.records[0]
    assert (first["step"], first["noise_source"], first["b_small"], first["b_big"]) == (3, "micro-batches", 8, 32)
    assert first["g2"] == pytest.approx(expected.g2, rel=1e-5)
    assert first["trace_sigma"] == pytest.approx(expected.trace_sigma, rel=1e-5)
    assert [r["step"] for r in monitor.records] == [3, 6]
    forced = landscape.Monitor(make_net(0.0), (X, Y), None, every=1, measures=("noise",), noise_from="draws")
    accumulating_loop(forced.model, torch.optim.SGD(forced.model.parameters(), lr=0.1), 1, forced)
    assert forced.records[0]["noise_source"] == "draws"


def test_a_resumed_loop_measures_as_an_uninterrupted_one():
    def run(resume: bool):
        torch.manual_seed(5)
        model = make_net()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        monitor = landscape.Monitor(model, (X, Y), opt, every=5)
        if not resume:
            plain_loop(model, opt, 20, monitor)
            return monitor.records
        plain_loop(model, opt, 10, monitor)
        saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "monitor": monitor.state_dict(),
                               "rng": torch.get_rng_state()})
        model2 = make_net()
        model2.load_state_dict(saved["model"])
        opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
        opt2.load_state_dict(saved["opt"])
        again = landscape.Monitor(model2, (X, Y), opt2, every=5)
        again.load_state_dict(saved["monitor"])
        torch.set_rng_state(saved["rng"])
        plain_loop(model2, opt2, 20, again, start=10)
        return monitor.records + again.records

    whole, resumed = run(False), run(True)
    assert [r["step"] for r in resumed] == [5, 10, 15, 20]
    assert resumed == whole  # bit for bit: the warm start of Lanczos travels in the state
    assert all(r["preconditioned"] for r in whole)
    assert whole[-1]["threshold"] == pytest.approx((2 + 2 * 0.9) / ((1 - 0.9) * 1e-2))


def test_an_optimizer_without_a_threshold_and_bad_arguments(capsys):
    model = make_net()
    monitor = landscape.Monitor(model, (X, Y), torch.optim.RMSprop(model.parameters()), every=1,
                                measures=("lambda_max",))
    for _ in range(2):
        r = monitor.step()
    assert r["threshold"] is None and "RMSprop" in r["threshold_undefined"]
    assert capsys.readouterr().out.count("null threshold") == 1  # said once
    for kwargs, words in [({"every": 0}, "every must be"), ({"measures": ("flatness",)}, "measures must be"),
                          ({"noise_batches": 1}, "noise_batches must be"),
                          ({"noise_from": "hooks"}, "noise_from must be")]:
        with pytest.raises(ValueError, match=words):
            landscape.Monitor(model, (X, Y), None, **kwargs)
    with pytest.raises(ValueError, match="data: the model cannot take"):
        landscape.Monitor(model, (torch.randn(64, 7), Y[:64]), None)
    with pytest.raises(ConfigError, match="updates none of the model's parameters"):
        landscape.Monitor(model, (X, Y), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


# ------------------------------------------------------------------------------------------- Lightning

def lightning_fit(root, callbacks, epochs: int = 2, ckpt_path: str | None = None):
    import lightning
    from lightning.pytorch.loggers import CSVLogger

    class Net(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(dropout=0.0)  # Lightning restores no RNG state on resume

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    lightning.seed_everything(3, verbose=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=32, shuffle=False)
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=callbacks, logger=CSVLogger(str(root)),
                                log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                                accelerator="cpu", devices=1, accumulate_grad_batches=2,
                                default_root_dir=str(root), enable_checkpointing=bool(ckpt_path is None))
    module = Net()
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, trainer


def test_a_lightning_trainer_logs_the_records_and_trains_bit_identically(tmp_path):
    from landscape.integrations.lightning import MonitorCallback

    plain, _ = lightning_fit(tmp_path / "plain", [])
    callback = MonitorCallback((X, Y), every=2, save_every=4, save_dir=str(tmp_path / "weights"))
    watched, trainer = lightning_fit(tmp_path / "watched", [callback])
    saved = sorted(os.listdir(tmp_path / "weights"))
    assert saved == ["step_0000004.pt", "step_0000008.pt"]  # state dicts, as plot2d --model reads them
    last = torch.load(tmp_path / "weights" / saved[-1], weights_only=True)
    assert all(torch.equal(v, watched.state_dict()[k]) for k, v in last.items())
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["step"] for r in callback.records] == [2, 4, 6, 8]  # 8 batches an epoch, 2 per optimizer step
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "watched" / "**" / "metrics.csv"), recursive=True)[0])))
    logged = {row["landscape/lambda_max"]: row for row in rows if row.get("landscape/lambda_max")}
    assert len(logged) == len(callback.records)  # each record once (Lightning may repeat a row's step metrics)
    for row, r in zip(sorted(logged.values(), key=lambda row: int(row["step"])), callback.records):
        assert float(row["landscape/lambda_max"]) == pytest.approx(r["lambda_max"], rel=1e-6)  # logged as float32
        assert float(row["landscape/threshold"]) == pytest.approx(2 * 1.9 / 0.05) == r["threshold"]
        if r["b_simple"] is not None:  # two micro-batches a step: a noisy |G|^2 estimate may come out <= 0
            assert float(row["landscape/b_simple"]) == pytest.approx(r["b_simple"], rel=1e-6)
        else:
            assert r["b_simple_undefined"]
    # Lightning accumulates 2 batches a step and training_step calls the module: the step's own micro-batches
    assert {(r["noise_source"], r["b_small"], r["b_big"]) for r in callback.records} == {("micro-batches", 32, 64)}


def test_a_resumed_lightning_run_logs_the_records_of_an_uninterrupted_one(tmp_path):
    from landscape.integrations.lightning import MonitorCallback

    whole = MonitorCallback((X, Y), every=2)
    lightning_fit(tmp_path / "whole", [whole], epochs=2)
    first = MonitorCallback((X, Y), every=2)
    _, trainer = lightning_fit(tmp_path / "first", [first], epochs=1)
    ckpt = glob.glob(str(tmp_path / "first" / "**" / "*.ckpt"), recursive=True)[0]
    assert torch.load(ckpt, weights_only=True)["callbacks"]  # the monitor's state is in Lightning's checkpoint
    second = MonitorCallback((X, Y), every=2)
    lightning_fit(tmp_path / "second", [second], epochs=2, ckpt_path=ckpt)
    assert first.records + second.records == whole.records


LIGHTNING_DDP = """
import json, sys
import lightning, torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from landscape.integrations.lightning import MonitorCallback

out = sys.argv[1]
X = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long() + 2 * (X[:, 1] > 0).long()


class Net(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


callback = MonitorCallback((X, Y), every=4)
trainer = lightning.Trainer(max_epochs=1, strategy="ddp", devices=2, accelerator="cpu", callbacks=[callback],
                            logger=CSVLogger(out), log_every_n_steps=1, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False)
module = Net()
trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=16))
json.dump(callback.records, open(f"{out}/records_{trainer.global_rank}.json", "w"))
if trainer.global_rank == 0:
    torch.save(module.state_dict(), f"{out}/last.pt")
"""


@pytest.mark.slow
def test_a_lightning_ddp_run_on_two_processes_measures_over_both_ranks_data(tmp_path):
    """Lightning's DDP strategy, 2 gloo processes: both ranks log the same records, and the last lambda_max is the
    one of the whole subset (each rank measured its half) at the final weights, computed here in one process."""
    import json
    import subprocess
    import sys

    from tests.conftest import cli_env

    script = tmp_path / "fit.py"
    script.write_text(LIGHTNING_DDP)
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env=cli_env(), cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"records_{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and [r["step"] for r in ranks[0]] == [4, 8]  # 128 samples a rank, 16 a batch
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    net.load_state_dict({k.removeprefix("net."): v for k, v in torch.load(tmp_path / "last.pt").items()})
    assert ranks[0][-1]["lambda_max"] == pytest.approx(top_eigenvalue(HessianOperator(net, (X, Y)), tol=1e-6)[0],
                                                       rel=1e-2)
    assert ranks[0][-1]["threshold"] == pytest.approx(2 * 1.9 / 0.05) and ranks[0][-1]["b_simple"] is not None
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)[0])))
    logged = sorted({float(r["landscape/lambda_max"]) for r in rows if r.get("landscape/lambda_max")})
    assert logged == pytest.approx(sorted(r["lambda_max"] for r in ranks[0]), rel=1e-6)  # rank 0's logger


# ------------------------------------------------------------------------------------------- transformers

IDS = torch.multinomial(torch.tensor([8.0, 4, 2, 1] + [0.05] * 60), 48 * 12, replacement=True,
                        generator=torch.Generator().manual_seed(0)).view(48, 12)  # skewed unigrams: a clear signal
BATCHES = [{"input_ids": b, "labels": b} for b in IDS.split(8)]  # the monitor's data, as a user has it


def gpt2_trainer(out, callbacks=(), steps: int = 4, save_steps: int = 100, resume: str | None = None):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32,
                                                                 n_layer=2, n_head=2))
    ids = IDS
    args = transformers.TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=steps,
                                          save_steps=save_steps, logging_steps=1, report_to=[], use_cpu=True,
                                          learning_rate=1e-3, disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in ids])
    for cb in callbacks:
        if getattr(cb, "trainer", None) == "this":
            cb.trainer = trainer
        trainer.add_callback(cb)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_a_transformers_trainer_logs_the_records_through_trainer_log(tmp_path):
    from landscape.integrations.huggingface import MonitorCallback

    callback = MonitorCallback(BATCHES, every=2, metric="causal_lm", samples=32, trainer="this", save_every=4,
                               save_dir=str(tmp_path / "weights"))
    trainer = gpt2_trainer(tmp_path / "run", [callback])
    assert landscape.load_weights(str(tmp_path / "weights" / "step_0000004")).config.n_layer == 2
    logged = [r for r in trainer.state.log_history if "landscape/lambda_max" in r]
    assert [r["step"] for r in logged] == [2, 4] and [r["step"] for r in callback.records] == [2, 4]
    for row, r in zip(logged, callback.records):
        assert row["landscape/lambda_max"] == r["lambda_max"] and r["preconditioned"]  # AdamW: P^-1 H
        assert row["landscape/threshold"] == pytest.approx((2 + 2 * 0.9) / (0.1 * 1e-3))
        assert row["landscape/b_simple"] == r["b_simple"] and r["b_simple"] > 0


def test_a_resumed_transformers_run_measures_as_an_uninterrupted_one(tmp_path):
    from landscape.integrations.huggingface import MonitorCallback

    whole = MonitorCallback(BATCHES, every=2, metric="causal_lm", samples=32, measures=("lambda_max",))
    gpt2_trainer(tmp_path / "whole", [whole], steps=6, save_steps=2)  # uninterrupted, leaving checkpoint-2, 4, 6
    assert os.path.exists(tmp_path / "whole" / "checkpoint-4" / "landscape_monitor.pt")
    again = MonitorCallback(BATCHES, every=2, metric="causal_lm", samples=32, measures=("lambda_max",))
    gpt2_trainer(tmp_path / "again", [again], steps=6, resume=str(tmp_path / "whole" / "checkpoint-4"))
    assert [r["step"] for r in again.records] == [6]
    # transformers resumes to float rounding (not bit for bit): the eigenvalue agrees far inside Lanczos's tol
    np.testing.assert_allclose(again.records[0]["lambda_max"], whole.records[-1]["lambda_max"], rtol=1e-4)


def test_a_callback_given_to_the_other_framework_is_one_line(tmp_path):
    from landscape.integrations import huggingface
    from landscape.integrations import lightning as pl_integration

    with pytest.raises(ConfigError, match="is a transformers callback; for a Lightning Trainer"):
        lightning_fit(tmp_path, [huggingface.MonitorCallback((X, Y))])
    with pytest.raises(ConfigError, match="is a Lightning callback; for transformers' Trainer"):
        gpt2_trainer(tmp_path, [pl_integration.MonitorCallback((X, Y))])


def test_importing_landscape_loads_neither_framework():
    import subprocess
    import sys

    code = ("import sys, landscape, landscape.integrations; landscape.Monitor; "
            "print('lightning' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("marker", ["readme-loop-monitor", "readme-lightning-monitor", "readme-hf-monitor"])
def test_the_readme_recipes_run_as_written(marker, tmp_path, monkeypatch, capsys):
    """The three recipes of the README's "In your own training loop", each run as written (here, in this process)."""
    from tests.test_api import _readme_block

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(_readme_block(marker), marker, "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    if marker == "readme-loop-monitor":
        assert out.count("'lambda_max'") == 5 and "'threshold': 38.0" in out.replace("37.99999999999999", "38.0")
        assert torch.load("run.pt", weights_only=True)["monitor"]["steps"] == 100
    elif marker == "readme-lightning-monitor":
        rows = list(csv.DictReader(open(glob.glob("logs/**/metrics.csv", recursive=True)[0])))
        assert {"landscape/lambda_max", "landscape/threshold", "landscape/b_simple"} <= set(rows[0])
        assert sum(1 for r in rows if r["landscape/lambda_max"]) >= 3
    else:
        printed = out.strip().splitlines()[-1]  # the recipe's print of log_history's records
        assert printed.count("'landscape/lambda_max'") == 2 and "'landscape/threshold'" in printed


def test_the_sharpness_table_and_hessian_of_a_module_equal_the_command_on_the_same_weights(mlp_ckpt, tmp_path):
    from landscape.base.config import SurfaceConfig
    from landscape.core.grid_eval import select_samples
    from landscape.models.checkpoint_file import load_data_for, load_model
    from landscape.pipelines.sharpness_table import SharpnessConfig, run_sharpness
    from tests.conftest import SINGLE

    measures = ("lambda_max", "lambda_min", "trace", "width")
    request = SurfaceConfig(mlp_ckpt, samples=128, splits=("train",), out=str(tmp_path), progress=False,
                            device="cpu")
    rows = run_sharpness(request, SharpnessConfig(measures=measures, trace_products=12, width_directions=2), SINGLE,
                         log=lambda _: None).rows
    by = {r["measure"]: r["value"] for r in rows if r["subset"] == "all"}
    model, ckpt = load_model(mlp_ckpt)
    model.train()
    data = select_samples(*load_data_for(ckpt).split("train"), 128, "train")
    table = landscape.sharpness_table(model, data, measures=measures, trace_products=12, width_directions=2)
    assert [(r["measure"], r["value"]) for r in table] == [(r["measure"], r["value"]) for r in rows]  # bit for bit
    found = landscape.hessian_eigenvalues(model, data, smallest=True)
    assert found.top[0] == pytest.approx(by["lambda_max"], rel=1e-9)
    assert found.min == pytest.approx(by["lambda_min"], rel=1e-6)
    assert model.training  # the module is left in its mode
    first = next(n for n, _ in model.named_parameters()).split(".")[0]  # the first Linear's parameters alone
    op = landscape.hessian(model, data, params=f"{first}.*")
    assert op.dim == sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{first}."))
    assert op.linear_operator().matvec(np.ones(op.dim)).shape == (op.dim,)


def test_connect_models_on_modules_equals_the_command_on_their_files_and_leaves_them_alone(tmp_path, capsys):
    from landscape.connect import main as connect_main
    from tests import userland

    a = userland.make_mlp()
    b = userland.make_mlp()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3 * torch.randn_like(p))
    before = [t.clone() for t in (*a.state_dict().values(), *b.state_dict().values())]
    flags = dict(epochs=2, points=5, align=True, lr=0.05, progress=False, device="cpu")
    curve = landscape.connect_models(a, b, userland.loader(), str(tmp_path / "api"), **flags)
    assert all(torch.equal(x, y) for x, y in zip(before, (*a.state_dict().values(), *b.state_dict().values())))
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    connect_main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--model", "tests.userland:make_mlp", "--data",
                  "tests.userland:loader", "--out", str(tmp_path / "cli"), "--epochs", "2", "--points", "5",
                  "--align", "--lr", "0.05", "--no-progress", "--device", "cpu", "--formats", "png"])
    from landscape.core.curve_file import read_curve

    cli = read_curve(next(str(p) for p in (tmp_path / "cli").iterdir() if p.name.endswith("_connect.h5")))
    for path in ("line", "aligned_line", "curve"):
        for k, v in curve.paths[path].values.items():
            np.testing.assert_array_equal(v, cli.paths[path].values[k], err_msg=f"{path} {k}")
    assert landscape.barriers(curve) == landscape.barriers(cli)
    with pytest.raises(ValueError, match="connect_checkpoints takes two checkpoint paths"):
        landscape.connect_checkpoints(a, b)
    with pytest.raises(ValueError, match="are different architectures"):
        landscape.connect_models(a, userland.make_mlp(width=8), userland.loader(), str(tmp_path / "x"), **flags)
