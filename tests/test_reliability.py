"""Nothing lost, nothing mixed: the run log survives a kill at any point, one writer per output folder, diagnoses
that name the real cause, one line and exit 2 for every bad input, strict JSON, and training that diverges stops.
Every case of the issue that asked for these is held here, so that each stays fixed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

import landscape
from landscape.base.errors import UserError
from landscape.base.flags import run_cli
from landscape.base.locks import LOCK_FILE, holder_of, lock_path, one_writer
from landscape.models import checkpoint_file as ckpt_io
from tests.conftest import MLP_DATA, SINGLE, cli_env, train_config, tree_digest
from trainers import loop
from trainers.loop import fit

TIMING = ("images_per_second", "tokens_per_second", "train_seconds", "wall_seconds")


def log_of(folder) -> list[dict]:
    """A run's metrics.jsonl, read strictly (NaN or Infinity would raise), without the timings."""
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line, parse_constant=refuse).items() if k not in TIMING} for line in f]


class Killed(BaseException):
    """A simulated SIGKILL: nothing of ours catches it, so the files are left as a kill at that point leaves them."""


def kill_after(real, when):
    """`real` that raises Killed right after a call for which `when(*args)` holds."""
    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if when(*args):
            raise Killed
        return out

    return wrapped


def last_pt_of_epoch(epoch: int, run: str = ""):
    return lambda ckpt, path: path.endswith(os.path.join(run, "last.pt")) and ckpt["epoch"] == epoch


def log_line_of_epoch(epoch: int):
    def when(path, records):
        records = records if isinstance(records, list) else [records]
        return any(r.get("epoch") == epoch and "kind" not in r for r in records)

    return when


# ------------------------------------------------------------------------------------------- a log that survives

TRACKED = dict(epochs=3, track_sharpness=3, track_noise=2, track_samples=64, save_every=1)


@pytest.mark.parametrize("point", ["after the checkpoint", "after the log line"])
@pytest.mark.parametrize("epoch", [2, 3], ids=["middle epoch", "last epoch"])
def test_a_kill_around_the_checkpoint_leaves_the_log_of_an_uninterrupted_run(tmp_path, monkeypatch, point, epoch):
    full, cut = train_config(tmp_path / "full", **TRACKED), train_config(tmp_path / "cut", **TRACKED)
    fit(full, SINGLE)
    if point == "after the checkpoint":
        monkeypatch.setattr(loop.ckpt_io, "save_checkpoint", kill_after(ckpt_io.save_checkpoint,
                                                                        last_pt_of_epoch(epoch)))
    else:
        monkeypatch.setattr(loop, "append_jsonl", kill_after(loop.append_jsonl, log_line_of_epoch(epoch)))
    with pytest.raises(Killed):
        fit(cut, SINGLE)
    monkeypatch.undo()
    fit(replace(cut, resume=True), SINGLE)
    assert log_of(cut.out) == log_of(full.out)
    kinds = [r.get("kind", "epoch") for r in log_of(full.out)]
    assert kinds.count("epoch") == 3 and "sharpness" in kinds and "noise" in kinds


def test_kills_between_checkpoint_and_log_leave_the_gap_figure_s_table_as_an_uninterrupted_run_s(tmp_path,
                                                                                                  monkeypatch):
    """The small run of figures.generalization_gap --preset smoke killed right after its checkpoint, in a middle
    epoch and then in its last one: the figure's summary.csv and the run's log equal an uninterrupted run's."""
    import figures.generalization_gap as gap

    monkeypatch.setattr(gap, "compose", lambda *a, **k: [])  # the drawing is not what is tested here
    gap.main(["--preset", "smoke", "--out", str(tmp_path / "full")])
    for epoch in (1, 2):  # the smoke preset's small run trains 2 epochs
        with monkeypatch.context() as m:
            m.setattr(loop.ckpt_io, "save_checkpoint", kill_after(ckpt_io.save_checkpoint,
                                                                  last_pt_of_epoch(epoch, "small_s0")))
            with pytest.raises(Killed):
                gap.main(["--preset", "smoke", "--out", str(tmp_path / "cut")])
    gap.main(["--preset", "smoke", "--out", str(tmp_path / "cut")])
    run = os.path.join("runs", "small_s0")
    assert log_of(tmp_path / "cut" / run) == log_of(tmp_path / "full" / run)
    assert (tmp_path / "cut" / "summary.csv").read_text() == (tmp_path / "full" / "summary.csv").read_text()


# ------------------------------------------------------------------------------------------- one writer

class PausedWriter:
    """`python -m ARGS`, started at once with the others, and stopped (SIGSTOP) as soon as it holds the lock of
    `folder`, so that a second writer meets it deterministically; `go_on()` lets it run on, `finish()` waits for
    its clean end."""

    def __init__(self, args: list[str], folder):
        self.lock = lock_path(str(folder))
        self.proc = subprocess.Popen([sys.executable, "-m", *args], env=cli_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def pause_when_holding(self) -> None:
        deadline = time.time() + 300
        while f"pid {self.pid} " not in holder_of(self.lock):
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.time() < deadline, "the first writer never took its lock"
            time.sleep(0.002)
        os.kill(self.pid, signal.SIGSTOP)
        assert f"pid {self.pid} " in holder_of(self.lock), "the first writer finished before it could be paused"

    def go_on(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def finish(self) -> None:
        _, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err


def refused_by(capsys, main, argv: list[str], pid: int) -> str:
    """Run a command's main in this process as the CLI does: one line, exit 2, naming the writer `pid`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"is being written by pid {pid} on host" in err and "another --out" in err, err
    return err


TRAIN = ["--dataset", "synthetic", "--data-kwargs", json.dumps({**MLP_DATA, "n_train": 4096}), "--model-kwargs",
         '{"hidden": [32, 32]}', "--batch-size", "64", "--epochs", "2", "--lr", "0.05", "--no-progress",
         "--device", "cpu"]


def test_a_second_trainer_connect_or_figure_on_one_out_is_refused_and_the_first_writes_what_it_writes_alone(
        mlp_ckpt, mlp_ckpt_b, tmp_path, capsys, one_thread):
    """Each command started twice on one --out: the first holds the folder (paused while it holds its lock); the
    second is refused in one line naming it, before writing anything; the first then writes what a solo run
    writes."""
    from figures.hessian_directions import main as figure
    from landscape.connect import main as connect
    from landscape.core.curve_file import read_curve
    from landscape.core.surface_file import read_surface
    from trainers.train import main as train

    def connect_args(out):
        return [mlp_ckpt, mlp_ckpt_b, "--out", str(out), "--epochs", "1", "--points", "3", "--no-progress",
                "--formats", "png", "--device", "cpu"]

    def figure_args(out):
        return [mlp_ckpt, "--random", "1", "--x=-0.5:0.5:5", "--out", str(out), "--device", "cpu"]

    commands = {"trainers.train": (train, lambda out: [*TRAIN, "--out", str(out)]),
                "landscape.connect": (connect, connect_args), "figures.hessian_directions": (figure, figure_args)}
    firsts = {m: PausedWriter([m, *args(tmp_path / m)], tmp_path / m) for m, (_, args) in commands.items()}
    try:
        for module, first in firsts.items():
            first.pause_when_holding()
            main, args = commands[module]
            before = tree_digest(tmp_path / module)
            refused_by(capsys, main, args(tmp_path / module), first.pid)
            if module == "trainers.train":  # other settings: refused all the same, config.json left as it was
                refused_by(capsys, main, [*args(tmp_path / module), "--seed", "1"], first.pid)
            assert tree_digest(tmp_path / module) == before  # the refused ones wrote nothing
    finally:
        for first in firsts.values():
            first.go_on()
    for first in firsts.values():
        first.finish()
    for module, (main, args) in commands.items():
        main(args(tmp_path / "solo" / module))
    run, solo = tmp_path / "trainers.train", tmp_path / "solo" / "trainers.train"
    assert log_of(run) == log_of(solo)
    assert json.loads((run / "config.json").read_text())["train_config"]["seed"] == 0
    a, b = (torch.load(d / "last.pt", weights_only=True)["state_dict"] for d in (run, solo))
    assert all(torch.equal(a[k], b[k]) for k in a)
    run, solo = tmp_path / "landscape.connect", tmp_path / "solo" / "landscape.connect"
    assert not any(p.name.endswith("_training.pt") for p in run.iterdir())
    (mine,), (alone,) = ([d / p for p in os.listdir(d) if p.endswith("_connect.h5")] for d in (run, solo))
    a, b = read_curve(str(mine)), read_curve(str(alone))
    for path in a.paths:
        for k, v in a.paths[path].values.items():
            np.testing.assert_array_equal(v, b.paths[path].values[k], err_msg=f"{path} {k}")
    run, solo = tmp_path / "figures.hessian_directions" / "surfaces", tmp_path / "solo" / "figures.hessian_directions"
    names = sorted(os.listdir(run))
    assert names == sorted(os.listdir(solo / "surfaces")) and len(names) == 2
    for name in names:
        a, b = read_surface(str(run / name)), read_surface(str(solo / "surfaces" / name))
        np.testing.assert_array_equal(a.values["train_loss"], b.values["train_loss"])


HOLD = ("import sys, time; from landscape.base.locks import one_writer\n"
        "with one_writer(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None):\n"
        "    print('held', flush=True); time.sleep(60)")


@contextlib.contextmanager
def lock_held_elsewhere(folder, stem: str | None = None):
    """Another process (no torch: it starts in milliseconds) holding the lock of `folder` (or of `stem` in it)."""
    os.makedirs(folder, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *([stem] if stem else [])], env=cli_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_the_sweep_plot2d_and_sharpness_refuse_a_second_writer_of_their_output(mlp_ckpt, tmp_path, capsys):
    from landscape.plot2d import main as plot2d
    from landscape.sharpness import main as sharpness
    from trainers.sweep import main as sweep

    with lock_held_elsewhere(tmp_path / "sweep") as other:
        refused_by(capsys, sweep, ["--out", str(tmp_path / "sweep"), "--dataset", "synthetic", "--epochs", "1"],
                   other.pid)
    surf = tmp_path / "surf"
    with lock_held_elsewhere(surf, "mlp_run0_last_2d.h5") as other:
        refused_by(capsys, plot2d, [mlp_ckpt, "--x=-1:1:3", "--y=-1:1:3", "--out", str(surf)], other.pid)
        # another surface in the same folder is another output: it goes ahead
        run_cli(plot2d, [mlp_ckpt, "--x=-1:1:3", "--y=-1:1:3", "--out", str(surf), "--name", "other",
                         "--no-progress", "--formats", "png"])
    with lock_held_elsewhere(tmp_path / "sharp", "mlp_run0_last_sharpness") as other:
        refused_by(capsys, sharpness, [mlp_ckpt, "--measures", "lambda_max", "--out", str(tmp_path / "sharp")],
                   other.pid)


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    with lock_held_elsewhere(tmp_path) as other:
        with pytest.raises(UserError, match=f"pid {other.pid} on host"):
            with one_writer(str(tmp_path)):
                pass
        other.send_signal(signal.SIGKILL)
        other.wait()
    with one_writer(str(tmp_path)) as path:  # the kernel released the dead process's lock
        assert f"pid {os.getpid()} " in holder_of(path)
        with one_writer(str(tmp_path)):  # a process may take its own lock again (a figure and its runs)
            pass
    assert not os.path.exists(os.path.join(tmp_path, LOCK_FILE))


# ------------------------------------------------------------------------------------------- diagnoses

def test_a_truncated_or_corrupt_surface_file_is_called_that_and_only_a_real_lock_says_another_process(
        plot2d_one, mlp_ckpt, tmp_path, capsys):
    from landscape.plot2d import main as plot2d

    good = next(os.path.join(plot2d_one, f) for f in os.listdir(plot2d_one) if f.endswith(".h5"))
    raw = open(good, "rb").read()
    truncated, corrupt = tmp_path / "cut" / "t_2d.h5", tmp_path / "bad" / "c_2d.h5"
    for path, data in [(truncated, raw[: len(raw) // 2]), (corrupt, b"\0" * 4096)]:
        path.parent.mkdir()
        path.write_bytes(data)
    for path, words in [(truncated, "is truncated"), (corrupt, "is corrupt or not a readable HDF5 file")]:
        for argv in ([str(path)], [mlp_ckpt, "--x=-1:1:5", "--y=-1:1:4", "--out", str(path.parent),
                                   "--name", path.name[:-len("_2d.h5")]]):
            capsys.readouterr()
            with pytest.raises(SystemExit):
                run_cli(plot2d, argv)
            err = capsys.readouterr().err
            assert words in err and str(path) in err and "delete it" in err and "another process" not in err, err
    held = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\nf = h5py.File(sys.argv[1], 'a')\n"
                             "print('open', flush=True)\ntime.sleep(60)", good], stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout.readline().strip() == "open"
        with pytest.raises(SystemExit):
            run_cli(plot2d, [good])
        assert "is open for writing by another process" in capsys.readouterr().err
    finally:
        held.kill()
        held.wait()


# ------------------------------------------------------------------------------------------- one line, exit 2

@pytest.fixture(scope="module")
def files(tmp_path_factory, mlp_ckpt):
    d = tmp_path_factory.mktemp("inputs")
    (d / "notes.txt").write_text("plain text, not a checkpoint\n")
    (d / "short.txt").write_text("x")
    (d / "spec.json").write_text('{"net.0.weight": ["a", null],')
    (d / "folder.json").mkdir()
    shutil.copy(mlp_ckpt, d / "copy.pt")
    run = os.path.dirname(mlp_ckpt)
    return {"dir": str(d), "ckpt": mlp_ckpt, "run": run}


CASES = [  # (module, argv template, words the one line must hold)
    ("landscape.connect", ["{dir}/notes.txt", "{ckpt}"], "truncated, corrupt or not a PyTorch checkpoint"),
    ("landscape.connect", ["{ckpt}", "{dir}/short.txt"], "truncated, corrupt or not a PyTorch checkpoint"),
    ("landscape.connect", ["{ckpt}", "{mlp_b}", "--align", "--align-spec", "{dir}/spec.json"], "is not valid JSON"),
    ("landscape.connect", ["{ckpt}", "{mlp_b}", "--align", "--align-spec", "{dir}/folder.json"], "is a folder"),
    ("landscape.connect", ["{ckpt}", "{ckpt}"], "hold the same weights"),
    ("landscape.connect", ["{ckpt}", "{dir}/copy.pt"], "hold the same weights"),
    ("landscape.connect", ["{run}", "{mlp_b}"], "is a run folder of trainers.train"),
    ("landscape.connect", ["{ckpt}", "{mlp_b}", "--train-batch-size", "100000"],
     "--train-batch-size 100000 exceeds the"),
    ("landscape.connect", ["{dir}/w.pt", "{dir}/w2.pt", "--model", "tests.userland:make_mlp", "--data",
                           "tests.userland:loader", "--train-batch-size", "8"], "your loader's batch size"),
    ("landscape.connect", ["{ckpt}", "{mlp_b}", "--name", "../../escape"], "must be a plain file name"),
    ("landscape.plot2d", ["{ckpt}", "--name", "sub/escape"], "must be a plain file name"),
    ("trainers.train", ["--momentum", "-1"], "--momentum must be >= 0"),
    ("trainers.train", ["--lr", "inf"], "--lr inf is not a finite number"),
    ("trainers.train", ["--lr", "-0.1"], "--lr must be > 0"),
    ("trainers.train", ["--schedule", "step", "--milestones", "1", "--gamma", "-1"], "--gamma must be > 0"),
    ("trainers.train", ["--sam", "inf"], "--sam inf is not a finite number"),
    ("trainers.train", ["--weight-decay", "nan"], "--weight-decay nan is not a finite number"),
    ("trainers.train", ["--batch-ramp", "64:1", "--regime-adaptation"], "do not combine"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "128", "--batch-ramp", "256:1"],
     "not below --batch-size 128"),
    ("figures.generalization_gap", ["--preset", "smoke", "--epochs", "0"], "--epochs must be >= 1"),
    ("figures.flat_vs_sharp", ["--preset", "smoke", "--epochs", "0"], "--epochs must be >= 1"),
    ("figures.connectivity", ["--preset", "smoke", "--epochs", "0"], "--epochs must be >= 1"),
    ("figures.trajectory", ["--preset", "smoke", "--epochs", "0"], "--epochs must be >= 1"),
    ("figures.critical_batch", ["--preset", "smoke", "--lr-range", "0.5", "0.5"], "--lr-range 0.5 0.5 is empty"),
    ("figures.critical_batch", ["--preset", "smoke", "--lr-range", "-1", "0.5"], "is empty or not positive"),
    ("figures.critical_batch", ["--preset", "smoke", "--trials", "0"], "--trials must be >= 1"),
]


@pytest.mark.parametrize("module, argv, words", CASES, ids=[f"{c[0].split('.')[1]} {' '.join(c[1])}"[:60]
                                                             for c in CASES])
def test_each_bad_input_is_one_line_exit_2_and_leaves_no_folder(files, mlp_ckpt_b, tmp_path, capsys, module, argv,
                                                                 words):
    from tests import userland

    state = userland.make_mlp().state_dict()
    torch.save(state, os.path.join(files["dir"], "w.pt"))
    torch.save({k: v + 0.1 for k, v in state.items()}, os.path.join(files["dir"], "w2.pt"))
    out = tmp_path / "new" / "out"
    argv = [a.format(**files, mlp_b=mlp_ckpt_b) for a in argv] + ["--out", str(out)]
    if module != "trainers.train" and not module.startswith("figures"):
        argv.append("--no-progress")
    before = tree_digest(files["dir"])
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not (tmp_path / "new").exists()  # no empty --out (nor its parent) left behind
    assert not os.path.exists(tmp_path.parent / "escape")
    after = tree_digest(files["dir"])
    assert {p: h for p, h in after.items() if p in before} == before


def test_the_direction_functions_take_what_random_directions_returns(tmp_path):
    from tests import userland

    model = userland.make_mlp()
    d = landscape.random_directions(model, n=2, seed=3)
    landscape.save_directions(str(tmp_path / "d.h5"), d)
    back = landscape.read_directions(str(tmp_path / "d.h5"))
    assert [sorted(x) for x in back] == [sorted(x) for x in d]
    for got, made in zip(back, d):
        assert all(np.array_equal(got[k], made[k].numpy()) for k in made)
    data = userland.loader()
    a = landscape.surface(model, data, d, x="-1:1:3", y="-1:1:3", progress=False)
    b = landscape.surface(model, data, back, x="-1:1:3", y="-1:1:3", progress=False)  # numpy arrays, as read
    np.testing.assert_array_equal(a.values["loss"], b.values["loss"])


# ------------------------------------------------------------------------------------------- strict JSON

def test_an_undefined_noise_scale_is_null_with_its_reason_and_every_log_line_is_strict_json(tmp_path):
    from landscape.monitoring.noise import NoiseEstimate, b_simple_of, two_batch_estimate
    from trainers.run_files import append_jsonl

    fine = two_batch_estimate(g2_small=1.0, g2_big=2.0, small=8, big=64)  # |G_big|^2 above |G_small|^2: |G|^2 > 0
    noisy = two_batch_estimate(g2_small=3.0, g2_big=0.1, small=8, big=64)  # a noisy step: |G|^2 estimate negative
    assert b_simple_of(fine.g2, fine.trace_sigma)["b_simple"] == pytest.approx(fine.trace_sigma / fine.g2)
    record = b_simple_of(noisy.g2, noisy.trace_sigma)
    assert record == {"b_simple": None, "b_simple_undefined": "|G|^2 estimate not positive"}
    assert NoiseEstimate(-1.0, 2.0).b_simple is None and NoiseEstimate(2.0, 1.0).b_simple == 0.5
    append_jsonl(str(tmp_path / "metrics.jsonl"), [{"step": 1, **record}, {"step": 2, "x": float("inf")}])
    first, second = log_of(tmp_path)  # parsed strictly
    assert first["b_simple"] is None and second["x"] is None


# ------------------------------------------------------------------------------------------- divergence

def test_training_that_diverges_stops_with_one_line_and_keeps_the_last_finite_checkpoint(tmp_path, capsys):
    from trainers.train import main

    out = tmp_path / "run"
    args = ["--dataset", "synthetic", "--epochs", "4", "--lr", "30", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        run_cli(main, args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "training diverged" in err and "at optimizer step 6 (epoch 2, lr 30)" in err, err
    assert f"last finite checkpoint is kept ({out / 'last.pt'})" in err, err
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert [r["epoch"] for r in log_of(out)] == [1]
    with pytest.raises(SystemExit):  # the resume diverges at the same step, writing nothing non-finite
        run_cli(main, [*args, "--resume"])
    assert "at optimizer step 6 " in capsys.readouterr().err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1


def test_a_run_that_diverges_is_a_row_of_the_gap_figure_s_table_not_a_drawing(tmp_path, monkeypatch):
    import figures.generalization_gap as gap

    smoke = replace(gap.PRESETS["smoke"], remedies=("lars",), layerwise_lr=1e30)  # each step grows |w| 1e27-fold
    monkeypatch.setitem(gap.PRESETS, "smoke", smoke)
    drawn = []
    monkeypatch.setattr(gap, "compose", lambda p, logs, rows, *rest: drawn.append((list(logs), rows)) or [])
    gap.main(["--preset", "smoke", "--out", str(tmp_path)])
    rows = {r["run"]: r for r in drawn[0][1]}
    assert rows["lars"]["status"].startswith("diverged at step ") and np.isnan(rows["lars"]["test_error"])
    assert rows["small"]["status"] == rows["naive"]["status"] == "trained"
    assert [k[0] for k in drawn[0][0]] == ["small", "naive"]  # the diverged run's log is not drawn
    table = (tmp_path / "summary.csv").read_text()
    assert "lars,LARS (You et al. 2017),diverged at step" in table
