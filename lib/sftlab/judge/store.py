"""Judgment rows on disk: `outputs/<exp>/judge/<checkpoint>.jsonl`, one `JudgmentRow` per judgment,
written by the judge stage and read by it (resume, cache) and by the score stage — through here only.

Rows are only ever appended (sftlab.jsonl: flushed and fsynced one by one), so a killed run loses at
most the row being written. A re-run appends a repaired row after the failed one; the latest row per
(checkpoint, id, repeat) is the one that counts — `latest_rows` and `load_frame` return exactly those.
`repeat` is the pass number under `judge.repeats` (0 for the first and only pass by default).

Raises `JudgmentsError` (a ValueError) naming the file, line and field of a row that cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sftlab import jsonl
from sftlab.checkpoints import checkpoint_order
from sftlab.errors import SftlabError


class JudgmentsError(SftlabError, ValueError):
    """A judgment file with a row that cannot be read; the message names the file, line and field."""


class JudgmentRow(BaseModel):
    """One judgment of one (checkpoint, sample): scores and reasons, or why there are none."""

    model_config = ConfigDict(extra="ignore")

    key: str  # hash of (rubric, judge, prompt, reference, output): the cache key
    id: str
    checkpoint: str
    status: Literal["judged", "error", "not_judged"]
    judge: dict[str, Any] = {}  # {backend, model, rubric}
    scores: dict[str, int] | None = None  # criterion key -> score (None unless judged)
    reasons: dict[str, str] | None = None
    overall: float | None = None  # 0–1, the rubric's weighted mean of the scores
    error: str | None = None
    raw: str | None = None  # the judge's own text, kept to explain a surprising score (the last answer that came back)
    first_raw: str | None = None  # the first answer, when a repair request followed it and was answered
    usage: dict[str, Any] | None = None  # {prompt_tokens, completion_tokens}
    cost_usd: float | None = 0.0
    requests: int = 0
    structured: str | None = None  # the response_format mode that produced the answer
    metrics: dict[str, Any] | None = None  # the reference judge's raw measurements
    reused_from: str | None = None  # "<checkpoint>/<id>" whose judgment this row copies
    meta: dict[str, Any] = {}
    judged_at: str | None = None
    repeat: int = 0  # the pass (judge.repeats): the same row judged again, for self-consistency

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


FIELDS = tuple(JudgmentRow.model_fields)
# The one prefix of a criterion's score column, in every table of judgments or scores: "score_accuracy".
SCORE_PREFIX = "score_"


def reasons_text(reasons: dict[str, str] | None) -> str:
    """A row's reasons as text, one `criterion: reason` line each ('' when there are none)."""
    return "\n".join(f"{key}: {value}" for key, value in (reasons or {}).items())


def judgment_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: checkpoint_order(p.stem))


def read_file(path: Path) -> list[JudgmentRow]:
    try:
        numbered, problems = jsonl.read_models(path, JudgmentRow)
    except jsonl.RowsError as e:
        raise JudgmentsError(f"{e}; delete that line and re-run the judge stage to judge it again") from None
    if problems:
        raise JudgmentsError(problems[0])
    return [row for _, row in numbered]


def latest_rows(directory: Path) -> dict[tuple[str, str, int], JudgmentRow]:
    """(checkpoint, id, repeat) -> the last row written for it, in checkpoint order."""
    latest: dict[tuple[str, str, int], JudgmentRow] = {}
    for path in judgment_files(directory):
        for row in read_file(path):
            latest[(row.checkpoint, row.id, row.repeat)] = row
    return latest


def judged_by_key(directory: Path) -> dict[str, JudgmentRow]:
    """key -> the last *judged* row with that key, from any checkpoint: the cache."""
    return {row.key: row for path in judgment_files(directory) for row in read_file(path) if row.status == "judged"}


class Appender:
    """Appends rows to `<directory>/<checkpoint>.jsonl`, each flushed and fsynced."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._out = jsonl.Appender()

    def __enter__(self) -> "Appender":
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self._out.close()

    def append(self, row: JudgmentRow) -> None:
        self._out.append(self.directory / f"{row.checkpoint}.jsonl", row.to_json())


def load_frame(directory: Path):
    """One row per (checkpoint, id) — the latest — as a DataFrame, in checkpoint order.

    Besides the row fields, each criterion's score is a column `score_<key>` (NaN where unscored).
    """
    import pandas as pd

    rows = sorted(latest_rows(directory).values(), key=lambda r: (checkpoint_order(r.checkpoint), r.id, r.repeat))
    frame = pd.DataFrame([jsonl.utf8_safe(r.to_json()) for r in rows], columns=list(FIELDS))
    if frame.empty:
        return frame
    keys = list(dict.fromkeys(k for scores in frame["scores"] if isinstance(scores, dict) for k in scores))
    for key in keys:
        frame[SCORE_PREFIX + key] = [s.get(key) if isinstance(s, dict) else None for s in frame["scores"]]
        frame[SCORE_PREFIX + key] = frame[SCORE_PREFIX + key].astype("Float64")
    return frame
