"""One writer per output: an exclusive `fcntl.flock` on a lock file in the output folder, taken before any work
and held while the command writes. The kernel releases it when the holder's process dies, so a kill never leaves a
stale lock; the file records who holds it (pid, host, command, since when), so a refusal can name the writer."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator

from landscape.base.errors import UserError

LOCK_FILE = ".writer.lock"  # in the folder it guards

_held: dict[str, int] = {}  # lock file (real path) -> depth: a process that holds a lock takes it again freely


def lock_path(folder: str, stem: str | None = None) -> str:
    """The lock file of an output folder, or of one output (`stem`) in it when several writers may share it."""
    return os.path.join(folder, LOCK_FILE if stem is None else f".{stem}.lock")


def holder_of(path: str) -> str:
    """Who holds the lock at `path`, as its file says: 'pid 123 on host h (python -m trainers.train, since ...)'."""
    try:
        with open(path) as f:
            who = json.load(f)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["since"]))
        return f"pid {who['pid']} on host {who['host']} ({who['command']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its name yet)"


@contextlib.contextmanager
def one_writer(folder: str, stem: str | None = None, what: str = "--out") -> Iterator[str]:
    """Hold the lock of `folder` (or of output `stem` in it) for the block; yield the lock file's path.

    Refused in one line naming the writer that holds it. The folder must exist. Re-entrant within a process."""
    path = os.path.realpath(lock_path(folder, stem))
    if path in _held:
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    fd = _acquire(path, folder, stem, what)
    _held[path] = 1
    try:
        yield path
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            os.remove(path)  # while still locked: a process waiting on the old file retries on the new one
        os.close(fd)


def _acquire(path: str, folder: str, stem: str | None, what: str) -> int:
    """Open and lock the lock file; retried when its holder removed it between our open and our lock."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot create the lock file {path} ({exc.strerror}); choose a writable {what}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {path} ({exc.strerror}); choose a {what} on a local disk") from None
            target = folder if stem is None else os.path.join(folder, stem)
            raise UserError(f"{target} is being written by {holder_of(path)}; wait for it to finish, or give "
                            f"another {what}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder had just removed: take the new one
    who = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": _command()}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(who) + "\n").encode())
    return fd


def _command() -> str:
    """This process's command line, shortened: 'python -m trainers.train --out runs/a ...'."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else os.path.basename(sys.argv[0] or "python")
    text = " ".join([head, *sys.argv[1:]])
    return text if len(text) <= 120 else text[:117] + "..."
