"""Judgment rows on disk: `outputs/<exp>/judge/<checkpoint>.jsonl`, one JSON row per judgment.

Rows are only ever appended (and flushed one by one), so a killed run loses at most the row being
written. A re-run appends a repaired row after the failed one; the latest row per (checkpoint, id)
is the one that counts — `load_frame` (sftlab.judge.load_judgments) returns exactly those.

Row fields: key, id, checkpoint, status (judged | error | not_judged), judge {backend, model, rubric},
scores {criterion: int} | null, reasons {criterion: str} | null, overall (0–1 | null), error, raw,
usage {prompt_tokens, completion_tokens} | null, cost_usd, requests, structured, metrics, reused_from,
meta, judged_at.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sftlab.checkpoints import checkpoint_order

log = logging.getLogger("sftlab.judge")

FIELDS = ("key", "id", "checkpoint", "status", "judge", "scores", "reasons", "overall", "error", "raw", "usage",
          "cost_usd", "requests", "structured", "metrics", "reused_from", "meta", "judged_at")




def jsonl_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: checkpoint_order(p.stem))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a judge file; a line that is not a JSON object (a write cut short by a kill) is
    skipped with a warning naming the file and line — its judgment is redone on the next run."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "key" not in row:
                log.warning("%s:%d: not a judgment row (cut short?); skipped, it will be judged again", path, number)
                continue
            rows.append(row)
    return rows


def latest_rows(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(checkpoint, id) -> the last row written for it, in checkpoint order."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for path in jsonl_files(directory):
        for row in read_rows(path):
            latest[(str(row.get("checkpoint", path.stem)), str(row.get("id")))] = row
    return latest


def judged_by_key(directory: Path) -> dict[str, dict[str, Any]]:
    """key -> the last *judged* row with that key, from any checkpoint: the cache."""
    cache: dict[str, dict[str, Any]] = {}
    for path in jsonl_files(directory):
        for row in read_rows(path):
            if row.get("status") == "judged":
                cache[row["key"]] = row
    return cache


class Appender:
    """Appends rows to `<directory>/<checkpoint>.jsonl`, flushing after each."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._files: dict[str, Any] = {}

    def __enter__(self) -> "Appender":
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def append(self, row: dict[str, Any]) -> None:
        checkpoint = row["checkpoint"]
        f = self._files.get(checkpoint)
        if f is None:
            path = self.directory / f"{checkpoint}.jsonl"
            torn = False
            if path.exists() and path.stat().st_size > 0:
                with path.open("rb") as last:
                    last.seek(-1, 2)
                    torn = last.read(1) != b"\n"
            f = self._files[checkpoint] = path.open("a", encoding="utf-8")
            if torn:
                f.write("\n")  # end a line cut short by a kill, so it cannot swallow the next row
        f.write(json.dumps({k: row.get(k) for k in FIELDS}, ensure_ascii=False) + "\n")
        f.flush()


def load_frame(directory: Path):
    """One row per (checkpoint, id) — the latest — as a DataFrame, in checkpoint order.

    Besides the row fields, each criterion's score is a column `score_<key>` (NaN where unscored).
    """
    import pandas as pd

    rows = sorted(latest_rows(directory).values(),
                  key=lambda r: (checkpoint_order(str(r.get("checkpoint"))), str(r.get("id"))))
    frame = pd.DataFrame(rows, columns=list(FIELDS))
    if frame.empty:
        return frame
    keys = list(dict.fromkeys(k for scores in frame["scores"] if isinstance(scores, dict) for k in scores))
    for key in keys:
        frame[f"score_{key}"] = [s.get(key) if isinstance(s, dict) else None for s in frame["scores"]]
        frame[f"score_{key}"] = frame[f"score_{key}"].astype("Float64")
    return frame
