"""The score stage's inputs, read through the stores of the stages before it:

    generations/<checkpoint>.jsonl   sftlab.infer.store (one row per sample + degeneration metrics)
    judge/<checkpoint>.jsonl         sftlab.judge.store (the latest row per (checkpoint, id) wins)
    train/trainer_state.json         sftlab.train.views.training_curves

`per_sample(experiments)` joins them into one row per (experiment, checkpoint, id).
Raises `ScoreError` when a compared experiment has no generations.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sftlab import checkpoints, jsonl, paths
from sftlab.infer import store as generations_store
from sftlab.judge import store as judgments_store
from sftlab.judge.store import SCORE_PREFIX  # per-criterion columns: "score_정확성"
from sftlab.train.views import training_curves
from sftlab.errors import SftlabError



class ScoreError(SftlabError, ValueError):
    """Inputs that cannot be scored; the message names the experiment or checkpoint."""


def checkpoint_step(name: str) -> int:
    """The `step` column: a checkpoint's training step, -1 for the base model (so it sorts first)."""
    step = checkpoints.name_step(name)
    return -1 if step is None else step


def per_sample(experiments: list[str]) -> pd.DataFrame:
    """One row per (experiment, checkpoint, id): generation metrics joined with the latest judgment."""
    frames = []
    for experiment in experiments:
        layout = paths.ExperimentLayout.of(experiment)
        if not generations_store.generation_files(layout.generations):
            raise ScoreError(f"experiment '{experiment}': no generations in {layout.generations} "
                             "(run its infer stage first)")
        generations = pd.DataFrame([jsonl.utf8_safe(row.to_json())
                                    for row in generations_store.read_generations(layout.generations)])
        generations["experiment"] = experiment
        judgments = latest_judgments(layout)
        if judgments.empty:
            merged = generations.assign(judge_status="not_judged")
        else:
            merged = generations.merge(judgments, on=["checkpoint", "id"], how="left")
            merged["judge_status"] = merged["judge_status"].fillna("not_judged")
        frames.append(merged)
    samples = pd.concat(frames, ignore_index=True)
    meta = pd.json_normalize(samples["meta"].apply(lambda m: m if isinstance(m, dict) else {}))
    for column in ("lang", "category"):
        if column in meta:
            samples[column] = meta[column].values
    samples["step"] = samples["checkpoint"].map(checkpoint_step)
    samples["eos_terminated"] = samples["eos_terminated"].astype(float)
    return samples.sort_values(["experiment", "step", "id"], kind="stable").reset_index(drop=True)


def judgment_passes(folder: Path) -> pd.DataFrame:
    """The judge stage's latest row per (checkpoint, id, repeat) in `folder` (`layout.judge`, or
    `layout.pairwise_judge`), flattened: one row per pass."""
    records = []
    for (checkpoint, sample_id, repeat), row in judgments_store.latest_rows(folder).items():
        judged = row.status == "judged"
        record = {"checkpoint": checkpoint, "id": sample_id, "repeat": repeat, "judge_status": row.status,
                  "overall": row.overall if judged else None, "judge_error": row.error,
                  "judge_reasons": judgments_store.reasons_text(row.reasons) or None,
                  "cost_usd": row.cost_usd or 0.0, "judge_backend": row.judge.get("backend"),
                  "judge_model": row.judge.get("model")}
        if judged:
            record.update({SCORE_PREFIX + criterion: value for criterion, value in (row.scores or {}).items()})
        records.append(record)
    return pd.DataFrame(records)


def latest_judgments(layout: paths.ExperimentLayout) -> pd.DataFrame:
    """One row per (checkpoint, id) for joining: with several passes (judge.repeats), the mean of the
    judged passes' scores; `judged` when any pass was, the cost of all passes."""
    passes = judgment_passes(layout.judge)
    if passes.empty or passes["repeat"].max() == 0:
        return passes.drop(columns=["repeat"], errors="ignore")
    scored = [c for c in passes.columns if c.startswith(SCORE_PREFIX)] + ["overall"]
    passes[scored] = passes[scored].apply(pd.to_numeric, errors="coerce")
    judged = passes[passes["judge_status"] == "judged"]
    means = judged.groupby(["checkpoint", "id"], sort=False)[scored].mean()
    first = passes.sort_values("repeat").groupby(["checkpoint", "id"], sort=False).agg(
        judge_status=("judge_status", lambda s: "judged" if (s == "judged").any() else s.iloc[-1]),
        judge_error=("judge_error", lambda s: next((e for e in s if e), None)), cost_usd=("cost_usd", "sum"),
        judge_reasons=("judge_reasons", lambda s: next((r for r in s if r), None)),
        judge_backend=("judge_backend", "first"), judge_model=("judge_model", "first"))
    return first.join(means).reset_index()


def criteria_of(samples: pd.DataFrame) -> list[str]:
    return [c.removeprefix(SCORE_PREFIX) for c in samples.columns if c.startswith(SCORE_PREFIX)]


def training_history(experiments: list[str]) -> pd.DataFrame:
    """The train stage's curves of every experiment, one frame for overlaying."""
    frames = [training_curves(paths.ExperimentLayout.of(e).train).assign(experiment=e) for e in experiments]
    columns = ["experiment", "step", "loss", "grad_norm"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
