import json
import os
from dataclasses import replace

import pytest
import torch

from landscape.base.errors import UserError
from tests.conftest import SINGLE, TRAIN_ARGS, killed_at_epoch, run_module, train_config
from trainers import loop, run_files
from trainers.config import plan_of, schedule_of
from trainers.loop import fit


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def test_accumulation_equals_one_big_batch(tmp_path):
    fit(train_config(tmp_path / "big", batch_size=128, epochs=2), SINGLE)
    fit(train_config(tmp_path / "acc", batch_size=128, micro_batch_size=32, epochs=2), SINGLE)
    plan = torch.load(tmp_path / "acc" / "last.pt", weights_only=True)["plan"]
    assert plan["accumulation_steps"] == 4 and plan["micro_batch_size"] == 32
    _assert_close(_weights(tmp_path / "big" / "last.pt"), _weights(tmp_path / "acc" / "last.pt"))


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    fit(train_config(tmp_path / "full", epochs=4, schedule="cosine", warmup_epochs=1), SINGLE)
    real = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", killed_at_epoch(real, 2))  # epochs 0, 1 saved
    cfg = train_config(tmp_path / "cut", epochs=4, schedule="cosine", warmup_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, SINGLE)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(loop, "train_one_epoch", real)
    fit(replace(cfg, resume=True), SINGLE)
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    epochs = [json.loads(line)["epoch"] for line in open(tmp_path / "cut" / "metrics.jsonl")]
    assert epochs == [1, 2, 3, 4]


def test_existing_run_is_not_overwritten_and_mismatched_resume_is_refused(tmp_path):
    fit(train_config(tmp_path / "r", epochs=1), SINGLE)
    before = open(tmp_path / "r" / "last.pt", "rb").read()
    with pytest.raises(UserError, match="--resume"):
        fit(train_config(tmp_path / "r", epochs=1), SINGLE)
    with pytest.raises(UserError, match="weight_decay"):
        fit(train_config(tmp_path / "r", epochs=1, weight_decay=1e-3, resume=True), SINGLE)
    assert open(tmp_path / "r" / "last.pt", "rb").read() == before


def test_plan_and_schedule():
    cfg = train_config("x", batch_size=8192, micro_batch_size=256)
    plan = plan_of(cfg, world_size=8, n_train=50_000)
    assert (plan.per_rank_batch_size, plan.accumulation_steps, plan.steps_per_epoch) == (1024, 4, 6)
    with pytest.raises(ValueError, match="divisible"):
        plan_of(train_config("x", batch_size=100), 3, 1000)
    with pytest.raises(ValueError, match="exceeds"):
        plan_of(train_config("x", batch_size=256), 1, 100)
    warm = train_config("x", epochs=10, warmup_epochs=2, schedule="cosine")
    lr_factor = schedule_of(warm, 10)
    assert lr_factor(0) == pytest.approx(1 / 20)
    assert lr_factor(19) == pytest.approx(1.0)
    assert lr_factor(99) < 0.01
    step = train_config("x", epochs=10, schedule="step", milestones=(5,), gamma=0.1)
    assert schedule_of(step, 10)(49) == 1.0 and schedule_of(step, 10)(50) == pytest.approx(0.1)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(train_one, tmp_path):
    two = run_module("trainers.train", *TRAIN_ARGS, "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["plan"]["world_size"] == 2
    _assert_close(_weights(train_one), _weights(tmp_path / "two" / "last.pt"), atol=1e-5)


@pytest.mark.slow
def test_sweep_names_runs_deterministically_and_skips_finished_ones(tmp_path):
    args = ["--out", str(tmp_path), "--batch-sizes", "32", "128", "--weight-decays", "0", "5e-4",
            "--dataset", "synthetic", "--data-kwargs", '{"n_train": 256}', "--epochs", "1", "--no-progress"]
    first = run_module("trainers.sweep", *args)
    assert first.returncode == 0, first.stderr
    runs = sorted(os.listdir(tmp_path / "synthetic_mlp"))
    assert runs == ["bs128_wd0", "bs128_wd0.0005", "bs32_wd0", "bs32_wd0.0005"]
    again = run_module("trainers.sweep", *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete") == 4


def test_a_resume_restores_the_rank_s_own_cuda_rng_state(monkeypatch):
    """The plumbing only (no CUDA here): which state is saved, and which one a resume hands back, for a
    checkpoint of this release and for one of 0.1, which saved a list with every visible device's state."""
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"state of {device}")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, str(device))))
    gpu1 = torch.device("cuda", 1)
    rng = run_files.rng_state(gpu1)
    assert rng["cuda"] == "state of cuda:1" and torch.equal(rng["torch"], torch.get_rng_state())
    assert "cuda" not in run_files.rng_state(torch.device("cpu"))
    run_files.restore_rng_state(rng, gpu1)
    run_files.restore_rng_state({**rng, "cuda": ["s0", "s1"]}, gpu1)  # 0.1's list: this rank's device
    run_files.restore_rng_state({**rng, "cuda": ["s0"]}, gpu1)  # saved with fewer devices: nothing for cuda:1
    run_files.restore_rng_state(rng, torch.device("cpu"))  # a CUDA run resumed on a CPU
    assert restored == [("state of cuda:1", "cuda:1"), ("s1", "cuda:1")]


IMAGES = {"n_train": 32, "n_test": 16, "num_classes": 10, "input_shape": [3, 16, 16], "seed": 4}


@pytest.mark.parametrize("name, kwargs, sams", [("torchvision.models:resnet18", {"num_classes": 10}, (None, 0.05)),
                                                ("torchvision.models:resnet18", {}, (None,)),
                                                ("timm:resnet18", {}, (None,))],
                         ids=["torchvision-num-classes", "torchvision-bare", "timm"])
def test_the_trainer_builds_torchvision_and_timm_models_with_and_without_sam(tmp_path, name, kwargs, sams):
    """Any builder: num_classes and input_shape go only where the builder declares them (torchvision's resnet18
    passes its **kwargs on to ResNet, which refuses input_shape), the user's kwargs as given; the checkpoint
    rebuilds the model it holds."""
    from landscape.models.checkpoint_file import load_model

    for sam in sams:
        cfg = train_config(tmp_path / f"sam{sam}", data_kwargs=IMAGES, model=name, model_kwargs=kwargs, epochs=1,
                           batch_size=16, sam=sam)
        ckpt = fit(cfg, SINGLE)
        model, stored = load_model(os.path.join(cfg.out, "last.pt"))
        expected = {**kwargs, **({"num_classes": 10, "input_shape": [3, 16, 16]} if name.startswith("timm") else {})}
        assert stored["model"]["kwargs"] == expected
        assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in model.state_dict().items())
        outputs = model(torch.zeros(1, 3, 16, 16)).shape[-1]
        assert outputs == (10 if kwargs or name.startswith("timm") else 1000)
