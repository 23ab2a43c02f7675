"""One trainer per experiment: `outputs/<exp>/train.lock` (ExperimentLayout.train_lock).

    lock = train_lock.acquire(layout.train_lock(), layout.root, echo)   # raises TrainLocked if held
    ...                                                                 # the agent inherits lock.fd
    lock.release()

The lock is an exclusive `flock` on the file, and the file names its holder (JSON: pid, host, started,
command, runner pid, experiment folder). The operating system drops a flock when the last process
holding it ends, however it ends, so a lock left by a killed trainer is stale by construction: the next
run takes it over and says whose it was. The torchrun agent inherits the descriptor, so the experiment
stays locked for as long as any process of the run is alive, even after its kernel died.

Stale or not, decided in this order:
- the flock is held: refused (TrainLocked names the holder);
- the file names another experiment folder: a copy (`cp -r`, tar) made while it trained: stale;
- the file names this host: nobody holds the flock, so its holder is gone: stale;
- another host (a shared filesystem): its flocks may not be visible here, so the holder's heartbeat
  decides (the holder touches the file every HEARTBEAT_S): fresh -> refused, older than STALE_S -> stale;
- a filesystem without locks (flock fails): this host -> the pid (and its start time) alive or not;
  another host -> the heartbeat, as above.

A process that already holds the lock gets it again (planning twice in one kernel is not a second
trainer). Released: the file is removed, then the flock dropped.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sftlab.clock import utc_now
from sftlab.lifeline import alive
from sftlab.errors import SftlabError

HEARTBEAT_S = 30.0
STALE_S = 120.0  # a lock of another host whose heartbeat is older than this is taken over


class TrainLocked(SftlabError, RuntimeError):
    """Another trainer holds the experiment; the message names it (pid, host, since when, command)."""


@dataclass
class TrainLock:
    path: Path
    fd: int
    holder: dict
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def release(self) -> None:
        """Remove the lock file and drop the flock (a no-op when already released)."""
        if _held.get(str(self.path)) is not self:
            return
        del _held[str(self.path)]
        self._stop.set()
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if _same_file(self.fd, self.path):
                    os.utime(self.path)
            except OSError:
                pass


_held: dict[str, TrainLock] = {}  # path -> the lock this process holds


def acquire(path: Path, experiment_dir: Path, echo: Callable[[str], None] = print) -> TrainLock:
    """Take the experiment's train lock, taking over a stale one (said through `echo`); raise
    TrainLocked when a live trainer holds it."""
    path = Path(path)
    if str(path) in _held:
        return _held[str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):  # a holder may remove the file between our open and our flock: open it again
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd)
        except TrainLocked:
            os.close(fd)
            raise TrainLocked(_refusal(path, _read(path, retries=5), "it holds the lock")) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)
    else:
        raise TrainLocked(f"{path}: could not take the train lock (the file keeps being replaced)")
    try:
        previous = _read(path)
        if previous:
            _judge_previous(path, previous, experiment_dir, locked, echo)
        holder = _me(experiment_dir)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, indent=2) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    lock = TrainLock(path, fd, holder)
    _held[str(path)] = lock
    threading.Thread(target=lock._beat, name="sftlab-train-lock", daemon=True).start()
    return lock


def release(path: Path) -> None:
    """Release the lock at `path` if this process holds it."""
    lock = _held.get(str(Path(path)))
    if lock is not None:
        lock.release()


def _flock(fd: int) -> bool:
    """True: locked. False: this filesystem has no locks (decide by pid and heartbeat). Raises TrainLocked
    when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise TrainLocked() from None
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise


def _judge_previous(path: Path, previous: dict, experiment_dir: Path, locked: bool,
                    echo: Callable[[str], None]) -> None:
    """Raise TrainLocked if the holder the file names may still be training; else say it is taken over."""
    heartbeat_age = time.time() - path.stat().st_mtime
    copied = previous.get("experiment") not in (None, str(experiment_dir))
    this_host = previous.get("host") == socket.gethostname()
    if copied:
        why = f"it was copied from {previous.get('experiment')}"
    elif this_host and locked:
        why = "that process no longer holds it"
    elif this_host:
        if _holder_alive(previous):
            raise TrainLocked(_refusal(path, previous, "it is alive"))
        why = "that process is gone"
    elif heartbeat_age < STALE_S:
        raise TrainLocked(_refusal(path, previous, f"its heartbeat is {heartbeat_age:.0f} s old; a lock of "
                                                   f"another host is taken over after {STALE_S:.0f} s without one"))
    else:
        why = f"no heartbeat for {heartbeat_age:.0f} s"
    echo(f"[sftlab] taking over a stale train lock: {describe(previous)}; {why} ({path})")


def describe(holder: dict) -> str:
    """'pid 123 on host h since 2026-01-01 10:00:00 UTC (sftlab run params/demo.yaml, runner pid 120)'"""
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('started', '?')}"
    details = [holder["command"]] if holder.get("command") else []
    if holder.get("runner_pid"):
        details.append(f"runner pid {holder['runner_pid']}")
    return text + (f" ({', '.join(details)})" if details else "")


def _refusal(path: Path, holder: dict | None, why: str) -> str:
    experiment = path.parent
    if not holder:
        return (f"{experiment} is being trained by another process (the lock {path} holds no details yet); "
                f"wait for it to finish or stop it")
    stop = holder.get("runner_pid") or holder.get("pid")
    return (f"{experiment} is being trained by {describe(holder)}: {why}. Wait for it to finish, or stop it "
            f"(kill {stop}) and run again; a second trainer would race it on the same checkpoints. Lock: {path}")


def _read(path: Path, retries: int = 0) -> dict | None:
    """The holder the lock file names; None if empty or unreadable (a holder may be writing it)."""
    for attempt in range(retries + 1):
        try:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        if attempt < retries:
            time.sleep(0.1)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _me(experiment_dir: Path) -> dict:
    runner = os.getppid() if os.environ.get("SFTLAB_RUN") else None  # a kernel started by `sftlab run`
    command = _cmdline(runner) if runner else None
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": utc_now(),
            "command": command or _readable(sys.argv), "runner_pid": runner if command else None,
            "pid_start": _start_ticks(os.getpid()), "experiment": str(experiment_dir)}


def _holder_alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or not alive(pid):
        return False
    recorded = holder.get("pid_start")
    return recorded is None or _start_ticks(pid) in (None, recorded)  # a reused pid is another process


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot; Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return None
    return _readable(argv) if argv else None


def _readable(argv: list[str]) -> str:
    """`python /x/.venv/bin/sftlab run a.yaml` -> `sftlab run a.yaml`."""
    argv = list(argv)
    if len(argv) > 1 and Path(argv[0]).name.startswith("python") and not argv[1].startswith("-"):
        argv = argv[1:]
    if argv:
        argv[0] = Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv)
