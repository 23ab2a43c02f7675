"""Progress of the long loops (generating, judging, polling a batch), readable wherever a stage runs.

    with progress.bar(64, "infer checkpoint-60", unit="sample", initial=8) as bar:
        bar.update(16)

Under `sftlab run` (SFTLAB_RUN is set in the kernel), the terminal sees a stage's output only as text,
through papermill's log, and a tqdm widget's updates never reach it (the terminal used to show `0%` and
then nothing for minutes). There, and wherever SFTLAB_PROGRESS=text, `bar` prints plain lines:

    infer checkpoint-60: 24/64 samples (38%), 1.3 samples/s, 18s elapsed, ETA 31s

one at the start, then at most one every `every_s` seconds (EVERY_S: 10, or SFTLAB_PROGRESS_EVERY_S),
also while nothing moves (one slow batch: a heartbeat thread), and one at the end. Elsewhere (a notebook
opened by hand, a script in a terminal) it is tqdm.auto's bar: a widget in Jupyter. SFTLAB_PROGRESS=bar
forces the bar.

A long step with nothing to count (loading a model, the label audit, starting a server) says what it
does instead, and in text mode keeps saying it:

    with progress.step("infer checkpoint-60: loading outputs/demo/train/checkpoint-60"):
        engine = make_engine(path)

prints `[sftlab] infer checkpoint-60: loading ...` at once, `...: still running, 20s` every `every_s`
seconds (text mode only) and `...: done in 25s` when it took longer than that.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Callable

from sftlab import record

PROGRESS_ENV = "SFTLAB_PROGRESS"  # text | bar; default: text under `sftlab run`, else the bar
EVERY_ENV = "SFTLAB_PROGRESS_EVERY_S"
# At most one line per this many seconds, and at least one (the heartbeat); keep it well under 30.
EVERY_S = float(os.environ.get(EVERY_ENV, "10"))
MIN_BEAT_S = 1.0  # heartbeat lines never come faster than this (every_s=0: a line per update, not a flood)


def text_mode() -> bool:
    choice = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if choice in ("text", "bar"):
        return choice == "text"
    return record.current_run() is not None


def bar(total: int | None, desc: str, unit: str = "it", initial: int = 0, leave: bool = True,
        disable: bool = False, every_s: float = EVERY_S):
    """A progress bar for `total` units: `TextProgress` lines under the runner, else tqdm.auto's bar.
    Both take update(n), set_postfix_str(s), n = value + refresh(), close(), and `with`."""
    if text_mode():
        return TextProgress(total, desc, unit, initial=initial, every_s=every_s, disable=disable)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=disable)


@contextlib.contextmanager
def step(text: str, every_s: float = EVERY_S, echo: Callable[[str], None] | None = None):
    """Announce a long step without counts; in text mode, a line every `every_s` seconds while it runs."""
    echo = echo or (lambda line: print(line, flush=True))
    echo(f"[sftlab] {text}")
    started, finished = time.monotonic(), threading.Event()

    def beat() -> None:
        while not finished.wait(max(every_s, MIN_BEAT_S)):
            echo(f"[sftlab] {text}: still running, {duration(time.monotonic() - started)}")

    thread = None
    if text_mode():
        thread = threading.Thread(target=beat, daemon=True, name="sftlab-progress-step")
        thread.start()
    try:
        yield
    finally:
        finished.set()
        if thread is not None:
            thread.join()
        elapsed = time.monotonic() - started
        if elapsed >= every_s:
            echo(f"[sftlab] {text}: done in {duration(elapsed)}")


class TextProgress:
    """Plain progress lines with counts, rate and ETA (see the module docstring)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 every_s: float = EVERY_S, disable: bool = False, echo: Callable[[str], None] | None = None):
        self.total, self.desc, self.unit, self.initial = total, desc, unit, initial
        self.n = initial
        self.every_s = every_s
        self.postfix = ""
        self.disable = disable
        self._echo = echo or (lambda line: print(line, file=sys.stdout, flush=True))
        self._lock = threading.Lock()
        self._started = self._last = time.monotonic()
        self._closed = threading.Event()
        if disable:
            return
        self._print(self.line())
        self._heartbeat = threading.Thread(target=self._beat, daemon=True, name=f"sftlab-progress-{desc}")
        self._heartbeat.start()

    # tqdm's interface, as far as sftlab uses it
    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh(due_only=True)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def refresh(self, due_only: bool = True) -> None:
        if self.disable or self._closed.is_set():
            return
        if not due_only or time.monotonic() - self._last >= self.every_s:
            self._print(self.line())

    def close(self) -> None:
        if self.disable or self._closed.is_set():
            return
        self._print(self.line(final=True), final=True)

    def __enter__(self) -> "TextProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the text
    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self._started
        done = self.n - self.initial  # units of this run: the rate and ETA count only these
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{count} {self.unit}s"]
        if self.total:
            parts[0] += f" ({self.n / self.total:.0%})"
        if done > 0 and elapsed > 0:
            parts.append(rate_text(done / elapsed, self.unit))
        if not final:
            parts.append(f"{duration(elapsed)} elapsed")
        else:
            finished = self.total is None or self.n >= self.total
            parts.append(f"{'done in' if finished else 'stopped after'} {duration(elapsed)}")
        if not final and self.total is not None:
            remaining = self.total - self.n
            if remaining <= 0:
                parts.append("ETA 0s")
            elif done > 0:
                parts.append(f"ETA {duration(remaining * elapsed / done)}")
            else:
                parts.append("ETA unknown")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def _print(self, line: str, final: bool = False) -> None:
        with self._lock:
            if self._closed.is_set():  # nothing after the last line (the heartbeat may be late)
                return
            if final:
                self._closed.set()
            self._last = time.monotonic()
            self._echo(line)

    def _beat(self) -> None:
        period = max(self.every_s, MIN_BEAT_S)
        while not self._closed.wait(min(1.0, period)):
            if time.monotonic() - self._last >= period:
                self._print(self.line())


def rate_text(per_s: float, unit: str) -> str:
    if per_s >= 10:
        return f"{per_s:.0f} {unit}s/s"
    if per_s >= 0.1:
        return f"{per_s:.2g} {unit}s/s"
    return f"{1 / per_s:.0f} s/{unit}"


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
