"""Process-group setup under torchrun (NCCL on CUDA, gloo on CPU), rank helpers and the few collectives we use.

Launch examples:  torchrun --standalone --nproc_per_node=2 -m landscape.plot2d CKPT
                  torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:29500 --nproc_per_node=8 -m trainers.train ...
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from landscape.base.config import DEVICES, check_choice
from landscape.base.errors import ConfigError, UserError, error_message
from landscape.base.flags import check_writable
from landscape.base.locks import one_writer

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def is_torchrun() -> bool:
    """True when torchrun (or another launcher) set the env:// rendezvous variables."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' is cuda:<local_rank> when CUDA is present, else cpu; 'cpu' and 'cuda' force one."""
    check_choice(device, DEVICES, "--device")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available: use --device cpu")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {local_rank} needs cuda:{local_rank}, but {torch.cuda.device_count()} GPU(s) "
                          "are visible: start at most that many processes per node, or pass --device cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Join the torchrun process group if there is one; otherwise describe a single process.

    One device per rank (cuda:LOCAL_RANK, set before init_process_group), NCCL for CUDA and gloo for CPU.
    The timeout bounds how long surviving ranks wait on a collective when a peer has died.
    """
    if not is_torchrun():
        return DistInfo(0, 0, 1, resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    _die_with_launcher()
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, local_rank, world_size, dev)


def _die_with_launcher() -> None:
    """Under torchrun, ask Linux to SIGKILL this worker when the launcher dies.

    torchrun starts each worker in a session of its own, so a SIGKILL of torchrun (or of its process group)
    would otherwise leave the workers running: rank 0 would keep the HDF5 file locked and a rerun would be
    refused. With this, killing the launcher stops the whole job, and a rerun resumes from the flushed points.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before we asked
        os._exit(1)


def cleanup_distributed() -> None:
    """Destroy the process group; on a normal exit, after a barrier. A gloo rank that tears down while its peer
    is still finishing can make the peer abort at exit (SIGABRT, "terminate called without an active
    exception": 5 of 33 two-process Hessian runs here, 0 of 33 with the barrier). Called while an exception
    is propagating, it skips the barrier, which a failed peer would never reach."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None and _several_ranks():
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo]:
    """A command's session: the torchrun process group (or this process alone) for the length of the block,
    destroyed on the way out, after a barrier unless an exception is leaving the block.

        with process_group(cfg.device) as info:
            run_surface(cfg, info)
    """
    info = init_distributed(device)
    try:
        yield info
    finally:
        cleanup_distributed()


def _several_ranks() -> bool:
    """A process group with more than one rank: collectives have something to do."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def print0(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only (rank read from the environment, so it works before and after init)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks; a no-op in a single process."""
    if _several_ranks():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """In-place MIN across ranks; a no-op in a single process."""
    if _several_ranks():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """rank `src`'s Python object on every rank (pickled by torch.distributed; our own data only)."""
    if not _several_ranks():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[[], T], info: DistInfo) -> T | None:
    """Run fn() on rank 0 alone and return its result there (None on the other ranks); if it raises, every rank
    raises. Rank 0 alone touches files; without this, a refusal on rank 0 would leave the other ranks waiting
    in the next collective until the timeout.
    """
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as exc:  # re-raised below on every rank, after the others are told
            error = exc
    shared_error = broadcast_object(_portable(error) if info.is_distributed else error)
    if info.is_main and error is not None:
        raise error  # the original, with its traceback
    if shared_error is not None:
        raise shared_error
    return result


@contextlib.contextmanager
def exclusive_output(folder: str, info: DistInfo, stem: str | None = None, what: str = "--out") -> Iterator[None]:
    """The block as the one writer of `folder` (or of its output `stem`): rank 0 creates the folder, checks that
    it is writable and takes its lock (landscape.base.locks), held until the block ends; when another process
    holds it, every rank raises the one-line refusal that names that process, before any work."""
    with contextlib.ExitStack() as stack:
        def take() -> None:
            check_writable(folder)
            stack.enter_context(one_writer(folder, stem, what))

        run_on_main(take, info)
        yield


def _portable(exc: BaseException | None) -> BaseException | None:
    """An exception that survives pickling to another rank: keep the type for ours, else wrap the text."""
    if exc is None:
        return None
    if isinstance(exc, (UserError, ValueError, KeyError)):
        return type(exc)(error_message(exc))
    return RuntimeError(f"{type(exc).__name__} on rank 0: {error_message(exc)}")
