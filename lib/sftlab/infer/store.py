"""Generation rows on disk: `outputs/<exp>/generations/<checkpoint>.jsonl`, written by the infer stage,
read by the judge and score stages — through this module only.

    <checkpoint>.jsonl          one `GenerationRow` per sample (sftlab.jsonl: append-only, fsynced)
    <checkpoint>.settings.json  what the rows were generated with (model, weights, dtype, settings)
                                and the run that generated them

A row: id, checkpoint, prompt (the chat messages), reference, output, n_tokens, finish_reason
(eos | length), meta (the dataset row's other columns, e.g. lang), eos_terminated, and every metric
of `sftlab.metrics.METRICS`. `n_tokens` counts the generated tokens before the stop token; the n-gram
metrics are computed on the same tokens.

Raises `GenerationsError` (a ValueError) for a file whose rows cannot be read or validated, naming
the file, the line and the field.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, create_model, field_validator

from sftlab import jsonl
from sftlab.checkpoints import checkpoint_order
from sftlab.clock import utc_stamp
from sftlab.files import atomic_write_text
from sftlab.metrics import METRICS
from sftlab.errors import SftlabError


class GenerationsError(SftlabError, ValueError):
    """Generations that cannot be read; the message names the file, the line and the field."""


class _GenerationFields(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    checkpoint: str
    prompt: list[dict[str, Any]]  # chat messages, each {role, content}
    reference: str
    output: str
    n_tokens: int
    finish_reason: Literal["eos", "length"]
    meta: dict[str, Any] = {}
    eos_terminated: bool

    @field_validator("prompt")
    @classmethod
    def _messages(cls, prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(not isinstance(m.get("content"), str) for m in prompt):
            raise ValueError("expected a list of {role, content} messages")
        return prompt

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# The metric columns come from the one list of them (sftlab.metrics.METRICS).
GenerationRow = create_model("GenerationRow", __base__=_GenerationFields,
                             __doc__="One generated answer with its degeneration metrics.",
                             **{name: (float, ...) for name in METRICS})


def generation_files(folder: Path) -> list[Path]:
    """The `<checkpoint>.jsonl` files of a generations folder: base first, then by step."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.jsonl"), key=lambda p: checkpoint_order(p.stem))


def read_file(path: Path) -> list[GenerationRow]:
    """The rows of one generations file, validated; raises `GenerationsError` naming every bad line."""
    rows, seen = [], set()
    try:
        numbered, problems = jsonl.read_models(path, GenerationRow)
    except jsonl.RowsError as e:
        raise GenerationsError(f"{e}; delete that line and re-run the infer stage to generate it again") from None
    for number, row in numbered:
        if row.checkpoint != path.stem:
            problems.append(f"{path}:{number}: field 'checkpoint' is '{row.checkpoint}' in the file of '{path.stem}'")
        elif row.id in seen:
            problems.append(f"{path}:{number}: field 'id': '{row.id}' appears twice")
        else:
            seen.add(row.id)
            rows.append(row)
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise GenerationsError("unreadable generation rows:\n  " + "\n  ".join(problems[:20]) + more)
    return rows


def read_generations(folder: Path) -> list[GenerationRow]:
    """Every generation row of an experiment, base first then by step, each file in written order."""
    files = generation_files(folder)
    if not files:
        raise GenerationsError(f"{folder}: no generations (*.jsonl); run the infer stage first")
    return [row for path in files for row in read_file(path)]


def written_ids(path: Path) -> set[str]:
    """The sample ids already generated into `path` (its torn last line, if any, does not count)."""
    return {row.id for row in read_file(path)}


# --------------------------------------------------------------------------------------------
# What a file was generated with: stale rows are set aside, never mixed or deleted
# --------------------------------------------------------------------------------------------


def settings_file(path: Path) -> Path:
    return path.with_name(f"{path.stem}.settings.json")


def read_settings(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(settings_file(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(path: Path, fingerprint: dict[str, Any]) -> bool:
    """Rows exist in `path` but were generated with another model, weights, dtype or settings."""
    if not path.exists():
        return False
    return (read_settings(path) or {}).get("fingerprint") != fingerprint


def write_settings(path: Path, fingerprint: dict[str, Any], run: str | None = None) -> None:
    """The fingerprint, and the run record that generates these rows (`run`, default `SFTLAB_RUN`, set by
    the runner)."""
    record = {"fingerprint": fingerprint, "run": run or os.environ.get("SFTLAB_RUN")}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(settings_file(path), json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def set_aside(path: Path, fingerprint: dict[str, Any], echo: Callable[[str], None]) -> Path:
    """Move `path` and its settings to `generations/previous-<time>/`; the settings file goes with the
    rows, so the set-aside folder still names the run that made them."""
    previous = (read_settings(path) or {}).get("fingerprint") or {}
    aside = path.parent / f"previous-{utc_stamp()}"
    aside.mkdir(exist_ok=True)
    for file in (path, settings_file(path)):
        if file.exists():
            shutil.move(str(file), aside / file.name)
    changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
    echo(f"[sftlab] {path.stem}: generated with other {', '.join(changed)}; old rows moved to {aside}")
    return aside
