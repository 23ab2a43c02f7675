"""Where things live: the project root, the outputs folder, and one experiment's folders.

Relative paths in a params file (data files, rubrics, `base:`) are written as seen from the
project root, because that is where `sftlab run` starts the notebook kernels. A notebook opened
by hand elsewhere has another working directory, so `resolve` falls back to the root.

`ExperimentLayout` is the one owner of an experiment's on-disk layout: every stage, the runner,
the reports and the benchmarks ask it for a folder instead of joining names themselves.

Environment:
    SFTLAB_ROOT     the project root (default: the checkout this package was installed from)
    SFTLAB_OUTPUTS  the outputs folder (default: <root>/outputs)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# lib/sftlab/paths.py -> parents[2] is the checkout (the package is installed editable).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    return Path(os.environ.get("SFTLAB_ROOT", PACKAGE_ROOT)).resolve()


def outputs_root() -> Path:
    return Path(os.environ.get("SFTLAB_OUTPUTS", project_root() / "outputs")).resolve()


def notebooks_dir() -> Path:
    """The notebook templates (read-only: runs and hand copies are written under the experiment)."""
    return project_root() / "notebooks"


def experiment_dir(experiment: str) -> Path:
    return outputs_root() / experiment


STATUS_FILE = "status.json"  # an experiment folder holds one: the index lists the folders that do
SUMMARY_FILE = "summary.json"  # a judge run's summary, in the folder of its judgments
TRAIN_SUMMARY_FILE = "train_summary.json"  # written by the training process itself (sftlab.train.trainer)


@dataclass(frozen=True)
class ExperimentLayout:
    """The folders and files of one experiment, `outputs/<experiment>/`:

        config.resolved.yaml      the params as last run, every default spelled out
        status.json               per stage: the latest run and the history of runs
        train/                    checkpoints, trainer_state.json, train_summary.json, train.log, label_audit.html
        train.lock                while a trainer runs: who holds the experiment (sftlab.train.lock)
        generations/              <checkpoint>.jsonl + <checkpoint>.settings.json (infer)
        judge/                    <checkpoint>.jsonl + summary.json (judge); pairwise/ likewise (judge.mode: pairwise)
        labels/                   human labels, append-only (sftlab.labels)
        scores/                   summary.csv, differences.csv, study_table.csv, reliability.json, figures/
        runs/<UTC time>-<stage>/  the immutable record of one stage run: executed notebook, HTML, params
        reports/<stage>.html      the latest run's report (a copy of its record's HTML)
        notebooks/<stage>.ipynb   parameterized copies to open by hand (`sftlab notebook`)
    """

    root: Path

    @classmethod
    def of(cls, experiment: str) -> "ExperimentLayout":
        return cls(experiment_dir(experiment))

    @property
    def experiment(self) -> str:
        return self.root.name

    @property
    def resolved_params(self) -> Path:
        return self.root / "config.resolved.yaml"

    @property
    def status(self) -> Path:
        return self.root / STATUS_FILE

    @property
    def train(self) -> Path:
        return self.root / "train"

    def train_lock(self, node_rank: int | None = None) -> Path:
        """The lock of the trainer that writes into train/; one per node rank in a multi-node run (every
        node trains into the same folder on a shared filesystem)."""
        return self.root / ("train.lock" if node_rank is None else f"train.node{node_rank}.lock")

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def judge(self) -> Path:
        return self.root / "judge"

    @property
    def pairwise_judge(self) -> Path:
        return self.judge / "pairwise"

    def judgments(self, mode: str) -> Path:
        """The folder of the judgments of `judge.mode` `mode`: judge/ (single) or judge/pairwise/."""
        return self.pairwise_judge if mode == "pairwise" else self.judge

    def judge_summary(self, mode: str) -> Path:
        """The last judge run's summary (backend, counts, requests, cost) in that mode's folder."""
        return self.judgments(mode) / SUMMARY_FILE

    @property
    def train_summary(self) -> Path:
        return self.train / TRAIN_SUMMARY_FILE

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def figures(self) -> Path:
        return self.scores / "figures"

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def generations_file(self, checkpoint: str) -> Path:
        return self.generations / f"{checkpoint}.jsonl"

    def judge_file(self, checkpoint: str) -> Path:
        return self.judge / f"{checkpoint}.jsonl"

    def report(self, stage: str) -> Path:
        return self.reports / f"{stage}.html"


def resolve(path: str | os.PathLike) -> Path:
    """An existing path as given (absolute or from the working directory), else from the root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (project_root() / path).resolve()
