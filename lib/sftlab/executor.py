"""Where the stages run: here, one after another (`executor.backend: local`, the default), or as Slurm jobs
(`slurm`), submitted through submitit.

    sftlab run params/studies/collator/ --executor slurm         # submits, prints the job ids, returns
    sftlab run params/studies/collator/ --executor slurm --wait  # ... and follows the jobs to their end
    sftlab status params/studies/collator/                        # each stage's state, asked of the scheduler
    sftlab cancel params/studies/collator/                        # cancel every queued or running job

Jobs. Each stage of each experiment is one job; it waits (`--dependency=afterok`) for the job of the stage
before it: train -> infer -> judge -> score. A study's experiments run side by side and its joint score waits
for the last job of every experiment. A job runs its stage as `sftlab run` runs it here (runner.run_stage:
papermill, the run record, the index) into the run record made for it at submission,
`outputs/<exp>/runs/<UTC time>-<stage>/`, which also holds the job's script (`<id>_submission.sh`) and its
output (`<id>_0_log.out`, stdout and stderr together). Where a job runs, sftlab, the outputs folder and the
model cache must be at the same paths (a shared filesystem, as on any cluster): sbatch passes the environment
of the submitting shell on (SFTLAB_OUTPUTS, HF_HOME, ...).

What a job asks for: `job_resources(executor, stage)`. The executor's keys are every job's; a stage's own
section overrides them key by key (`extra`, more #SBATCH directives, merges). `nodes` and `gpus_per_node` at
the top are the train job's: infer asks for one node, judge and score for one node and no GPU, unless their
own sections say otherwise; an infer job with replicas (infer.data_parallel x infer.tensor_parallel > 1) and no
gpus_per_node of its own asks for that many GPUs. `sbatch_text` is the exact script a job is submitted with.

States. The status entry (status.json, run.json, the index) of a submitted stage carries `job_id`, `after`
(the jobs it waits for) and `log`, and goes
    queued -> running -> done | done with errors | failed      the job records these itself
    running -> interrupted -> queued -> running ...            stopped and requeued (time limit, preemption,
                                                               `scontrol requeue`); the job says `requeued: N`
    queued -> not run                                          a stage it waits for failed: it never runs
    queued | running | interrupted -> cancelled               `sftlab cancel`, or scancel
A job whose stage fails marks its waiting dependants `not run` itself (Slurm cancels them: kill-on-invalid-
dep). `refresh` asks the scheduler (squeue, then sacct where the cluster keeps accounting) about every entry
not yet final and writes what it learns, e.g. a job that died without recording its end (killed, out of
memory, node lost) becomes `failed` with the scheduler's reason; `sftlab status` refreshes first, so it tells
the truth whichever shell submitted the jobs.

Preemption and time limits. Every job is submitted with `--requeue` and `--signal=B:USR2@<signal_before_s>`:
before its time limit submitit (the process that runs the stage) gets SIGUSR2, requeues the job and exits;
preemption with PreemptMode=REQUEUE requeues it too. A requeued job runs its stage again into the same run
record: the train stage resumes from the newest complete checkpoint (`train.resume: auto`), losing at most
the steps since it; infer and judge skip the rows already written. Requeues at the time limit are capped by
`max_requeues`.

Raises `ExecutorError` (a params problem, or the scheduler refusing a job, with sbatch's message); a refused
submission cancels the jobs it had already submitted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import submitit
from submitit.core.utils import FailedJobError

from sftlab import paths, reports, runner
from sftlab.stages import BY_NAME as DECLARED_STAGES
from sftlab.config import ExecutorParams, JobResources, Params, ParamsError, slurm_time_minutes, validate
from sftlab.errors import SftlabError

QUEUED, INTERRUPTED, NOT_RUN, CANCELLED = "queued", "interrupted", "not run", "cancelled"
FINAL = (runner.DONE, runner.DONE_WITH_ERRORS, runner.FAILED, NOT_RUN, CANCELLED)
UNSUCCESSFUL = (runner.FAILED, NOT_RUN, CANCELLED)
SINGLE_NODE_STAGES = ("infer", "judge", "score")  # do not take the top-level `nodes`
CPU_STAGES = ("judge", "score")  # do not take the top-level `gpus_per_node`
REQUEUE_SIGNAL = "USR2"  # submitit's: it checkpoints and requeues on this signal
# Directives sftlab writes itself: `extra` may not set them (it would silently change what a job does).
OWN_DIRECTIVES = {"dependency", "signal", "requeue", "no-requeue", "output", "error", "open-mode", "job-name",
                  "kill-on-invalid-dep", "parsable", "wrap", "array"}
POLL_S = 5.0  # `--wait`: seconds between two looks at the scheduler
LEAVE_S = 60.0  # `--wait`: how long the jobs may take to end once their stages are final
# Scheduler states (squeue %T, sacct State) as the stage's status sees them.
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                  "SUSPENDED", "STOPPED", "RESIZING"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}

log = logging.getLogger("sftlab.executor")


class ExecutorError(SftlabError, RuntimeError):
    """The executor cannot submit or ask about jobs; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# What a job asks for
# --------------------------------------------------------------------------------------------


def job_resources(executor: ExecutorParams, stage: str) -> dict:
    """The resolved sbatch options of `stage`'s job: its own section's keys over the executor's, without the
    top-level `nodes` for infer/judge/score and `gpus_per_node` for judge/score. Keys left unset are absent."""
    own = getattr(executor, stage)
    resolved: dict = {}
    for key in JobResources.model_fields:
        if key == "extra":
            continue
        value = getattr(own, key)
        inherits = not ((key == "nodes" and stage in SINGLE_NODE_STAGES) or (key == "gpus_per_node" and stage in CPU_STAGES))
        if value is None and inherits:
            value = getattr(executor, key)
        if value is not None:
            resolved[key] = value
    extra = {**executor.extra, **own.extra}
    for key in extra:
        name = key.replace("_", "-")
        if name in OWN_DIRECTIVES or name.replace("-", "_") in JobResources.model_fields:
            raise ParamsError(f"executor.extra / executor.{stage}.extra: '{key}' is set by sftlab itself"
                              + (f"; use executor.{name.replace('-', '_')}"
                                 if name.replace("-", "_") in JobResources.model_fields else ""))
    if extra:
        resolved["extra"] = extra
    return resolved


def submitit_parameters(params: Params, stage: str, after: list[str]) -> dict:
    """The SlurmExecutor parameters of `stage`'s job for `params`, waiting for the jobs `after`."""
    executor = params.executor
    resources = job_resources(executor, stage)
    parameters = {"job_name": f"sftlab-{params.experiment}-{stage}", "stderr_to_stdout": True,
                  "use_srun": False,  # the stage runs once, on the first node; the train stage starts srun itself
                  "signal_delay_s": executor.signal_before_s, "time": slurm_time_minutes(resources["time"]),
                  "wckey": None}  # submitit's default wckey "submitit" would be charged where wckeys are tracked
    for key in ("partition", "account", "qos", "nodes", "gpus_per_node", "cpus_per_task", "mem"):
        if key in resources:
            parameters[key] = resources[key]
    if stage == "infer" and executor.infer.gpus_per_node is None:  # the GPUs of its replicas (sftlab.infer.parallel)
        wanted = params.infer.data_parallel * params.infer.tensor_parallel
        if wanted > 1:
            parameters["gpus_per_node"] = wanted
    # submitit's own --signal goes to job steps; B: sends it to the batch shell, which `exec`s submitit's process.
    additional = {"requeue": True, "signal": f"B:{REQUEUE_SIGNAL}@{executor.signal_before_s}"}
    if after:
        additional["dependency"] = "afterok:" + ":".join(after)
        additional["kill-on-invalid-dep"] = "yes"
    additional.update(resources.get("extra", {}))
    parameters["additional_parameters"] = additional
    return parameters


# The job's command: the batch shell becomes submitit's process (exec), which thus gets the B:USR2 signal itself.
PYTHON = f"exec {shlex.quote(sys.executable)}"


def slurm_executor(folder: Path, params: Params, stage: str, after: list[str]):
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=params.executor.max_requeues, python=PYTHON)
    except RuntimeError as e:
        raise ExecutorError(f"executor.backend: slurm, but {e} (sbatch and srun must be on PATH, with SLURM_CONF "
                            f"or /etc/slurm/slurm.conf naming the cluster)") from None
    executor.update_parameters(**submitit_parameters(params, stage, after))
    return executor


def sbatch_text(params: Params, stage: str, folder: Path, after: list[str] = ()) -> str:
    """The script `stage`'s job is submitted with (what sbatch reads), for the run record `folder`: submitit's
    text, made here without a Slurm client (a test compares it with what a real submission wrote)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{PYTHON} -u -m submitit.core._submit {shlex.quote(str(folder))}"  # SlurmExecutor._submitit_command_str
    return _make_sbatch_string(command=command, folder=folder, **submitit_parameters(params, stage, list(after)))


# --------------------------------------------------------------------------------------------
# Submitting
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Submitted:
    experiment: str
    stage: str
    job_id: str
    after: list[str]
    run: Path


def run(target: str | os.PathLike, stages: list[str] | None = None, overrides: list[str] | None = None,
        kernel: str | None = None, notebooks: Path | None = None, wait: bool = False,
        echo: Callable[[str], None] = print) -> list[Params]:
    """`sftlab run`: every stage here (runner.run) when the params say `executor.backend: local`; as Slurm jobs
    (`submit`) when they say `slurm`, then, with `wait`, follow the jobs to their end (raises StageFailed if a
    stage did not finish)."""
    loaded = runner.load_run(target, stages, overrides, notebooks)
    everyone = loaded.experiments + ([loaded.study_params] if loaded.study_params else [])
    backends = {p.executor.backend for p in everyone}
    if len(backends) > 1:
        raise ParamsError(f"{target}: its experiments name different executor.backend values ({', '.join(sorted(backends))}); "
                          f"a study runs on one executor (set it in the study's shared base, or with --executor)")
    if backends == {"local"}:
        return runner.run_loaded(loaded, kernel=kernel)
    submitted = submit(loaded, kernel=kernel, echo=echo)
    if wait:
        rows = follow([p.layout for p in everyone], echo=echo)
        failed = [r for r in rows if r.job_id in {s.job_id for s in submitted} and r.status in UNSUCCESSFUL]
        if failed:
            raise runner.StageFailed("; ".join(f"[{r.experiment}] {r.stage}: {r.status}" + (f" ({r.detail})" if r.detail else "")
                                             for r in failed))
    return everyone


def submit(loaded: "runner.LoadedRun", kernel: str | None = None, echo: Callable[[str], None] = print) -> list[Submitted]:
    """Submit one job per stage and experiment (and the study's joint score after all of them); record each as
    `queued` with its job id; print the ids. Returns what was submitted."""
    submitted: list[Submitted] = []
    experiment_jobs = [[(params, stage, file) for stage in loaded.stages
                        if not (loaded.study and not DECLARED_STAGES[stage].per_experiment)]
                       for params, file in zip(loaded.experiments, loaded.files)]
    try:
        lasts = []
        for jobs in experiment_jobs:
            previous: list[str] = []
            for params, stage, file in jobs:
                job = _submit_stage(params, stage, file, previous, loaded, kernel)
                submitted.append(job)
                previous = [job.job_id]
            lasts += previous
        if loaded.study_params is not None:
            for stage in loaded.stages:  # the study's joint stages (score), after every experiment's last job
                if not DECLARED_STAGES[stage].per_experiment:
                    job = _submit_stage(loaded.study_params, stage, loaded.study, lasts, loaded, kernel)
                    submitted.append(job)
                    lasts = [job.job_id]
    except (FailedJobError, OSError, subprocess.SubprocessError) as e:
        if submitted:
            subprocess.run(["scancel", *[s.job_id for s in submitted]], capture_output=True)
            for s in submitted:
                _update(paths.ExperimentLayout.of(s.experiment), s.stage, s.run, {"status": CANCELLED,
                        "error": "cancelled: a later job of the same submission was refused"})
        raise ExecutorError(f"sbatch refused a job ({len(submitted)} submitted before it were cancelled): "
                            f"{str(e).strip()[-2000:]}") from None
    finally:
        reports.build_index()
    for s in submitted:
        echo(f"[{s.experiment}] {s.stage}: job {s.job_id}" + (f" (after {', '.join(s.after)})" if s.after else "")
             + f", record {s.run}")
    return submitted


def _submit_stage(params: Params, stage: str, params_file: Path | None, after: list[str], loaded: "runner.LoadedRun",
                  kernel: str | None) -> Submitted:
    layout = params.layout
    now = time.time()
    run_dir = runner.new_run_dir(layout, stage, now)
    executor = slurm_executor(run_dir, params, stage, after)
    notebooks = str(loaded.notebooks)
    experiments = [p.experiment for p in loaded.experiments] + ([loaded.study_params.experiment]
                                                                 if loaded.study_params else [])
    # Recorded before sbatch: the job may start, and record itself running, before sbatch has returned.
    runner.record_entry(layout, stage, {"status": QUEUED, "submitted": _iso(now), "after": after or None,
                                        "params_file": str(params_file) if params_file else None,
                                        "run": run_dir.relative_to(layout.root).as_posix()}, kernel)
    try:
        job = executor.submit(StageJob(), params, stage, str(run_dir), str(params_file) if params_file else None,
                              kernel, notebooks, {"after": after or None, "submitted": _iso(now)}, experiments)
    except BaseException as e:
        _update(layout, stage, run_dir, {"status": runner.FAILED, "error": f"sbatch refused the job: {e}"})
        raise
    _update(layout, stage, run_dir, {"job_id": job.job_id,
                                     "log": _log_path(run_dir, job.job_id).relative_to(layout.root).as_posix()})
    return Submitted(params.experiment, stage, job.job_id, after, run_dir)


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _log_path(run_dir: Path, job_id: str) -> Path:
    return run_dir / f"{job_id}_0_log.out"


class StageJob(submitit.helpers.Checkpointable):
    """What one job runs: one stage of one experiment, into the run record made at submission. On SIGUSR2
    (the time limit near) submitit calls `checkpoint`, which resubmits this same call: the stage resumes from
    what it left on disk."""

    def __call__(self, params: Params, stage: str, run_dir: str, params_file: str | None, kernel: str | None,
                 notebooks: str, job: dict, experiments: list[str]) -> str:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        from sftlab import imports

        imports.skip_unused()  # a no-op when unpickling this job imported nbformat already
        stopping = _watch_termination()
        job_id = os.environ.get("SLURM_JOB_ID", "?")
        run = Path(run_dir)
        job = {**job, "job_id": job_id, "log": _log_path(run, job_id).relative_to(params.layout.root).as_posix(),
               "node": socket.gethostname()}
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restarts:
            job["requeued"] = restarts
        try:
            executed = runner.run_stage(params, stage, kernel=kernel, notebooks=Path(notebooks),
                                        params_file=Path(params_file) if params_file else None, run_dir=run, job=job)
        except BaseException as e:
            if stopping.is_set() or isinstance(e, SystemExit):
                # Cancelled, requeued or preempted: the scheduler stops this job; its stage did not fail.
                _update(params.layout, stage, run, {"status": INTERRUPTED, "error": "stopped by the scheduler "
                        "(cancel, requeue or preemption); `sftlab status` tells which"})
            else:
                mark_dependants_not_run([paths.ExperimentLayout.of(name) for name in experiments], job_id,
                                        f"{params.experiment} {stage}")
            reports.build_index()
            raise
        return str(executed)


def _watch_termination() -> threading.Event:
    """An event set when this process gets SIGTERM (the scheduler stopping the job), keeping the handler that
    was there (submitit's, which lets the job go on to its requeue or kill)."""
    stopping = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        stopping.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return stopping


# --------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    experiment: str
    stage: str
    status: str
    job_id: str | None = None
    seconds: float | None = None
    detail: str = ""


def layouts_of(target: str | os.PathLike, overrides: list[str] | None = None) -> list[paths.ExperimentLayout]:
    """The experiments of a params file or study folder (with the study's joint score)."""
    loaded = runner.load_run(target, ["score"] if paths.resolve(target).is_dir() else None, overrides, None)
    everyone = loaded.experiments + ([loaded.study_params] if loaded.study_params else [])
    return [p.layout for p in everyone]


def scheduler_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, reason) from squeue (the jobs slurmctld still holds), then sacct (where the cluster
    keeps accounting) for the others. A job neither knows is absent."""
    if not job_ids:
        return {}
    if not shutil.which("squeue"):
        raise ExecutorError("squeue is not on PATH: this machine cannot ask the Slurm scheduler about the jobs")
    states: dict[str, tuple[str, str]] = {}
    wanted = set(job_ids)
    result = subprocess.run(["squeue", "-h", "-t", "all", "--me", "-o", "%i|%T|%r"], capture_output=True, text=True)
    if result.returncode != 0:
        raise ExecutorError(f"squeue failed: {result.stderr.strip()}")
    for line in result.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id in wanted:
            states[job_id] = (state, reason)
    missing = sorted(wanted - set(states))
    if missing and shutil.which("sacct"):
        result = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)],
                                capture_output=True, text=True)
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            job_id, _, state = line.strip().partition("|")
            if job_id in wanted:
                states[job_id] = (state.split()[0] if state else "UNKNOWN", "")
    return states


def _latest_entries(layouts: list[paths.ExperimentLayout]) -> list[tuple[paths.ExperimentLayout, str, dict]]:
    found = []
    for layout in layouts:
        status = runner.read_status(layout.root)
        for stage in runner.STAGES:
            entry = status.get("stages", {}).get(stage)
            if entry:
                found.append((layout, stage, {k: v for k, v in entry.items() if k != "history"}))
    return found


def refresh(layouts: list[paths.ExperimentLayout]) -> list[Row]:
    """Ask the scheduler about every job whose stage is not final, record what follows, return every stage's row."""
    entries = _latest_entries(layouts)
    by_job = {e["job_id"]: (layout, stage, e) for layout, stage, e in entries if e.get("job_id")}
    open_jobs = [job_id for job_id, (_, _, e) in by_job.items() if e.get("status") not in FINAL]
    states = scheduler_states(open_jobs) if open_jobs else {}
    for job_id in sorted(open_jobs, key=lambda j: int(j) if j.isdigit() else 0):  # dependencies first
        layout, stage, entry = by_job[job_id]
        changes = _derive(entry, states.get(job_id), by_job)
        if changes and _update(layout, stage, layout.root / entry["run"], changes, expect=entry["status"]):
            entry.update(changes)
            if changes.get("status") == NOT_RUN and states.get(job_id, ("",))[0] in PENDING_STATES:
                subprocess.run(["scancel", job_id], capture_output=True)  # it would wait forever
    if open_jobs:
        reports.build_index()
    return [_row(layout, stage, entry) for layout, stage, entry in _latest_entries(layouts)]


def _derive(entry: dict, scheduler: tuple[str, str] | None, by_job: dict) -> dict:
    """What the entry should say, given the scheduler's (state, reason) of its job; {} when it already does."""
    status, job_id = entry.get("status"), entry["job_id"]
    # A stage waiting for one that failed never runs; one waiting for a cancelled stage is cancelled by Slurm.
    failed_before = [by_job[a] for a in entry.get("after") or []
                     if a in by_job and by_job[a][2].get("status") in (runner.FAILED, NOT_RUN)]
    if status == QUEUED and failed_before:
        layout, stage, e = failed_before[0]
        return {"status": NOT_RUN, "error": f"waits for {layout.experiment} {stage} (job {e['job_id']}), which "
                                            f"{'failed' if e['status'] == runner.FAILED else 'did not run'}"}
    if scheduler is None:
        return {"status": runner.FAILED, "error": f"job {job_id} is unknown to the scheduler and its stage recorded "
                                                  f"no end; see its log {entry.get('log')}"}
    state, reason = scheduler
    if state in PENDING_STATES:
        if reason == "DependencyNeverSatisfied":
            return {"status": NOT_RUN, "error": "a job it waits for did not succeed"}
        return {"status": QUEUED} if status != QUEUED else {}
    if state in RUNNING_STATES:
        return {"status": runner.RUNNING} if status == QUEUED else {}
    if state.startswith("CANCELLED"):
        return {"status": CANCELLED, "error": f"job {job_id} was cancelled"
                + (" before it started" if status == QUEUED else "")}
    if state == "COMPLETED":
        return {"status": runner.FAILED, "error": f"job {job_id} ended without recording its stage's end; see its log "
                                                  f"{entry.get('log')}"}
    return {"status": runner.FAILED, "error": f"job {job_id}: {state}" + (f" ({reason})" if reason and reason != "None" else "")
            + f"; see its log {entry.get('log')}"}


def _update(layout: paths.ExperimentLayout, stage: str, run_dir: Path, changes: dict, expect: str | None = None) -> bool:
    """Change the entry of the run `run_dir` (the stage's latest), unless its status is no longer `expect`."""
    return runner.update_entry(layout, stage, run_dir.relative_to(layout.root).as_posix(), changes, expect=expect)


def mark_dependants_not_run(layouts: list[paths.ExperimentLayout], failed_job: str, what: str) -> None:
    """Every queued stage that waits, directly or not, for `failed_job` is `not run`, and its job cancelled (Slurm
    would too, kill-on-invalid-dep, at its next scheduling pass)."""
    entries = _latest_entries(layouts)
    dead = {failed_job}
    for layout, stage, entry in sorted(entries, key=lambda x: int(x[2].get("job_id") or 0)):
        if entry.get("status") == QUEUED and set(entry.get("after") or []) & dead:
            dead.add(entry["job_id"])
            _update(layout, stage, layout.root / entry["run"],
                    {"status": NOT_RUN, "error": f"waits for {what} (job {failed_job}), which failed"}, expect=QUEUED)
    if len(dead) > 1:
        subprocess.run(["scancel", *sorted(dead - {failed_job})], capture_output=True)


def _row(layout: paths.ExperimentLayout, stage: str, entry: dict) -> Row:
    detail = entry.get("error") or ""
    if entry.get("requeued"):
        detail = f"requeued {entry['requeued']}x" + (f"; {detail}" if detail else "")
    if entry.get("log") and entry.get("status") in (runner.FAILED, runner.RUNNING):
        detail = (detail + "; " if detail else "") + f"log {layout.root / entry['log']}"
    return Row(layout.experiment, stage, entry.get("status", "?"), entry.get("job_id"), entry.get("seconds"), detail)


def format_rows(rows: list[Row]) -> str:
    header = ("experiment", "stage", "status", "job", "time", "detail")
    table = [header] + [(r.experiment, r.stage, r.status, r.job_id or "-",
                         f"{r.seconds:.0f} s" if r.seconds is not None else "-", r.detail) for r in rows]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)) + "  " + line[-1] for line in table)


def follow(layouts: list[paths.ExperimentLayout], echo: Callable[[str], None] = print, poll_s: float = POLL_S) -> list[Row]:
    """Refresh until every submitted stage is final, saying each change of state as it is seen."""
    seen: dict[tuple[str, str], str] = {}
    while True:
        rows = refresh(layouts)
        for r in rows:
            key = (r.experiment, r.stage)
            if r.job_id and seen.get(key) != r.status:
                seen[key] = r.status
                echo(f"[{r.experiment}] {r.stage}: {r.status} (job {r.job_id})" + (f" {r.detail}" if r.detail else ""))
        if all(r.status in FINAL for r in rows if r.job_id):
            _until_gone([r.job_id for r in rows if r.job_id], min(poll_s, 1.0))
            return refresh(layouts)
        time.sleep(poll_s)


def _until_gone(job_ids: list[str], poll_s: float, timeout_s: float = LEAVE_S) -> None:
    """Wait until the scheduler no longer runs `job_ids`. A job records its final status before it ends: a
    failed one then marks its dependants, rebuilds the index, and submitit writes the exception into its
    output. Whoever reads them after `follow` (the terminal, a script, the index) reads them complete."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not any(state in PENDING_STATES | RUNNING_STATES for state, _ in scheduler_states(job_ids).values()):
            return
        time.sleep(poll_s)
    log.warning("jobs %s still held by the scheduler %.0f s after their last stage was final", job_ids, timeout_s)


def cancel(layouts: list[paths.ExperimentLayout], timeout_s: float = 120) -> list[Row]:
    """Cancel every job whose stage is not final, wait until the scheduler has ended them (their processes
    included), record them `cancelled`; return every stage's row."""
    entries = _latest_entries(layouts)
    jobs = [e["job_id"] for _, _, e in entries if e.get("job_id") and e.get("status") not in FINAL]
    if jobs:
        result = subprocess.run(["scancel", *jobs], capture_output=True, text=True)
        if result.returncode != 0:
            raise ExecutorError(f"scancel failed: {result.stderr.strip()}")
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            states = scheduler_states(jobs)
            if not any(s in PENDING_STATES | RUNNING_STATES for s, _ in states.values()):
                break
            time.sleep(1)
        else:
            raise ExecutorError(f"jobs {', '.join(jobs)} still live {timeout_s:.0f} s after scancel")
    return refresh(layouts)


def status_json(rows: list[Row]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in rows], indent=2)


def executor_overrides(value: str | None) -> list[str]:
    """`--executor VALUE` as `--set` overrides: `local` or `slurm` (the backend), or a YAML file of executor
    keys (a cluster profile, e.g. partition, account, time, per-stage sections; backend slurm unless it says
    otherwise; an `executor:` mapping at its top is read as well). Checked here, so an error names the file."""
    if not value:
        return []
    if value in ("local", "slurm"):
        return [f"executor.backend={value}"]
    from sftlab.config import read_yaml

    path = paths.resolve(value)
    if not path.is_file():
        raise ParamsError(f"--executor {value}: expected local, slurm or a YAML file of executor keys; no such file")
    data = read_yaml(path)
    if set(data) == {"executor"} and isinstance(data["executor"], dict):
        data = data["executor"]
    data.setdefault("backend", "slurm")
    validate({"experiment": "profile", "executor": data}, {("executor",): str(path)}, default_source=str(path))
    return [f"executor.{key}={json.dumps(item)}" for key, item in data.items()]
