"""Shared fixtures: tiny checkpoints trained on generated data, and helpers that run our CLIs as a user would."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from landscape.runtime.distributed import DistInfo
from trainers.config import TrainConfig
from trainers.loop import fit

SINGLE = DistInfo(0, 0, 1, torch.device("cpu"))

# Small, fast data: 4 Gaussian classes in 16 dimensions (MLP) or 3x8x8 images (ResNet with BatchNorm).
MLP_DATA = {"n_train": 512, "n_test": 256, "num_classes": 4, "input_shape": [16], "seed": 1}
IMG_DATA = {"n_train": 256, "n_test": 128, "num_classes": 4, "input_shape": [3, 8, 8], "seed": 2}


def train_config(out, **kw) -> TrainConfig:
    base = TrainConfig(out=str(out), dataset="synthetic", data_kwargs=MLP_DATA, model="mlp",
                       model_kwargs={"hidden": [32, 32]}, batch_size=64, epochs=3, lr=0.05, progress=False)
    return replace(base, **kw)


@pytest.fixture(scope="session")
def mlp_ckpt(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("mlp_run")
    fit(train_config(out), SINGLE)
    return str(out / "last.pt")


@pytest.fixture(scope="session")
def mlp_ckpt_b(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("mlp_run_b")
    fit(train_config(out, batch_size=256, seed=3), SINGLE)
    return str(out / "last.pt")


@pytest.fixture(scope="session")
def mlp_ckpt_c(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("mlp_run_c")
    fit(train_config(out, batch_size=32, seed=7), SINGLE)
    return str(out / "last.pt")


@pytest.fixture(scope="session")
def bn_ckpt(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("resnet_run")
    fit(train_config(out, data_kwargs=IMG_DATA, model="resnet20", model_kwargs={}, epochs=1, batch_size=32), SINGLE)
    return str(out / "last.pt")


def killed_then_resumed(full: TrainConfig, cut: TrainConfig, info, monkeypatch) -> tuple[dict, dict]:
    """Train `full` uninterrupted; train `cut` killed when epoch 2 starts (epochs 0 and 1 saved), then resumed to
    the end. The two runs' last checkpoints, as read from disk."""
    from trainers import loop

    fit(full, info)
    real = loop.train_one_epoch
    monkeypatch.setattr(loop, "train_one_epoch", killed_at_epoch(real, 2))
    with pytest.raises(KeyboardInterrupt):
        fit(cut, info)
    monkeypatch.setattr(loop, "train_one_epoch", real)
    fit(replace(cut, resume=True), info)
    return tuple(torch.load(os.path.join(c.out, "last.pt"), weights_only=True) for c in (full, cut))


def killed_at_epoch(train_one_epoch, epoch: int):
    """train_one_epoch that raises KeyboardInterrupt (a simulated kill) when it is asked for `epoch`."""
    def wrapped(*args, **kw):
        if inspect.signature(train_one_epoch).bind(*args, **kw).arguments["epoch"] == epoch:
            raise KeyboardInterrupt("simulated kill")
        return train_one_epoch(*args, **kw)

    return wrapped


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the processes run_module starts (OMP_NUM_THREADS=1), so that values computed in
    this process and in those ones add up in the same order and can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tree_digest(folder) -> dict[str, str]:
    """Every file below `folder` with its sha256: what a refused command must leave as it was."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def refused(capsys, main, argv: list[str], message: str) -> bool:
    """A command's `main(ARGV)`, run in this process as its CLI runs it (run_cli): exit 2 and one line naming
    `message`, no traceback. True, so that a caller may assert it."""
    from landscape.base.flags import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err, err
    return True


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LANDSCAPE_DEBUG")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_module(module: str, *args: str, cwd: str | None = None, timeout: float = 300,
               nproc: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` (or under torchrun with nproc processes) and capture its output."""
    cmd = [sys.executable, "-m", module, *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=cli_env())


# One small job of each kind, run once in one process: what the multi-process and multi-node runs must equal.
PLOT2D_ARGS = ["--x=-1:1:5", "--y=-1:1:4", "--no-progress", "--formats", "png", "--device", "cpu"]  # after mlp_ckpt
TRAIN_ARGS = ["--dataset", "synthetic", "--data-kwargs", '{"n_train": 512, "input_shape": [16]}', "--model", "mlp",
              "--model-kwargs", '{"hidden": [32]}', "--batch-size", "64", "--epochs", "2", "--lr", "0.05",
              "--weight-decay", "5e-4", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="session")
def plot2d_one(mlp_ckpt, tmp_path_factory) -> str:
    """The folder of `plot2d mlp_ckpt PLOT2D_ARGS` run in one process (copy it before writing to it)."""
    out = tmp_path_factory.mktemp("plot2d_one")
    res = run_module("landscape.plot2d", mlp_ckpt, *PLOT2D_ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "computed 20 of 20 points" in res.stdout
    return str(out)


@pytest.fixture(scope="session")
def train_one(tmp_path_factory) -> str:
    """last.pt of `trainers.train TRAIN_ARGS` run in one process."""
    out = tmp_path_factory.mktemp("train_one")
    res = run_module("trainers.train", *TRAIN_ARGS, "--out", str(out))
    assert res.returncode == 0, res.stderr
    return str(out / "last.pt")
