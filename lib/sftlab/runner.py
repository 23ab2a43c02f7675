"""Run an experiment: each stage's notebook executed by papermill, rendered to HTML, recorded, indexed.

    sftlab run params/demo.yaml [--stages train,infer] [--set train.max_steps=5]
    sftlab run params/studies/collator/          # every params file in the folder, in name order,
                                                 # then one score over all of them (<folder>-study)
    sftlab notebook params/demo.yaml --stage train [--set ...]   # a parameterized copy to open by hand

The templates in notebooks/ are only read. For each stage, in the order train -> infer -> judge -> score
(those whose notebook exists), under the experiment's folder (`params.layout`, outputs/<exp>/):
    config.resolved.yaml                the params as run (written before the stage)
    runs/<UTC time>-<stage>/            the run's record, never overwritten (a second run in the same
                                        second gets -2, -3...):
        <stage>.ipynb                   the executed notebook (saved after every cell)
        <stage>.html, .no-input.html    rendered with nbconvert
        config.resolved.yaml            the params of this run
        run.json                        its status entry and the kernel it ran on
    reports/<stage>.html (+ .no-input)  the latest run's reports (copies of its record's)
    status.json                         per stage: the latest run's entry (status, started, finished,
                                        seconds, error, params_file, run) and `history`, every run's
                                        entry, oldest first
outputs/index.html                      rebuilt before and after each stage

`notebook_copy` (`sftlab notebook`) writes outputs/<exp>/notebooks/<stage>.ipynb: the template with the
parameters a run would inject, not executed, on this checkout's kernel, and its params beside it
(notebooks/<stage>.params.yaml). Run by hand, the notebook's validation cell calls `run_record`, which leaves
a run record like a batch run's (runs/<UTC time>-<stage>/ with the params of that run and run.json, status
`by hand`, in status.json's history) and never rewrites config.resolved.yaml, which stays the params the
runner last ran.

Kernel: this environment's own (`sftlab.kernel.name()`, registered if missing) unless --kernel or
SFTLAB_KERNEL names another; `sftlab.kernel.ensure` raises `KernelError` before anything is written if
the kernel's interpreter is another environment or imports another checkout's sftlab. While a stage runs,
its kernel sees SFTLAB_RUN (the run folder) and SFTLAB_EXPECT_PACKAGE (this sftlab's package folder).
Terminal: papermill logs each cell's printed output as it comes (`log_output`); the stages print their
progress as text lines there (sftlab.progress). A stage that prints nothing for QUIET_S seconds (imports,
a long step) gets a `still running` line from the runner, so the terminal never looks dead.
Raises `StageFailed` at the first failing stage, with the failing cell's error and the paths of the
executed notebook and its report; the stages after it are not run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sftlab import kernel as sftlab_kernel
from sftlab import paths, record, reports
from sftlab.clock import utc_iso, utc_stamp
from sftlab.stages import BY_NAME, STAGES
from sftlab.config import Params, apply_overrides, load_params, read_yaml, validate, write_resolved
from sftlab.files import atomic_write_text
from sftlab.errors import SftlabError

STUDY_FILE = "_study.yaml"  # optional settings of a study folder's joint score (not an experiment)
KERNEL_ENV = "SFTLAB_KERNEL"  # a kernel name to use instead of this environment's own
RUN_ENV = record.RUN_ENV  # the run folder, for the stage code in the kernel (sftlab.record)
# A stage run's status. The index shows any string (its CSS class is derived from it).
RUNNING, DONE, FAILED = "running", "done", "failed"
DONE_WITH_ERRORS = "done with errors"  # the notebook ran through, but the stage noted problems (sftlab.record)
BY_HAND = "by hand"  # a notebook run in Jupyter: its end is not tracked (run_record)
QUIET_S = 20.0  # after this long without output from a stage, the runner says it is still running

log = logging.getLogger("sftlab.runner")


class StageFailed(SftlabError, RuntimeError):
    """A stage's notebook raised; the message has the cell's error and the executed notebook."""


def available_stages(notebooks: Path | None = None) -> list[str]:
    notebooks = notebooks or paths.notebooks_dir()
    return [stage for stage in STAGES if (notebooks / f"{stage}.ipynb").exists()]


def _check_stages(stages: list[str], notebooks: Path) -> None:
    known = available_stages(notebooks)
    missing = [s for s in stages if s not in known]
    if missing:
        raise ValueError(f"unknown stage(s) {', '.join(missing)}; stages with a notebook: {', '.join(known)}")


def params_files(target: str | os.PathLike) -> list[Path]:
    """One params file, or every *.yaml in a study folder (name order)."""
    target = paths.resolve(target)
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("_"))
        if not files:
            raise FileNotFoundError(f"{target}: no params files (*.yaml) in this folder")
        return files
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such params file")
    return [target]


@dataclass
class LoadedRun:
    """A run's validated inputs: the stages, each params file and its params, and a study's joint score."""

    stages: list[str]
    files: list[Path]
    experiments: list[Params]
    notebooks: Path
    study: Path | None = None
    study_params: Params | None = None


def load_run(
    target: str | os.PathLike,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    notebooks: Path | None = None,
) -> LoadedRun:
    """Validate every params file of `target` (and the study's score settings) before anything runs: a typo
    in the last file of a study should not be found an hour in."""
    notebooks = notebooks or paths.notebooks_dir()
    stages = list(stages or available_stages(notebooks))
    _check_stages(stages, notebooks)
    files = params_files(target)
    experiments = [load_params(f, overrides) for f in files]
    study = paths.resolve(target) if paths.resolve(target).is_dir() else None
    joint = study and any(not BY_NAME[stage].per_experiment for stage in stages)
    study_params = study_params_of(study, experiments, overrides) if joint else None
    return LoadedRun(stages, files, experiments, notebooks, study, study_params)


def run(
    target: str | os.PathLike,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    kernel: str | None = None,
    notebooks: Path | None = None,
) -> list[Params]:
    """Run the given stages (default: all that exist) of one params file or a study folder, here."""
    return run_loaded(load_run(target, stages, overrides, notebooks), kernel=kernel)


def run_loaded(loaded: LoadedRun, kernel: str | None = None) -> list[Params]:
    experiments = list(loaded.experiments)
    # A study runs a stage that compares experiments once, over all of them (sftlab.stages).
    joint = [stage for stage in loaded.stages if loaded.study and not BY_NAME[stage].per_experiment]
    for params, file in zip(experiments, loaded.files):
        for stage in loaded.stages:
            if stage not in joint:
                run_stage(params, stage, kernel=kernel, notebooks=loaded.notebooks, params_file=file)
    if loaded.study_params is not None:
        for stage in joint:
            run_stage(loaded.study_params, stage, kernel=kernel, notebooks=loaded.notebooks, params_file=loaded.study)
        experiments.append(loaded.study_params)
    return experiments


def study_params_of(study: Path, experiments: list[Params], overrides: list[str] | None) -> Params:
    """The params of a study's score: `<study>/_study.yaml` if present (e.g. `score.baseline`), with
    `experiment: <folder>-study`, `score.experiments` = every experiment of the folder and `executor` = the first
    experiment's by default; `--set score.*` and `--set executor.*` apply to it too."""
    settings = read_yaml(study / STUDY_FILE) if (study / STUDY_FILE).exists() else {}
    settings.setdefault("experiment", f"{study.name}-study")
    settings.setdefault("seed", experiments[0].seed)
    score = settings.setdefault("score", {})
    score.setdefault("experiments", [p.experiment for p in experiments])
    # Where it runs: the study's own executor section if it has one, else its experiments' (the first's).
    settings.setdefault("executor", experiments[0].executor.model_dump(mode="json"))
    sources: dict[tuple, str] = {}
    settings = apply_overrides(settings, [o for o in overrides or [] if o.startswith(("score.", "executor."))], sources)
    return validate(settings, sources, default_source=str(study / STUDY_FILE))


def injected_parameters(params: Params, resolved: Path) -> dict:
    """What papermill injects into a stage notebook: every resolved key, over `params_file` = the
    experiment's config.resolved.yaml."""
    return {**params.to_dict(), "params_file": str(resolved)}


def run_stage(
    params: Params,
    stage: str,
    kernel: str | None = None,
    notebooks: Path | None = None,
    params_file: Path | None = None,
    run_dir: Path | None = None,
    job: dict | None = None,
) -> Path:
    """Execute one stage notebook for `params` into a new run record (or into `run_dir`, the record a cluster
    job was submitted with; `job` adds its keys to the status entry: sftlab.executor); return the executed
    notebook's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from sftlab import notebook_engine

    kernel = sftlab_kernel.ensure(kernel or os.environ.get(KERNEL_ENV))
    layout = params.layout
    source = (notebooks or paths.notebooks_dir()) / f"{stage}.ipynb"
    resolved = write_resolved(params)
    started = time.time()
    run_dir = run_dir or new_run_dir(layout, stage, started)
    write_resolved(params, run_dir)
    executed = run_dir / f"{stage}.ipynb"
    entry = {"status": RUNNING, "started": utc_iso(started), "finished": None, "seconds": None, "error": None,
             "params_file": str(params_file) if params_file else None, "run": run_dir.relative_to(layout.root).as_posix(),
             **(job or {})}
    record_entry(layout, stage, entry, kernel)
    reports.build_index()
    log.info("[%s] stage %s: %s -> %s (kernel %s)", params.experiment, stage, source, executed, kernel)
    error = None
    try:
        with _environment({RUN_ENV: str(run_dir), sftlab_kernel.EXPECT_PACKAGE_ENV: str(sftlab_kernel.package_dir())}), \
                _QuietWatch(f"[{params.experiment}] {stage}"):
            papermill.execute_notebook(
                str(source),
                str(executed),
                parameters=injected_parameters(params, resolved),
                kernel_name=kernel,
                cwd=str(paths.project_root()),
                log_output=True,
                progress_bar=False,
                engine_name=notebook_engine.register(),  # papermill's, writing the notebook less often
            )
    except PapermillExecutionError as e:
        error = f"cell {e.exec_count}: {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, notebook unreadable...: still record and render what exists
        error = f"{type(e).__name__}: {e}"
    finished = time.time()

    pages = reports.render_notebook(executed, run_dir) if executed.exists() else []
    reports.publish_latest(pages, layout.reports, stage)
    problems = record.read_problems(run_dir)
    status = FAILED if error else DONE_WITH_ERRORS if problems else DONE
    entry.update(status=status, finished=utc_iso(finished), seconds=round(finished - started, 1), error=error,
                 problems=problems or None)
    record_entry(layout, stage, entry, kernel)
    reports.build_index()
    if error:
        report = run_dir / f"{stage}.html"
        raise StageFailed(
            f"[{params.experiment}] stage '{stage}' failed in {error}\n"
            f"executed notebook: {executed}\nreport: {report if report.exists() else 'none (nothing to render)'}"
        )
    return executed


def notebook_copy(params: Params, stage: str, notebooks: Path | None = None, force: bool = False) -> Path:
    """Write `outputs/<exp>/notebooks/<stage>.ipynb`, a copy of the template to open by hand: the
    parameters a run would inject (papermill's prepare-only, nothing executed) and this checkout's kernel
    in its metadata. Writes config.resolved.yaml (the copy's `params_file`) and registers the kernel if
    missing. Raises FileExistsError if a copy is already there (it may hold edits) unless `force`. Writes the
    copy's `params_file`, notebooks/<stage>.params.yaml, never config.resolved.yaml."""
    import nbformat
    import papermill

    notebooks = notebooks or paths.notebooks_dir()
    _check_stages([stage], notebooks)
    target = params.layout.notebooks / f"{stage}.ipynb"
    if target.exists() and not force:
        raise FileExistsError(f"{target}: a copy is already there and may hold your edits; open it, or pass "
                              f"--force to write a fresh copy over it")
    kernel = sftlab_kernel.ensure()
    target.parent.mkdir(parents=True, exist_ok=True)
    resolved = write_resolved(params, target.parent, f"{stage}.params.yaml")
    papermill.execute_notebook(str(notebooks / f"{stage}.ipynb"), str(target), prepare_only=True, kernel_name=kernel,
                               parameters=injected_parameters(params, resolved), progress_bar=False)
    nb = nbformat.read(target, as_version=4)
    nb.metadata.kernelspec = sftlab_kernel.kernelspec_metadata()  # the template's is a generic one
    atomic_write_text(target, nbformat.writes(nb))
    return target


def run_record(params: Params, stage: str) -> Path:
    """The record of the stage run in this kernel: the runner's (SFTLAB_RUN), or, for a notebook run by hand,
    a new one: runs/<UTC time>-<stage>/ with this run's params and run.json (status `by hand`, also in
    status.json's history; the index shows it), and SFTLAB_RUN set for the stage code (made_by.json, problems
    noted). Called by every notebook's validation cell; a second call in the same kernel returns the same."""
    current = record.current_run()
    if current is not None:
        return current
    layout = params.layout
    started = time.time()
    run_dir = new_run_dir(layout, stage, started)
    write_resolved(params, run_dir)
    entry = {"status": BY_HAND, "started": utc_iso(started), "run": run_dir.relative_to(layout.root).as_posix()}
    record_entry(layout, stage, entry, sftlab_kernel.name())
    os.environ[RUN_ENV] = str(run_dir)
    reports.build_index()
    return run_dir


def new_run_dir(layout: paths.ExperimentLayout, stage: str, started: float) -> Path:
    """runs/<UTC time>-<stage>, or -2, -3... after it when that second already has one (mkdir is atomic,
    so two runners never share a folder)."""
    stamp = utc_stamp(started)
    layout.runs.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        run_dir = layout.runs / (f"{stamp}-{stage}" if n == 1 else f"{stamp}-{stage}-{n}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class _QuietWatch(logging.Handler):
    """While a stage runs: notes the time of papermill's every log line (a cell starting, a printed line) and
    which cell runs; after `quiet_s` seconds without one, logs `<label>: still running cell N, ...`."""

    def __init__(self, label: str, quiet_s: float = QUIET_S):
        super().__init__(level=logging.DEBUG)
        self.label, self.quiet_s = label, quiet_s
        self.started = self.last = time.monotonic()
        self.cell = "?"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="sftlab-quiet-watch")

    def emit(self, record: logging.LogRecord) -> None:
        self.last = time.monotonic()
        message = record.getMessage()
        if message.startswith("Executing Cell "):
            self.cell = message.removeprefix("Executing Cell ").strip("- ")

    def _watch(self) -> None:
        while not self.done.wait(1.0):
            now = time.monotonic()
            if now - self.last >= self.quiet_s:
                self.last = now
                log.info("%s: still running cell %s, %.0f s without output (%.0f s into the stage)",
                         self.label, self.cell, self.quiet_s, now - self.started)

    def __enter__(self) -> "_QuietWatch":
        logging.getLogger("papermill").addHandler(self)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        logging.getLogger("papermill").removeHandler(self)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables (inherited by the kernel papermill starts) and restore them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_status(exp_dir: Path) -> dict:
    try:
        return json.loads(paths.ExperimentLayout(exp_dir).status.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {"stages": {}}


def record_entry(layout: paths.ExperimentLayout, stage: str, entry: dict, kernel: str | None) -> None:
    """Write the run's entry into its record (run.json) and into status.json: as the stage's latest, and
    in its history (replacing the entry of the same run, e.g. `running` by `done`). status.json is read,
    changed and written under its lock (record.status_lock): a cluster's jobs and `sftlab status` write it too."""
    entry = {k: v for k, v in entry.items() if v is not None}
    _write_run_json(layout, stage, entry, kernel)
    with record.status_lock(layout.root):
        _write_status(layout, stage, entry)


def _write_run_json(layout: paths.ExperimentLayout, stage: str, entry: dict, kernel: str | None) -> None:
    atomic_write_text(layout.root / entry["run"] / "run.json", json.dumps(
        {"experiment": layout.experiment, "stage": stage, "kernel": kernel, **entry}, indent=2, ensure_ascii=False) + "\n")


def update_entry(layout: paths.ExperimentLayout, stage: str, run: str, changes: dict, expect: str | None = None) -> bool:
    """Change the stage's latest entry, if it is the run `run` (runs/<name>) and, with `expect`, its status is
    still `expect` (a job may have recorded its own news since it was read); return whether it was changed."""
    with record.status_lock(layout.root):
        entry = read_status(layout.root).get("stages", {}).get(stage)
        if not entry or entry.get("run") != run or (expect is not None and entry.get("status") != expect):
            return False
        entry = {k: v for k, v in {**entry, **changes}.items() if k != "history" and v is not None}
        try:
            kernel = json.loads((layout.root / run / "run.json").read_text(encoding="utf-8")).get("kernel")
        except (OSError, json.JSONDecodeError):
            kernel = None
        _write_run_json(layout, stage, entry, kernel)
        _write_status(layout, stage, entry)
    return True


def _write_status(layout: paths.ExperimentLayout, stage: str, entry: dict) -> None:
    status = read_status(layout.root)
    status["experiment"] = layout.experiment
    if "params_file" in entry:
        status["params_file"] = entry["params_file"]
    stages = status.setdefault("stages", {})
    history = [e for e in stages.get(stage, {}).get("history", []) if e.get("run") != entry["run"]]
    stages[stage] = {**entry, "history": [*history, entry]}
    atomic_write_text(layout.status, json.dumps(status, indent=2, ensure_ascii=False) + "\n")
