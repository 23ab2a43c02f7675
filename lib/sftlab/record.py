"""What a stage notes in the record of the run that executes it (`outputs/<exp>/runs/<run>/`).

    record.note_problem("judge: 160/160 rows failed — connection failed: ...")

The runner exports the run's folder as SFTLAB_RUN to the kernel; a stage that finished but left
something unscored or failed notes it here, in `problems.json`. The runner then marks the stage
`done with errors` (not `done`) and the index shows the problem beside it. Outside a runner's kernel
(a notebook opened by hand, a script) there is no run record and nothing is written: the notebook
shows the problem itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from sftlab.files import atomic_write_text

PROBLEMS_FILE = "problems.json"
STATUS_LOCK = ".status.lock"  # beside status.json: held while status.json is read, changed and written
RUN_ENV = "SFTLAB_RUN"


def current_run() -> Path | None:
    run = os.environ.get(RUN_ENV)
    return Path(run) if run else None


def note_problem(text: str) -> None:
    """Add `text` to the current run's problems (once)."""
    run = current_run()
    if run is None or not run.is_dir():
        return
    problems = read_problems(run)
    if text not in problems:
        atomic_write_text(run / PROBLEMS_FILE, json.dumps(problems + [text], indent=2, ensure_ascii=False) + "\n")


def read_problems(run_dir: Path) -> list[str]:
    try:
        return json.loads((run_dir / PROBLEMS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@contextlib.contextmanager
def status_lock(experiment_dir: Path):
    """Hold the experiment's status lock (an flock on `<exp>/.status.lock`): the runner, the cluster jobs of
    its stages and `sftlab status` each read, change and write status.json under it, so none loses another's
    entry."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    with open(experiment_dir / STATUS_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
