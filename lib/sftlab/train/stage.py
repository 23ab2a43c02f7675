"""The train stage: plan (pure), preflight, then a torchrun subprocess.

    planned = train_stage.plan(params)    # reads only: rows, base model, flat config, what is left to train
    planned.estimate()                    # steps, rows, processes
    train_stage.preflight(planned)        # lock, rows + flat config written, label audit (run does it if not done)
    summary = train_stage.run(planned)    # torchrun ... -m sftlab.train --config <train_config.yaml>, then curves.png

`plan` takes no lock and writes nothing: it validates the rows, names the base model (a `builtin:` model is
converted by the preflight, not by planning) and builds the flat config, refusing one that differs from the
config over existing checkpoints. `preflight` is what `sftlab prepare-train` (for launching torchrun by hand,
e.g. under Slurm) runs as well. It takes the lock and writes under `outputs/<exp>/train/`: `train_config.yaml`
(the flat YAML TrlParser reads), `train.jsonl` (the validated rows as conversations; eval.jsonl too when the trainer evaluates),
`label_audit.html` (which tokens carry loss), `data_report.json` (every row: trained, left out or cut, and
why; supervised tokens per answer position) and `made_by.json` (the runs that trained into this folder: a
folder set aside as `train.previous-<time>` keeps it). `run` performs the preflight if it was not done, then
adds `train.log` (everything the processes print, appended per launch), the trainer's `checkpoint-<step>/`
folders, `trainer_state.json`, `train_summary.json` and `curves.png` (loss, grad_norm, learning rate).

`run` is safe to call twice: before launching it re-reads the newest checkpoint's trainer state, and a run
already trained to its last step with this config launches nothing and says so.

One trainer per experiment: the preflight takes `outputs/<exp>/train.lock` (sftlab.train.lock) and the end
of `run` releases it (`release` for a preflight that is not followed by a run); the torchrun processes die
with the process that runs the stage (sftlab.lifeline). A config is compared with the one over existing
checkpoints as `launch.portable` writes it (paths inside the experiment and the outputs folder relative to
them), so a copied or moved experiment resumes.

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
from sftlab.config import Params
from sftlab.files import atomic_write_text
from sftlab.train import audit, launch, views
from sftlab.train import lock as train_lock
from sftlab.errors import SftlabError


class TrainingFailed(SftlabError, RuntimeError):
    """torchrun exited with an error; the message ends with the tail of train.log."""


@dataclass
class Plan:
    params: Params
    train_dir: Path
    config_path: Path
    log_path: Path
    command: list[str]
    max_steps: int | None
    lock_path: Path  # outputs/<exp>/train.lock: held from the preflight to the end of `run`
    config: dict  # the flat config the preflight writes to config_path
    examples: list[data.Example] = field(repr=False, default_factory=list)  # the rows it writes to train.jsonl
    test_examples: list[data.Example] = field(repr=False, default_factory=list)  # eval.jsonl, when the trainer evaluates
    start_over: bool = False  # resume: never over existing checkpoints: the preflight sets the folder aside
    rows: int = 0
    base_model: str = ""
    label_audit: audit.LabelAudit | None = None
    prepared: bool = False  # the preflight wrote this plan's rows and config

    @property
    def audit_html(self) -> Path:
        return self.train_dir / "label_audit.html"

    @property
    def curves_png(self) -> Path:
        return self.train_dir / "curves.png"

    @property
    def skip(self) -> bool:
        """Nothing left to train: the folder holds this config trained to its last step."""
        return not self.start_over and finished(self.train_dir)

    def estimate(self) -> dict[str, Any]:
        """What `run` will do: steps still to train, on how many rows and processes."""
        newest = checkpoints.newest_complete(self.train_dir)
        done = checkpoints.step_of(newest) if newest and not self.start_over else 0
        # After the preflight: the rows the trainer gets (the overlong policy applied), of the rows read.
        data_report = self.label_audit.data if self.label_audit is not None else None
        rows = {"rows": data_report.trained, "rows_read": data_report.rows} if data_report else {"rows": self.rows}
        return {"base_model": self.base_model, **rows, "max_steps": self.max_steps,
                "resume_from_step": done, "skip": self.skip, "start_over": self.start_over,
                "processes": launch.nproc_per_node(self.params.train) * self.params.train.nnodes,
                "command": " ".join(self.command)}


def plan(params: Params, examples: list[data.Example] | None = None, base_model: str | None = None) -> Plan:
    """Decide what to train; read-only (no lock, no file written, no model converted). `examples` and
    `base_model` default to the params' training rows and model."""
    test_examples: list[data.Example] = []
    if examples is None:
        examples, test_examples = data.load_splits(params.data, params.seed)
    if base_model is None:
        base_model = models.model_path(params.model.name_or_path)
    train_dir = params.layout.train
    config_path = train_dir / "train_config.yaml"
    config = launch.train_config(params, base_model, train_dir / "train.jsonl", train_dir)
    start_over = params.train.resume == "never" and bool(checkpoints.list_checkpoints(train_dir, complete_only=False))
    if not start_over:
        _refuse_changed_config(train_dir, config)
    return Plan(params=params, train_dir=train_dir, config_path=config_path, log_path=train_dir / "train.log",
                command=launch.torchrun_command(params.train, config_path), max_steps=config.get("max_steps"),
                lock_path=lock_file(params), config=config, examples=examples, test_examples=test_examples,
                start_over=start_over,
                rows=len(examples), base_model=base_model)


def finished(train_dir: Path) -> bool:
    """The newest complete checkpoint is the run's last step (its trainer state says so)."""
    newest = checkpoints.newest_complete(train_dir)
    if newest is None:
        return False
    state = json.loads((newest / "trainer_state.json").read_text(encoding="utf-8"))
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def _refuse_changed_config(train_dir: Path, config: dict) -> None:
    """Checkpoints of another config are never resumed into: that would mix two runs."""
    config_path = train_dir / "train_config.yaml"
    if not checkpoints.list_checkpoints(train_dir, complete_only=False) or not config_path.exists():
        return
    # Compared wherever the experiment lies: a copied or moved experiment holds the same run.
    ours = launch.portable(config)
    theirs = launch.portable(yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})
    if theirs != ours:
        changed = sorted(k for k in set(ours) | set(theirs) if theirs.get(k) != ours.get(k))
        raise ValueError(
            f"{train_dir} holds checkpoints of a different train config (changed: {', '.join(changed)}). "
            "Resuming would mix two runs: use a new experiment name, or set train.resume: never to start "
            "over (the old folder is kept as train.previous-<time>).")


def lock_file(params: Params) -> Path:
    return params.layout.train_lock(params.train.node_rank if params.train.nnodes > 1 else None)


def release(planned: Plan) -> None:
    """Release the train lock that the preflight took (`run` does this itself when it ends)."""
    train_lock.release(planned.lock_path)


def preflight(planned: Plan, echo: Callable[[str], None] = print, label_audit: bool = True) -> audit.LabelAudit | None:
    """Take the experiment's train lock, convert a builtin base model (once), write the rows, the flat config
    and made_by.json, and run the label audit (label_audit.html). The lock stays held (by this process) until
    `run` ends or `release`. A second preflight of the same plan writes nothing again."""
    lock = train_lock.acquire(planned.lock_path, planned.params.layout.root, echo)
    try:
        _write(planned)
        if label_audit and planned.label_audit is None:
            train = planned.params.train
            with progress.step(f"train: label audit of {train.audit_rows} rows, tokenized and collated as "
                               f"the trainer will", echo=echo):
                planned.label_audit = audit.run_label_audit(planned.config_path, rows=train.audit_rows,
                                                            html_path=planned.audit_html,
                                                            allow_unsupervised_eos=train.allow_unsupervised_eos)
            if planned.label_audit.data is not None:  # every row: read, trained, left out, cut; loss per answer
                atomic_write_text(planned.train_dir / "data_report.json",
                                  json.dumps(planned.label_audit.data.as_dict(), indent=2, ensure_ascii=False) + "\n")
            echo(f"label audit: {planned.label_audit.summary()}")
    except BaseException:
        lock.release()
        raise
    return planned.label_audit


def _write(planned: Plan) -> None:
    train_dir = planned.train_dir
    if planned.prepared:
        _refuse_changed_config(train_dir, planned.config)  # another plan may have written since
        return
    if planned.base_model == models.model_path(planned.params.model.name_or_path):
        models.resolve_model(planned.params.model.name_or_path)  # a builtin model is converted here, once
    if planned.start_over and checkpoints.list_checkpoints(train_dir, complete_only=False):
        # Start over, but keep the earlier run (and its made_by.json): nothing computed is deleted.
        train_dir.rename(train_dir.with_name(f"train.previous-{time.strftime('%Y%m%d-%H%M%S')}"))
        planned.start_over = False  # done: what is trained from now on is this plan's
    else:
        _refuse_changed_config(train_dir, planned.config)
    train_dir.mkdir(parents=True, exist_ok=True)
    launch.write_inputs(planned.params, planned.examples, planned.test_examples, train_dir)
    atomic_write_text(planned.config_path, yaml.safe_dump(planned.config, sort_keys=False, allow_unicode=True))
    _record_run(train_dir)
    newest = checkpoints.newest_complete(train_dir)
    if planned.params.train.resume == "auto" and newest is not None and not planned.skip:
        checkpoints.check_resumable(newest)  # a weights-only checkpoint: said here, not in the trainer's log
    planned.prepared = True


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
    """The preflight (if not done), then torchrun, streaming its output to `echo` and to train.log; then
    curves.png. Raises TrainingFailed on error. Holds the train lock until the processes are gone. A plan
    whose training is finished (a second call, or a folder already trained) launches nothing."""
    lock = train_lock.acquire(planned.lock_path, planned.params.layout.root, echo)
    try:
        if planned.skip:  # read now: a second call of the same plan trains nothing
            _refuse_changed_config(planned.train_dir, planned.config)  # (another config may have trained since)
            echo(f"[sftlab] {planned.train_dir} is already trained to its last step with this config: nothing to do")
            if not planned.curves_png.exists():
                views.save_curves(planned.train_dir, planned.curves_png, title=planned.params.experiment)
            return Summary(skipped=True, checkpoints=checkpoints.list_checkpoints(planned.train_dir))
        preflight(planned, echo)
        return _run(planned, lock, echo)
    finally:
        lock.release()


def _run(planned: Plan, lock: train_lock.TrainLock, echo: Callable[[str], None]) -> Summary:
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
    views.save_curves(planned.train_dir, planned.curves_png, title=planned.params.experiment)
    summary_file = planned.params.layout.train_summary
    launched = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}
    return Summary(skipped=False, checkpoints=checkpoints.list_checkpoints(planned.train_dir), launch=launched)
