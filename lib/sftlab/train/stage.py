"""The train stage: preflight, then a torchrun subprocess.

    planned = train_stage.plan(params)    # = prepare_and_audit: data, base model, flat config, label audit
    planned.estimate()                    # steps, rows, processes
    summary = train_stage.run(planned)    # torchrun ... -m sftlab.train --config <train_config.yaml>

`prepare_and_audit` is the one preflight: the train notebook and `sftlab prepare-train` (for launching
torchrun by hand, e.g. under Slurm) both call it. It writes under `outputs/<exp>/train/`:
`train_config.yaml` (the flat YAML TrlParser reads), `train.jsonl` (the validated rows as
prompt/completion conversations), `label_audit.html` (which tokens carry loss) and `made_by.json` (the
runs that trained into this folder: a folder set aside as `train.previous-<time>` keeps it). `run` adds
`train.log` (everything the processes print, appended per launch), the trainer's `checkpoint-<step>/`
folders, `trainer_state.json` and `train_summary.json`.

One trainer per experiment: planning takes `outputs/<exp>/train.lock` (sftlab.train.lock) and the end of
`run` releases it; the torchrun processes die with the process that runs the stage (sftlab.lifeline).
A config is compared with the one over existing checkpoints as `launch.portable` writes it (paths inside
the experiment and the outputs folder relative to them), so a copied or moved experiment resumes.

Raises `data.DataError` for bad training rows, `models.ModelError` for a model that cannot be found,
`audit.UnsupervisedEOSError` when the model would not be taught to stop, `ValueError` for a changed
config over existing checkpoints, a newest checkpoint that holds weights only (`checkpoints.check_resumable`)
or a launch that cannot work, `lock.TrainLocked` (naming the holder) while another trainer holds the
experiment, and `TrainingFailed` (with the last 50 lines of the log) when torchrun exits non-zero.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from sftlab import checkpoints, data, models, progress
from sftlab.config import Params, atomic_write_text
from sftlab.train import audit, launch
from sftlab.train import lock as train_lock


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the message ends with the tail of train.log."""


@dataclass
class Plan:
    params: Params
    train_dir: Path
    config_path: Path
    log_path: Path
    command: list[str]
    max_steps: int | None
    skip: bool  # the same config already trained to its last step
    lock_path: Path  # outputs/<exp>/train.lock: held from planning to the end of `run`
    rows: int = 0
    base_model: str = ""
    label_audit: audit.LabelAudit | None = None

    @property
    def audit_html(self) -> Path:
        return self.train_dir / "label_audit.html"

    def estimate(self) -> dict[str, Any]:
        """What `run` will do: steps still to train, on how many rows and processes."""
        newest = checkpoints.newest_complete(self.train_dir)
        done = checkpoints.step_of(newest) if newest else 0
        return {"base_model": self.base_model, "rows": self.rows, "max_steps": self.max_steps,
                "resume_from_step": done, "skip": self.skip,
                "processes": launch.nproc_per_node(self.params.train) * self.params.train.nnodes,
                "command": " ".join(self.command)}


def prepare_and_audit(params: Params, echo: Callable[[str], None] = print) -> Plan:
    """Validate the rows, resolve the base model, write the flat config and rows, run the label audit."""
    train_examples, _ = data.load_splits(params.data, params.seed)
    base_model = models.resolve_model(params.model.name_or_path)
    planned = prepare(params, train_examples, base_model, echo)
    try:
        with progress.step(f"train: label audit of {params.train.audit_rows} rows, tokenized and collated as "
                           f"the trainer will", echo=echo):
            planned.label_audit = audit.run_label_audit(planned.config_path, rows=params.train.audit_rows,
                                                        html_path=planned.audit_html,
                                                        allow_unsupervised_eos=params.train.allow_unsupervised_eos)
    except BaseException:
        release(planned)
        raise
    echo(f"label audit: {planned.label_audit.summary()}")
    return planned


plan = prepare_and_audit  # the shape every stage has: plan(params) -> Plan, then run(plan)


def prepare(params: Params, examples: list[data.Example], model_path: str,
            echo: Callable[[str], None] = print) -> Plan:
    """Take the experiment's train lock, write the rows and the flat config; decide whether there is anything
    left to train. The lock stays held (by this process) until `run` ends or `release`."""
    lock_path = lock_file(params)
    lock = train_lock.acquire(lock_path, params.layout.root, echo)
    try:
        return _prepare(params, examples, model_path, lock_path)
    except BaseException:
        lock.release()
        raise


def lock_file(params: Params) -> Path:
    return params.layout.train_lock(params.train.node_rank if params.train.nnodes > 1 else None)


def release(planned: Plan) -> None:
    """Release the train lock that planning took (`run` does this itself when it ends)."""
    train_lock.release(planned.lock_path)


def _prepare(params: Params, examples: list[data.Example], model_path: str, lock_path: Path) -> Plan:
    train_dir = params.layout.train
    train_dir.mkdir(parents=True, exist_ok=True)
    config_path = train_dir / "train_config.yaml"
    config = launch.train_config(params, model_path, train_dir / "train.jsonl", train_dir)
    previous = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    existing = checkpoints.list_checkpoints(train_dir, complete_only=False)

    # Compared wherever the experiment lies: a copied or moved experiment holds the same run.
    ours, theirs = launch.portable(config), launch.portable(previous or {})
    if existing and theirs != ours:
        if params.train.resume == "never":
            # Start over, but keep the earlier run (and its made_by.json): nothing computed is deleted.
            aside = train_dir.with_name(f"train.previous-{time.strftime('%Y%m%d-%H%M%S')}")
            train_dir.rename(aside)
            train_dir.mkdir()
        else:
            changed = sorted(k for k in set(ours) | set(theirs) if theirs.get(k) != ours.get(k))
            raise ValueError(
                f"{train_dir} holds checkpoints of a different train config (changed: {', '.join(changed)}). "
                "Resuming would mix two runs: use a new experiment name, or set train.resume: never to start "
                "over (the old folder is kept as train.previous-<time>).")
    launch.write_train_rows(examples, train_dir / "train.jsonl")
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    _record_run(train_dir)

    max_steps = config.get("max_steps")
    newest = checkpoints.newest_complete(train_dir)
    skip = bool(params.train.resume == "auto" and max_steps and max_steps > 0 and newest is not None
                and checkpoints.step_of(newest) >= max_steps)
    if params.train.resume == "auto" and newest is not None and not skip:
        checkpoints.check_resumable(newest)  # a weights-only checkpoint: said here, not in the trainer's log
    return Plan(params=params, train_dir=train_dir, config_path=config_path, log_path=train_dir / "train.log",
                command=launch.torchrun_command(params.train, config_path), max_steps=max_steps, skip=skip,
                lock_path=lock_path, rows=len(examples), base_model=model_path)


def _record_run(train_dir: Path) -> None:
    """Append the current run record (`SFTLAB_RUN`, set by the runner) to train/made_by.json."""
    run = os.environ.get("SFTLAB_RUN")
    if not run:
        return
    record = train_dir / "made_by.json"
    runs = json.loads(record.read_text(encoding="utf-8")) if record.exists() else []
    if run not in runs:
        atomic_write_text(record, json.dumps(runs + [run], indent=2) + "\n")


@dataclass
class Summary:
    skipped: bool
    checkpoints: list[Path] = field(default_factory=list)
    launch: dict[str, Any] = field(default_factory=dict)  # train_summary.json as this launch left it

    def __str__(self) -> str:
        names = ", ".join(c.name for c in self.checkpoints) or "none"
        if self.skipped:
            return f"already trained; checkpoints: {names}"
        return f"checkpoints: {names}; launch: {json.dumps(self.launch)}"


def run(planned: Plan, echo: Callable[[str], None] = print) -> Summary:
    """Run torchrun, streaming its output to `echo` and to train.log; raise TrainingFailed on error. Holds
    the train lock (taken again if it was released since planning) until the processes are gone."""
    lock = train_lock.acquire(planned.lock_path, planned.params.layout.root, echo)
    try:
        return _run(planned, lock, echo)
    finally:
        lock.release()


def _run(planned: Plan, lock: train_lock.TrainLock, echo: Callable[[str], None]) -> Summary:
    if planned.skip:
        echo(f"[sftlab] {planned.train_dir} is already trained to step {planned.max_steps} with this config: "
             "nothing to do")
        return Summary(skipped=True, checkpoints=checkpoints.list_checkpoints(planned.train_dir))
    for partial in checkpoints.remove_partial(planned.train_dir):
        echo(f"[sftlab] removed {partial.name}: a save interrupted by a kill (no trainer_state.json)")
    with open(planned.log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(planned.command)}\n")
        log.flush()
        # The agent inherits the lock: the experiment stays locked while any process of this run lives.
        code, tail = launch.stream(planned.command, log, echo, keep_fds=(lock.fd,))
    if code != 0:
        raise TrainingFailed(f"training exited with code {code}; last {launch.LOG_TAIL_LINES} lines of "
                             f"{planned.log_path}:\n" + "\n".join(tail))
    summary_file = planned.train_dir / "train_summary.json"
    launched = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}
    return Summary(skipped=False, checkpoints=checkpoints.list_checkpoints(planned.train_dir), launch=launched)
