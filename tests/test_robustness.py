"""Kills at random moments lose no flushed point; bad input gets one line, a non-zero exit, and no damage."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from landscape.base.flags import run_cli
from landscape.core.surface_file import read_surface
from tests.conftest import SINGLE, cli_env, run_module, train_config, tree_digest
from trainers.loop import fit

# ------------------------------------------------------------------------------------------- kills

# --device cpu: one process per CPU rank, also on a machine with fewer GPUs than ranks
GRID = ["--x=-1:1:21", "--y=-1:1:21", "--no-progress", "--formats", "png", "--flush-seconds", "0.05", "--device", "cpu"]


@pytest.fixture(scope="module")
def slow_ckpt(tmp_path_factory) -> str:
    """A model whose grid points take a few milliseconds each, so a 25x25 grid runs for seconds."""
    out = tmp_path_factory.mktemp("slow_run")
    data = {"n_train": 256, "n_test": 6000, "input_shape": [64], "num_classes": 10}
    fit(train_config(out, data_kwargs=data, model_kwargs={"hidden": [256, 256]}, epochs=1), SINGLE)
    return str(out / "last.pt")


def _command(module: str, args: list[str], nproc: int | None) -> list[str]:
    if nproc:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", module, *args]
    return [sys.executable, "-m", module, *args]


def _kill_at_random_moment(cmd: list[str], h5: str, rng: random.Random, max_delay: float) -> int:
    """Start cmd in its own session, wait until it has written to its surface file, sleep a random time, then
    SIGKILL the whole process group."""
    started = time.time()
    proc = subprocess.Popen(cmd, env=cli_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = started + 120
    while proc.poll() is None and time.time() < deadline and not (
            os.path.exists(h5) and os.stat(h5).st_mtime > started):
        time.sleep(0.02)
    time.sleep(rng.uniform(0, max_delay))
    workers = _worker_pids(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    rc = proc.wait(timeout=30)
    _wait_gone(workers.values())  # torchrun workers die with their launcher (PR_SET_PDEATHSIG)
    return rc


def _alive(pid: int) -> bool:
    """Running, or a zombie leader whose other threads are still exiting (and may still hold files open)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z" or len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _wait_gone(pids, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while any(_alive(p) for p in pids):
        assert time.time() < deadline, "a worker outlived its killed launcher"
        time.sleep(0.02)


def _assert_flushed_points_are_right(h5: str, reference) -> int:
    s = read_surface(h5)  # must open cleanly after any kill
    for k, v in reference.values.items():
        np.testing.assert_array_equal(v[s.done], s.values[k][s.done], err_msg=k)
        rest, ref_rest = s.values[k][~s.done], v[~s.done]  # not done: empty, or written just before the mask
        assert (np.isnan(rest) | (rest == ref_rest)).all(), k
    return int(s.done.sum())


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [None, 2])
def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_file(slow_ckpt, tmp_path, nproc):
    ref = run_module("landscape.plot2d", slow_ckpt, *GRID, "--out", str(tmp_path / "ref"), nproc=nproc)
    assert ref.returncode == 0, ref.stderr
    name = "slow_run0_last_2d.h5"
    reference = read_surface(str(tmp_path / "ref" / name))
    h5 = str(tmp_path / "cut" / name)
    cmd = _command("landscape.plot2d", [slow_ckpt, *GRID, "--out", str(tmp_path / "cut")], nproc)
    rng = random.Random(1234 + (nproc or 1))
    done_counts = []
    for _ in range(2):  # the second kill lands on a file that a killed run left
        _kill_at_random_moment(cmd, h5, rng, max_delay=1.5)
        done_counts.append(_assert_flushed_points_are_right(h5, reference))
    assert done_counts == sorted(done_counts)  # never loses a flushed point
    final = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert f"{done_counts[-1]} already done" in final.stdout
    resumed = read_surface(h5)
    assert resumed.done.all()
    for k in reference.values:
        np.testing.assert_array_equal(reference.values[k], resumed.values[k], err_msg=k)


def _worker_pids(agent_pid: int) -> dict[int, int]:
    """rank -> pid of the workers torchrun started (read from /proc)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            out[int(env[b"RANK"])] = int(pid)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return out


@pytest.mark.slow
def test_when_one_rank_dies_the_others_exit_and_flushed_points_survive(slow_ckpt, tmp_path):
    h5 = str(tmp_path / "slow_run0_last_2d.h5")
    cmd = _command("landscape.plot2d", [slow_ckpt, *GRID, "--out", str(tmp_path)], 2)
    proc = subprocess.Popen(cmd, env=cli_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(h5) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        workers = _worker_pids(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        rc = proc.wait(timeout=120)  # torchrun stops the surviving rank; nobody hangs on a collective
        assert rc != 0
        _wait_gone(workers.values())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    s = read_surface(h5)
    assert 0 < s.done.sum() < s.done.size or s.done.all()
    final = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert read_surface(h5).done.all()


@pytest.mark.slow
def test_killed_trainer_resumes_and_never_leaves_a_partial_checkpoint(tmp_path):
    args = ["--dataset", "synthetic", "--data-kwargs", '{"n_train": 4096, "input_shape": [64]}', "--model-kwargs",
            '{"hidden": [256, 256]}', "--batch-size", "32", "--epochs", "6", "--no-progress", "--save-every", "1"]
    full = run_module("trainers.train", *args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    cmd = _command("trainers.train", [*args, "--out", str(out)], None)
    proc = subprocess.Popen(cmd, env=cli_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not os.path.exists(out / "epoch_0002.pt") and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for f in os.listdir(out):
        if f.endswith(".pt"):
            torch.load(out / f, weights_only=True)  # every file under a final name is complete
    resumed = run_module("trainers.train", *args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, request):
    """A folder with a good checkpoint, a finished surface and assorted broken files."""
    mlp_ckpt = request.getfixturevalue("mlp_ckpt")
    bn_ckpt = request.getfixturevalue("bn_ckpt")
    d = tmp_path_factory.mktemp("bad")
    res = run_module("landscape.plot2d", mlp_ckpt, "--x=-1:1:3", "--y=-1:1:3", "--out", str(d / "surf"),
                     "--no-progress", "--formats", "png")
    assert res.returncode == 0, res.stderr
    bn = run_module("landscape.plot2d", bn_ckpt, "--x=-1:1:3", "--y=-1:1:3", "--out", str(d / "bn"),
                    "--no-progress", "--formats", "png")
    assert bn.returncode == 0, bn.stderr
    raw = open(mlp_ckpt, "rb").read()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 3])
    ckpt = torch.load(mlp_ckpt, weights_only=True)
    ckpt["extra"] = np.float64  # a pickled global: refused under weights_only
    torch.save(ckpt, d / "pickled.pt")
    with h5py.File(d / "foreign.h5", "w") as f:
        f["data"] = np.arange(3)
    (d / "notes.txt").write_text("not a folder")
    (d / "fake.h5").write_text("not hdf5")
    from tests import userland

    torch.save({"model": {f"module.{k}": v for k, v in userland.make_mlp().state_dict().items()}}, d / "w.pt")
    torch.save({"epoch": 3, "lr": 0.1}, d / "nostate.pt")
    torch.save(userland.KeywordMLP().state_dict(), d / "kw.pt")
    return {"dir": d, "ckpt": mlp_ckpt, "bn_ckpt": bn_ckpt, "surf": str(d / "surf" / "mlp_run0_last_2d.h5"),
            "bn_surf": str(d / "bn" / "resnet_run0_last_2d.h5")}


CASES = [  # (module, argv template, words the error must contain)
    ("landscape.plot2d", ["{dir}/missing.pt"], "not found"),
    ("landscape.plot2d", ["{dir}/truncated.pt"], "truncated, corrupt"),
    ("landscape.plot2d", ["{dir}/pickled.pt"], "pickled"),
    ("landscape.plot2d", ["{ckpt}", "--x=-1:1:3", "--y=-1:1:3", "--directions", "{bn_surf}", "--out", "{dir}/o1"],
     "another model"),
    ("landscape.plot2d", ["{ckpt}", "--x=-2:2:3", "--y=-1:1:3", "--out", "{dir}/surf"], "another x grid"),
    ("landscape.plot2d", ["{ckpt}", "--x=-1:1:3", "--y=-1:1:3", "--seed", "9", "--out", "{dir}/surf"],
     "other directions"),
    ("landscape.plot2d", ["{ckpt}", "--x=-1:1:0"], "at least 2"),
    ("landscape.plot2d", ["{ckpt}", "--x=1:-1:5"], "below MAX"),
    ("landscape.plot2d", ["{ckpt}", "--x=a:b:c"], "MIN:MAX:NUM"),
    ("landscape.plot2d", ["{ckpt}", "--y=-1:1"], "MIN:MAX:NUM"),
    ("landscape.plot2d", ["{ckpt}", "--norm", "filtre"], "invalid choice: 'filtre'"),
    ("landscape.plot2d", ["{ckpt}", "--points-per-pass", "0", "--out", "{dir}/o4"], "--points-per-pass must be"),
    ("landscape.plot2d", ["{ckpt}", "--compile", "--points-per-pass", "4", "--out", "{dir}/o5"], "pick one"),
    ("trainers.train", ["--model", "resnet21", "--out", "{dir}/t1"], "unknown model"),
    ("trainers.train", ["--dataset", "cifar11", "--out", "{dir}/t2"], "invalid choice: 'cifar11'"),
    ("trainers.train", ["--dataset", "text", "--model", "transformer", "--out", "{dir}/t_text"], "needs the file"),
    ("trainers.train", ["--dataset", "tokens", "--data-kwargs", '{{"path": "{dir}"}}', "--model", "transformer",
                        "--out", "{dir}/t_tok"], "no *train*.bin"),
    ("trainers.train", ["--dataset", "grammar", "--data-kwargs", '{{"seq_len": 999999}}', "--model", "transformer",
                        "--out", "{dir}/t_len"], "too few for one window"),
    ("landscape.plot2d", ["{ckpt}", "--samples", "0", "--out", "{dir}/o2"], "--samples must be >= 1"),
    ("landscape.plot2d", ["{ckpt}", "--samples", "100000", "--out", "{dir}/o3"], "size of the"),
    ("trainers.train", ["--dataset", "cifar10", "--data-dir", "{dir}/nodata", "--out", "{dir}/t3"], "--download"),
    ("landscape.plot2d", ["{ckpt}", "--out", "{dir}/notes.txt/sub"], "writable --out"),
    ("trainers.train", ["--out", "{dir}/notes.txt/sub"], "writable --out"),
    ("landscape.plot2d", ["{dir}/foreign.h5"], "not a landscape surface"),
    ("landscape.plot2d", ["{dir}/fake.h5"], "not a readable HDF5"),
    ("landscape.plot1d", ["{surf}"], "2D surface"),
    ("trainers.train", ["--batch-size", "0", "--out", "{dir}/t4"], "--batch-size"),
    ("trainers.train", ["--epochs", "x", "--out", "{dir}/t5"], "invalid int"),
    ("trainers.train", ["--dataset", "synthetic", "--data-kwargs", '{{"n_trian": 64}}', "--out", "{dir}/t6"],
     "does not take these options"),
    ("trainers.train", ["--model-kwargs", '{{"hiden": [8]}}', "--out", "{dir}/t7"], "rejected its arguments"),
    ("landscape.plot2d", ["{ckpt}", "--loss-max", "nan", "--out", "{dir}/o6"], "--loss-max must be a finite"),
    # large-batch remedies
    ("trainers.train", ["--dataset", "synthetic", "--model-kwargs", '{{"batchnorm": true}}', "--batch-size", "64",
                        "--ghost-batch-size", "24", "--out", "{dir}/g1"], "does not divide the micro-batch of 64"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--ghost-batch-size", "16",
                        "--out", "{dir}/g2"], "needs BatchNorm layers"),
    ("trainers.train", ["--ghost-batch-size", "0", "--out", "{dir}/g3"], "--ghost-batch-size must be >= 1"),
    ("trainers.train", ["--dataset", "synthetic", "--regime-adaptation", "--base-batch-size", "100000",
                        "--out", "{dir}/g4"], "has no steps to match"),
    ("trainers.train", ["--sam", "0", "--out", "{dir}/g5"], "--sam must be > 0"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--sam", "0.05", "--sam-m", "24",
                        "--out", "{dir}/g6"], "--sam-m 24 does not divide the micro-batch"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16", "--batch-ramp",
                        "16:5", "--epochs", "3", "--out", "{dir}/g7"], "make the ramp shorter than the run"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--batch-ramp", "16:1", "--epochs", "3",
                        "--out", "{dir}/g8"], "multiple of the micro-batch x ranks (64)"),
    ("trainers.train", ["--batch-ramp", "16", "--out", "{dir}/g9"], "give START:EPOCHS"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16", "--scale-lr",
                        "--batch-schedule", "32:0,16:1,64:2", "--out", "{dir}/s1"], "must both increase"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16", "--scale-lr",
                        "--batch-schedule", "24:0,64:1", "--out", "{dir}/s2"], "24 is not a whole number of micro"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16",
                        "--batch-schedule", "16:0,64:1", "--out", "{dir}/s3"], "give --scale-lr"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16", "--scale-lr",
                        "--batch-schedule", "16:0,32:1", "--out", "{dir}/s4"], "must be --batch-size (64)"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16", "--scale-lr",
                        "--batch-schedule", "16:1,64:2", "--out", "{dir}/s5"], "must start at epoch 0"),
    ("trainers.train", ["--batch-schedule", "16-0", "--scale-lr", "--out", "{dir}/s6"], "give BATCH:EPOCH stages"),
    ("trainers.train", ["--dataset", "synthetic", "--batch-size", "64", "--micro-batch-size", "16", "--scale-lr",
                        "--batch-schedule", "16:0,64:5", "--epochs", "3", "--out", "{dir}/s7"],
     "start every stage within the run"),
    # a user's own model, data and metric (tests/userland.py)
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.nomodule:make", "--data", "tests.userland:loader",
                          "--out", "{dir}/u1"], "cannot import"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:not_a_model", "--data", "tests.userland:loader",
                          "--out", "{dir}/u2"], "not a torch.nn.Module"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:make_mlp", "--model-kwargs", '{{"width": 4}}',
                          "--data", "tests.userland:loader", "--out", "{dir}/u3"], "do not fit the model"),
    ("landscape.plot2d", ["{dir}/nostate.pt", "--model", "tests.userland:make_mlp", "--data", "tests.userland:loader",
                          "--out", "{dir}/u4"], "no state dict"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:make_mlp", "--out", "{dir}/u5"],
     "--model needs --data"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:make_mlp", "--data", "tests.userland:nothing",
                          "--out", "{dir}/u6"], "not a data source"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:make_mlp", "--data",
                          "tests.userland:empty_batches", "--out", "{dir}/u7"], "no samples"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:make_mlp", "--data", "tests.userland:loader",
                          "--metric", "tests.userland:not_a_metric", "--out", "{dir}/u8"], "returned float"),
    ("landscape.plot2d", ["{dir}/w.pt", "--model", "tests.userland:make_mlp", "--data", "tests.userland:loader",
                          "--metric", "tests.userland:countless", "--out", "{dir}/u9"], "without 'count'"),
    ("landscape.plot2d", ["{dir}/kw.pt", "--model", "tests.userland:KeywordMLP", "--data",
                          "tests.userland:unlabelled", "--out", "{dir}/u10"], "no labels"),
    ("landscape.plot2d", ["{ckpt}", "--params", "blocks.*.attn.*", "--out", "{dir}/u11"], "matches no tensor"),
    ("landscape.plot2d", ["{ckpt}", "--metric", "hinge", "--out", "{dir}/u12"], "is not one of"),
    ("landscape.plot2d", ["{ckpt}", "--x", "auto:1", "--out", "{dir}/u13"], "auto:NUM"),
    # the toolbox: planes, trajectories, BatchNorm re-estimation, Hessian maps and directions, exports
    ("landscape.plot2d", ["{ckpt}", "--plane", "{ckpt}", "--out", "{dir}/p1"], "two checkpoints"),
    ("landscape.plot2d", ["{ckpt}", "--plane", "{ckpt}", "{ckpt}", "--out", "{dir}/p2"], "the same weights"),
    ("landscape.plot2d", ["{ckpt}", "--plane", "{bn_ckpt}", "{ckpt}", "--out", "{dir}/p3"], "same architecture"),
    ("landscape.plot2d", ["{ckpt}", "--edges", "--out", "{dir}/p4"], "give --plane B C"),
    ("landscape.plot2d", ["{ckpt}", "--plane-points", "1", "--out", "{dir}/p5"], "--plane-points must be"),
    ("landscape.plot2d", ["{ckpt}", "--bn-recalibrate", "2", "--out", "{dir}/b1"], "no BatchNorm"),
    ("landscape.plot2d", ["{ckpt}", "--bn-recalibrate", "0", "--out", "{dir}/b2"], "--bn-recalibrate must be"),
    ("landscape.plot2d", ["{ckpt}", "--directions", "hessian", "--dir-type", "states", "--out", "{dir}/h1"],
     "parameters only"),
    ("landscape.trajectory", ["{dir}/surf", "--out", "{dir}/r1"], "no epoch_*.pt"),
    ("landscape.trajectory", ["{ckpt}", "{ckpt}", "--out", "{dir}/r2"], "at least 3 checkpoints"),
    ("landscape.hessian_map", ["{ckpt}", "--x", "auto", "--out", "{dir}/m1"], "axes given"),
    ("landscape.sharpness", ["{dir}/missing.pt", "--out", "{dir}/s1"], "not found"),
    ("landscape.sharpness", ["{ckpt}", "--measures", "flatness"], "invalid choice"),
    ("landscape.sharpness", ["{ckpt}", "--eps", "0", "--out", "{dir}/s2"], "--eps must be a positive number"),
    ("landscape.sharpness", ["{ckpt}", "--draws", "1", "--out", "{dir}/s3"], "--draws must be >= 2"),
    ("landscape.sharpness", ["{ckpt}", "--params", "nothing.*", "--out", "{dir}/s4"], "matches no tensor"),
    ("landscape.sharpness", ["{ckpt}", "--samples", "64", "--data-subsets", "65", "--out", "{dir}/s5"],
     "more than the 64 samples measured allow"),
    ("landscape.sharpness", ["{ckpt}", "--data-subsets", "1", "--out", "{dir}/s6"], "--data-subsets must be >= 2"),
    ("landscape.sharpness", ["{ckpt}", "--curvature", "fisher", "--metric", "tests.userland:margin",
                             "--measures", "lambda_max", "--samples", "32", "--out", "{dir}/s7"],
     "predictive distribution: cross_entropy"),
    ("landscape.sharpness", ["{ckpt}", "--curvature", "ggn", "--metric", "tests.userland:inputs_only",
                             "--measures", "lambda_max", "--samples", "32", "--out", "{dir}/s8"],
     "does not depend on the model's outputs"),
    ("landscape.export", ["{surf}"], "say what to write"),
    ("landscape.export", ["{surf}", "--vtp", "--metric", "nope"], "no metric 'nope'"),
    ("landscape.export", ["{dir}/missing.h5", "--html"], "not found"),
]


@pytest.mark.parametrize("module, argv, words", CASES,
                         ids=[f"{c[0].split('.')[1]}-{' '.join(c[1])[:40]}" for c in CASES])
def test_bad_input_gives_one_line_nonzero_exit_and_changes_nothing(bad_inputs, capsys, module, argv, words):
    argv = [a.format(**bad_inputs) for a in argv]
    before = tree_digest(bad_inputs["dir"])
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in err
    after = tree_digest(bad_inputs["dir"])
    assert {p: h for p, h in after.items() if p in before} == before  # nothing that existed changed


@pytest.mark.parametrize("bug", [ValueError("an invariant of ours broke"), KeyError("state"), TypeError("x")])
def test_a_bug_of_ours_keeps_its_traceback(bug):
    """Only UserError (raised on purpose where the input enters) becomes one line; anything else propagates."""
    def main(argv):
        raise bug

    with pytest.raises(type(bug)):
        run_cli(main, [])


def test_a_peer_that_went_away_is_one_line_and_status_1_and_other_runtime_errors_keep_their_traceback(capsys):
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:29314. This is typically caused by a remote worker crashing.")

    def main(argv):
        raise gloo

    with pytest.raises(SystemExit) as stop:
        run_cli(main, [])
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        "[rank 0] error: another process of this job stopped (Connection closed by peer [127.0.0.1]:29314); what "
        "was flushed or saved is kept: rerun the same command to resume (the trainer with --resume)\n")

    def bug(argv):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        run_cli(bug, [])


@pytest.mark.slow
def test_bad_input_in_a_real_process_has_no_traceback(bad_inputs):
    res = run_module("landscape.plot2d", str(bad_inputs["dir"] / "truncated.pt"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_non_finite_points_are_stored_and_plotted(mlp_ckpt, tmp_path):
    from landscape.base.config import SurfaceConfig
    from landscape.base.figure_config import PlotConfig
    from landscape.output import render
    from landscape.pipelines.from_checkpoint import run_surface

    far = run_surface(SurfaceConfig(mlp_ckpt, out=str(tmp_path), x="-1e6:1e6:3", y="-1e6:1e6:3", norm="none",
                                    ignore="none", progress=False), SINGLE)
    s = read_surface(far.path)
    assert s.done.all()
    assert not np.isfinite(s.values["train_loss"]).all() or s.values["train_loss"].max() > 1e3
    files = render.render_2d(s, str(tmp_path / "far"), PlotConfig(formats=("png",)))
    assert len(files) == 16
