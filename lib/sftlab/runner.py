"""Run an experiment: each stage's notebook executed by papermill, rendered to HTML, indexed.

    sftlab run params/demo.yaml [--stages train,infer] [--set train.max_steps=5]
    sftlab run params/studies/collator/          # every params file in the folder, in name order,
                                                 # then one score over all of them (<folder>-study)

For each stage, in the order train -> infer -> judge -> score (those whose notebook exists):
    outputs/<exp>/config.resolved.yaml      the params as run (written before the first stage)
    outputs/<exp>/notebooks/<stage>.ipynb   the executed notebook (saved after every cell)
    outputs/<exp>/reports/<stage>.html      rendered with nbconvert (+ <stage>.no-input.html)
    outputs/<exp>/status.json               per stage: done / failed / running, times, error
    outputs/index.html                      rebuilt after each stage

The kernel is named explicitly: `sftlab` (registered by `make setup`) unless SFTLAB_KERNEL says
otherwise. Raises `StageFailed` at the first failing stage, with the failing cell's error and the
path of the executed notebook; the stages after it are not run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from sftlab import kernel as sftlab_kernel
from sftlab import paths, reports
from sftlab.config import Params, apply_overrides, atomic_write_text, load_params, read_yaml, validate, write_resolved

STAGES = ("train", "infer", "judge", "score")
STUDY_FILE = "_study.yaml"  # optional settings of a study folder's joint score (not an experiment)
DEFAULT_KERNEL = "sftlab"

log = logging.getLogger("sftlab.runner")


class StageFailed(RuntimeError):
    """A stage's notebook raised; the message has the cell's error and the executed notebook."""


def kernel_name() -> str:
    return os.environ.get("SFTLAB_KERNEL", DEFAULT_KERNEL)


def available_stages(notebooks: Path | None = None) -> list[str]:
    notebooks = notebooks or paths.notebooks_dir()
    return [stage for stage in STAGES if (notebooks / f"{stage}.ipynb").exists()]


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


def run(
    target: str | os.PathLike,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    kernel: str | None = None,
    notebooks: Path | None = None,
) -> list[Params]:
    """Run the given stages (default: all that exist) of one params file or a study folder."""
    notebooks = notebooks or paths.notebooks_dir()
    known = available_stages(notebooks)
    stages = list(stages or known)
    missing = [s for s in stages if s not in known]
    if missing:
        raise ValueError(f"unknown stage(s) {', '.join(missing)}; stages with a notebook: {', '.join(known)}")
    # Validate every file before running anything: a typo in the last file of a study should not
    # be found an hour in.
    files = params_files(target)
    experiments = [load_params(f, overrides) for f in files]
    study = paths.resolve(target) if paths.resolve(target).is_dir() else None
    study_params = study_score_params(study, experiments, overrides) if study and "score" in stages else None
    for params, file in zip(experiments, files):
        for stage in stages:
            if not (study and stage == "score"):  # a study is scored once, over all its experiments
                run_stage(params, stage, kernel=kernel, notebooks=notebooks, params_file=file)
    if study_params is not None:
        run_stage(study_params, "score", kernel=kernel, notebooks=notebooks, params_file=study)
        experiments.append(study_params)
    return experiments


def study_score_params(study: Path, experiments: list[Params], overrides: list[str] | None) -> Params:
    """The params of a study's score: `<study>/_study.yaml` if present (e.g. `score.baseline`), with
    `experiment: <folder>-study` and `score.experiments` = every experiment of the folder by default."""
    settings = read_yaml(study / STUDY_FILE) if (study / STUDY_FILE).exists() else {}
    settings.setdefault("experiment", f"{study.name}-study")
    settings.setdefault("seed", experiments[0].seed)
    score = settings.setdefault("score", {})
    score.setdefault("experiments", [p.experiment for p in experiments])
    sources: dict[tuple, str] = {}
    settings = apply_overrides(settings, [o for o in overrides or [] if o.startswith("score.")], sources)
    return validate(settings, sources, default_source=str(study / STUDY_FILE))


def run_stage(
    params: Params,
    stage: str,
    kernel: str | None = None,
    notebooks: Path | None = None,
    params_file: Path | None = None,
) -> Path:
    """Execute one stage notebook for `params`; return the executed notebook's path."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    kernel = sftlab_kernel.ensure(kernel or os.environ.get("SFTLAB_KERNEL"))
    exp_dir = params.output_dir
    resolved = write_resolved(params, exp_dir)
    source = (notebooks or paths.notebooks_dir()) / f"{stage}.ipynb"
    executed = exp_dir / "notebooks" / f"{stage}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)

    started = time.time()
    _set_status(exp_dir, stage, status="running", started=_iso(started), params_file=params_file)
    reports.build_index()
    log.info("[%s] stage %s: %s -> %s (kernel %s)", params.experiment, stage, source, executed, kernel)
    error = None
    try:
        papermill.execute_notebook(
            str(source),
            str(executed),
            parameters={**params.to_dict(), "params_file": str(resolved)},
            kernel_name=kernel,
            cwd=str(paths.project_root()),
            log_output=True,
            progress_bar=False,
        )
    except PapermillExecutionError as e:
        error = f"cell {e.exec_count}: {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, notebook unreadable...: still record and render what exists
        error = f"{type(e).__name__}: {e}"
    finished = time.time()

    if executed.exists():
        reports.render_notebook(executed, exp_dir / "reports")
    _set_status(
        exp_dir,
        stage,
        status="failed" if error else "done",
        started=_iso(started),
        finished=_iso(finished),
        seconds=round(finished - started, 1),
        error=error,
        params_file=params_file,
    )
    reports.build_index()
    if error:
        raise StageFailed(
            f"[{params.experiment}] stage '{stage}' failed in {error}\n"
            f"executed notebook: {executed}\nreport: {exp_dir / 'reports' / (stage + '.html')}"
        )
    return executed


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise StageFailed(
            f"Jupyter kernel '{name}' is not registered. Run `make setup` (registers 'sftlab' for .venv) "
            f"or set SFTLAB_KERNEL to an installed kernel (`jupyter kernelspec list`)."
        ) from None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def read_status(exp_dir: Path) -> dict:
    try:
        return json.loads((exp_dir / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {"stages": {}}


def _set_status(exp_dir: Path, stage: str, params_file: Path | None = None, **fields) -> None:
    status = read_status(exp_dir)
    status["experiment"] = exp_dir.name
    if params_file is not None:
        status["params_file"] = str(params_file)
    status.setdefault("stages", {})[stage] = {k: v for k, v in fields.items() if v is not None}
    atomic_write_text(exp_dir / "status.json", json.dumps(status, indent=2, ensure_ascii=False) + "\n")
