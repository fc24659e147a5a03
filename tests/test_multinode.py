"""Several machines, played on this one: two torchrun launchers (--nnodes=2, one worker each) meeting through a
c10d rendezvous on 127.0.0.1, as two hosts meet through one of them; and what happens when one of them dies."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from landscape.core.surface_file import read_surface
from tests.conftest import PLOT2D_ARGS, TRAIN_ARGS, cli_env, run_module

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(module: str, *args: str, nodes: int = 2) -> list[subprocess.Popen]:
    """One torchrun launcher per "node", each in a process group of its own (a machine that can die alone)."""
    rdzv = [f"--nnodes={nodes}", "--nproc_per_node=1", "--rdzv-backend=c10d", "--rdzv-id=test",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1", "--max-restarts=0"]
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rdzv, "-m", module, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                             start_new_session=True) for _ in range(nodes)]


def finish(nodes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    out = []
    for p in nodes:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def test_two_nodes_equal_one_process_for_plot2d_and_the_trainer(mlp_ckpt, plot2d_one, train_one, tmp_path):
    nodes = {"plot2d": start_nodes("landscape.plot2d", mlp_ckpt, *PLOT2D_ARGS, "--out", str(tmp_path / "surface")),
             "train": start_nodes("trainers.train", *TRAIN_ARGS, "--out", str(tmp_path / "run"))}
    for name, launched in nodes.items():
        for rc, _, stderr in finish(launched):
            assert rc == 0, f"{name}: {stderr[-3000:]}"

    a = read_surface(os.path.join(plot2d_one, "mlp_run0_last_2d.h5"))
    b = read_surface(str(tmp_path / "surface" / "mlp_run0_last_2d.h5"))
    assert b.done.all()
    for k in a.values:
        np.testing.assert_allclose(b.values[k], a.values[k], rtol=1e-7, err_msg=k)
    two = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    ref = torch.load(train_one, weights_only=True)
    assert two["plan"]["world_size"] == 2
    assert two["state_dict"].keys() == ref["state_dict"].keys()
    for k, v in ref["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][k], v, atol=1e-5, rtol=1e-5, msg=k)


def test_when_a_node_dies_the_other_exits_at_once_and_a_rerun_resumes(mlp_ckpt, tmp_path):
    """A whole node dies (its launcher killed; its worker follows): the surviving node's worker exits within
    seconds with one line saying why, rank 0's flushed points are in the file, and rerunning resumes from them."""
    args = [mlp_ckpt, "--x=-1:1:51", "--y=-1:1:51", "--no-progress", "--formats", "png", "--device", "cpu",
            "--flush-seconds", "0.2", "--out", str(tmp_path)]
    h5 = tmp_path / "mlp_run0_last_2d.h5"
    nodes = start_nodes("landscape.plot2d", *args)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and flushed(h5) < 100:
            time.sleep(0.1)
        assert flushed(h5) >= 100, "the surface did not start"
        os.killpg(nodes[1].pid, signal.SIGKILL)
        killed = time.time()
        rc, _, stderr = finish(nodes[:1], timeout=120)[0]
        waited = time.time() - killed
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert rc != 0 and waited < 60, (rc, waited)
    # The surviving worker says in one line that its peer went away; or, when the dead node hosted the rendezvous
    # store, the surviving launcher notices first and stops its worker.
    assert re.search(r"^\[rank [01]\] error: another process of this job stopped \(.*by peer.*\); .* rerun the same "
                     "command to resume", stderr, re.M) or "RendezvousConnectionError" in stderr, stderr[-3000:]
    kept = read_surface(str(h5))
    assert 0 < kept.done.sum() < kept.done.size
    rerun = run_module("landscape.plot2d", *args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"computed {kept.done.size - kept.done.sum()} of {kept.done.size} points ({kept.done.sum()} already " \
           "done)" in rerun.stdout
    assert read_surface(str(h5)).done.all()


def flushed(h5) -> int:
    """Points marked done in a surface file that another process is writing (0 before it exists)."""
    try:
        with h5py.File(h5, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0
