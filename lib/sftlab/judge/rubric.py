"""Rubrics: what the judge is told, what it scores, and the schema of its answer.

A rubric is a YAML file (`params/rubrics/qa_ko.yaml`): `name`, `language`, `system_prompt`,
`user_template` (with `{conversation}`, `{reference}` and `{output}`), and `criteria`, each with a
`key`, a `name`, a `description`, a `scale` [lowest, highest] and, for the offline judge, a
`reference_metric`. From it come:

    evaluation_model()   the pydantic `Evaluation`: per criterion {reason, score} — the reason comes
                         first so that the judge argues before it commits to a number
    response_schema()    the same as a strict JSON schema, sent as `response_format`
    messages(...)        the chat messages for one judgment, the JSON shape stated in the prompt in
                         every mode: a server that silently ignores `response_format` (transformers
                         serve) still gets valid answers from a model that follows instructions
    parse(text)          the judge's raw text -> scores and reasons, or `InvalidJudgment`

`load_rubric` raises `RubricError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from sftlab import paths
from sftlab.errors import SftlabError

Mode = Literal["json_schema", "json_object", "prompt"]
# Placeholders the user message must have; filled with str.replace so braces in answers are harmless.
PLACEHOLDERS = ("{conversation}", "{reference}", "{output}")


class RubricError(SftlabError, ValueError):
    """A rubric file that cannot be used; the message names the file and the field."""


class InvalidJudgment(SftlabError, ValueError):
    """The judge's text is not a valid evaluation; the message says what is wrong, for a repair prompt."""


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # An ASCII key: it is a JSON property name sent to the server and a column name downstream.
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    scale: tuple[int, int] = (1, 5)
    reference_metric: str | None = None  # see sftlab.judge.reference.METRICS

    @field_validator("scale")
    @classmethod
    def _ordered(cls, scale: tuple[int, int]) -> tuple[int, int]:
        if scale[0] >= scale[1]:
            raise ValueError(f"expected [lowest, highest] with lowest < highest, got {list(scale)}")
        return scale


class PromptTemplate(BaseModel):
    """What every rubric file has: a name, a language, the system prompt, the user template and its
    placeholders (`PLACEHOLDERS` of the subclass), and a content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PLACEHOLDERS: ClassVar[tuple[str, ...]] = PLACEHOLDERS

    name: str = Field(min_length=1)
    language: str = Field(min_length=2)  # ISO 639-1: the language answers should be in
    system_prompt: str = Field(min_length=1)
    user_template: str

    @field_validator("user_template")
    @classmethod
    def _has_placeholders(cls, template: str) -> str:
        missing = [p for p in cls.PLACEHOLDERS if p not in template]
        if missing:
            raise ValueError(f"missing placeholder(s) {', '.join(missing)}")
        return template

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the content (not the path): editing a rubric re-judges, moving it does not."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Rubric(PromptTemplate):
    criteria: tuple[Criterion, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_keys(self) -> "Rubric":
        keys = [c.key for c in self.criteria]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"criteria: duplicate key(s) {', '.join(duplicates)}")
        return self

    # ---- identity --------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.criteria]

    # ---- schema ----------------------------------------------------------------------------

    @cached_property
    def evaluation_model(self) -> type[BaseModel]:
        """The pydantic `Evaluation` for this rubric: one {reason, score} object per criterion."""
        fields: dict[str, Any] = {}
        for c in self.criteria:
            low, high = c.scale
            item = create_model(
                f"{c.key.title().replace('_', '')}Judgment",
                __config__=ConfigDict(extra="forbid"),
                reason=(str, Field(description=f"Why this score, in one or two sentences: {c.name}")),
                score=(int, Field(ge=low, le=high, description=f"{c.name}: an integer from {low} to {high}")),
            )
            fields[c.key] = (item, Field(description=f"{c.name}: {c.description}"))
        return create_model("Evaluation", __config__=ConfigDict(extra="forbid"), **fields)

    def response_schema(self) -> dict[str, Any]:
        """Strict JSON schema of `evaluation_model`, written out inline (no $ref) as structured
        outputs want it: every property required, no additional properties."""
        properties = {}
        for c in self.criteria:
            low, high = c.scale
            properties[c.key] = {
                "type": "object",
                "description": f"{c.name}: {c.description}",
                "properties": {
                    "reason": {"type": "string", "description": "Why this score, in one or two sentences"},
                    "score": {"type": "integer", "minimum": low, "maximum": high,
                              "description": f"An integer from {low} to {high}"},
                },
                "required": ["reason", "score"],
                "additionalProperties": False,
            }
        return {"type": "object", "properties": properties, "required": self.keys, "additionalProperties": False}

    # ---- prompt ----------------------------------------------------------------------------

    def criteria_text(self) -> str:
        return "\n".join(
            f"- {c.name} (`{c.key}`, {c.scale[0]}–{c.scale[1]}): {c.description.strip()}" for c in self.criteria
        )

    def format_instruction(self) -> str:
        """The answer's JSON shape, for the prompt: keys and types from `response_schema`."""
        # The shape is shown with placeholders, not numbers: an example score would anchor the judge.
        shape = ", ".join(f'"{c.key}": {{"reason": "...", "score": <{c.scale[0]}-{c.scale[1]}>}}' for c in self.criteria)
        return (
            "Reply with one JSON object and nothing else (no code fences, no text around it). "
            "It must follow this JSON schema:\n```json\n"
            + json.dumps(self.response_schema(), ensure_ascii=False)
            + "\n```\nShape: {" + shape + "}"
        )

    def messages(self, prompt: list[dict], reference: str, output: str, shape: bool = True) -> list[dict[str, str]]:
        """The same text in every structured-output mode (the mode changes only the request's
        `response_format`): the shape is
        in the prompt even under json_schema, because some servers answer 200 and ignore `response_format`,
        and json_object promises JSON, not which JSON (OpenAI also wants the word "JSON" in the messages).
        `shape=False` leaves it out: the capability probe (sftlab.judge.probe) asks that way to see whether
        the server itself enforces the schema."""
        system = f"{self.system_prompt.strip()}\n\n{self.criteria_text()}"
        if shape:
            system += "\n\n" + self.format_instruction()
        conversation = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
        user = (self.user_template.replace("{conversation}", conversation)
                .replace("{reference}", reference).replace("{output}", output))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    # ---- answer ----------------------------------------------------------------------------

    def parse(self, text: str | None) -> tuple[dict[str, int], dict[str, str]]:
        """The judge's raw text -> ({key: score}, {key: reason}); raises `InvalidJudgment`."""
        if not text or not text.strip():
            raise InvalidJudgment("the answer is empty; expected a JSON object")
        model = self.evaluation_model
        candidates = [_strip_fences(text)]
        # Models asked for JSON in the prompt sometimes add a sentence around it.
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end and text[start:end + 1] != candidates[0]:
            candidates.append(text[start:end + 1])
        first_error: ValidationError | None = None
        for candidate in candidates:
            try:
                evaluation = model.model_validate_json(candidate)
                break
            except ValidationError as e:
                first_error = first_error or e
        else:
            raise InvalidJudgment(_describe(first_error)) from None
        scores = {k: getattr(evaluation, k).score for k in self.keys}
        reasons = {k: getattr(evaluation, k).reason for k in self.keys}
        return scores, reasons

    def overall(self, scores: dict[str, int]) -> float:
        """Mean of the scores, each normalized to 0–1 by its scale."""
        parts = [(scores[c.key] - c.scale[0]) / (c.scale[1] - c.scale[0]) for c in self.criteria]
        return sum(parts) / len(parts)


def _strip_fences(text: str) -> str:
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.DOTALL)
    return match.group(1) if match else text.strip()


def _describe(error: ValidationError | None) -> str:
    if error is None:
        return "not a JSON object"
    lines = []
    for err in error.errors()[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "(the answer)"
        lines.append(f"{where}: {err['msg']}")
    more = error.error_count() - len(lines)
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


_CACHE: dict[tuple[Path, float], Rubric] = {}


def load_rubric(path: str | Path) -> Rubric:
    """Read and validate a rubric file (relative paths from the project root)."""
    path = paths.resolve(path)
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        raise RubricError(f"{path}: rubric file not found") from None
    if (path, stamp) in _CACHE:
        return _CACHE[(path, stamp)]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RubricError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RubricError(f"{path}: expected a mapping with name, language, system_prompt, user_template, criteria")
    try:
        rubric = Rubric.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg'].removeprefix('Value error, ')}"
                    for err in e.errors()]
        raise RubricError(f"{path}: " + "; ".join(problems)) from None
    _CACHE[(path, stamp)] = rubric
    return rubric
