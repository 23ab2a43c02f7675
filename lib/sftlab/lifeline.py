"""Child processes that die with whoever started them: no trainer outlives its runner or its kernel.

    Popen(command, preexec_fn=lifeline.parent_death_signal(signal.SIGTERM), env={**env, **lifeline.launcher_env()})
    lifeline.die_with_launcher()      # first thing in a child process of ours (the training script)

The chain of a training run: `sftlab run` -> the notebook kernel (its own session; ipykernel exits within
a second of its parent's death) -> the torchrun agent (its own session) -> the workers (each in a session
of its own, started by the agent). A kill of the runner's process group reaches none of the last three
directly, so each link ties itself to the one before:

- the agent gets a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`, set between fork and exec):
  SIGTERM when the kernel (or any process that launched it) dies, and torchrun's own handler then
  stops its workers;
- each worker (`die_with_launcher`, under torchrun only) gets SIGKILL when the agent dies, and a daemon
  thread polls the launcher's pid (`SFTLAB_LAUNCHER_PID`, set by `launcher_env`) once a second and ends
  the worker when that process is gone: the portable fallback, and a cover for a launcher that died
  before the worker started.

Only processes started by sftlab's launch are tied this way: a training script started by hand from a
shell (`nohup python -m sftlab.train ...`) is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Callable

LAUNCHER_ENV = "SFTLAB_LAUNCHER_PID"  # the pid of the process that launched the training (e.g. the kernel)
_PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def _prctl():
    """libc's prctl, resolved before any fork (nothing is looked up in a freshly forked child); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets `sig` when this process dies (Linux; None elsewhere).

    The signal is tied to the forking *thread*: call Popen from a thread that lives as long as the child
    should (the stage streams the child's output on the thread that started it, so it does)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: the signal will never come
            os._exit(1)

    return preexec


def launcher_env() -> dict[str, str]:
    """Environment for a launched child: who launched it, for `die_with_launcher` in its workers."""
    return {LAUNCHER_ENV: str(os.getpid())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that pid: it exists
        return True
    return True


def die_with_launcher() -> None:
    """In a torchrun worker: die with the agent (SIGKILL on its death, Linux) and with the process that
    launched the training (`SFTLAB_LAUNCHER_PID`, polled). Does nothing outside torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    prctl = _prctl()
    if prctl is not None:
        agent = os.getppid()
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if agent == 1:  # already orphaned: the agent died before this process got here
            _stop("the torchrun agent is gone")
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher and launcher.isdigit():
        _watch(int(launcher))


def _watch(pid: int) -> None:
    if not alive(pid):
        _stop(f"the process that launched the training (pid {pid}) is gone")

    def poll() -> None:
        while alive(pid):
            time.sleep(POLL_S)
        _stop(f"the process that launched the training (pid {pid}) is gone")

    threading.Thread(target=poll, name="sftlab-lifeline", daemon=True).start()


def _stop(reason: str) -> None:
    print(f"[sftlab] stopping: {reason}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
