"""Pairwise judging (`judge.mode: pairwise`): two answers to the same prompt, side by side, in both orders.

A pairwise rubric is a YAML file (`params/rubrics/pairwise_ko.yaml`, `pairwise_en.yaml`): `name`,
`language`, `system_prompt` and a `user_template` with `{conversation}`, `{reference}`, `{answer_a}` and
`{answer_b}`. The judge answers `{"reason": ..., "verdict": "A>>B" | "A>B" | "A=B" | "B>A" | "B>>A"}` —
the reason first, so that it argues before it commits. `PairRubric` has the interface of a single-answer
`Rubric` (messages, response_schema, parse), so both backends (direct requests, the Batch API) and the
cache serve it unchanged; its `output` is the pair (answer shown as A, answer shown as B).

A verdict is stored as a number from the first-shown answer's side: A>>B = +2, A>B = +1, A=B = 0,
B>A = -1, B>>A = -2. The score stage reads both orders of a pair (sftlab.score.pairwise).

Which pairs (`judge.pairs`): `baseline` — every checkpoint against the baseline (`score.baseline` if it
names a checkpoint of this experiment, else the base model); `adjacent` — each model against the one
before it (base, then checkpoints by step); `all` — every two models.

The offline reference judge compares the two answers' reference-judge scores (sftlab.judge.reference,
the overall 0–1 agreement with the reference) minus `UNTERMINATED_PENALTY` for an answer that did not end
on its own: a difference under `TIE_MARGIN` is A=B, over `STRONG_MARGIN` a strong verdict.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab import paths
from sftlab.judge import reference
from sftlab.judge.rubric import (Criterion, InvalidJudgment, PromptTemplate, Rubric, RubricError, _describe,
                                 _strip_fences)

VERDICTS = {"A>>B": 2, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -2}
PLACEHOLDERS = ("{conversation}", "{reference}", "{answer_a}", "{answer_b}")
CRITERION = "verdict"  # the one "criterion" of a pairwise judgment, in JudgmentRow.scores
TIE_MARGIN = 0.05
STRONG_MARGIN = 0.25
UNTERMINATED_PENALTY = 0.3
PAIR_SEPARATOR = "~"  # judge/pairwise/<first>~<second>.jsonl: the models in the order they were shown


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="Why this verdict, in two to four sentences")
    verdict: Literal["A>>B", "A>B", "A=B", "B>A", "B>>A"] = Field(
        description="A>>B: A much better; A>B: A better; A=B: about the same; B>A: B better; B>>A: B much better")


class PairRubric(PromptTemplate):
    """A pairwise rubric file: what the judge is told, and the template with both answers."""

    PLACEHOLDERS: ClassVar[tuple[str, ...]] = PLACEHOLDERS

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        """One "criterion", the verdict, on -2 (B>>A) .. +2 (A>>B): what tables and cost estimates read."""
        return (Criterion(key=CRITERION, name="verdict (A's side)", scale=(-2, 2),
                          description="A>>B +2, A>B +1, A=B 0, B>A -1, B>>A -2"),)

    @property
    def keys(self) -> list[str]:
        return [CRITERION]

    def response_schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": {
            "reason": {"type": "string", "description": "Why this verdict, in two to four sentences"},
            "verdict": {"type": "string", "enum": list(VERDICTS),
                        "description": "A>>B, A>B, A=B, B>A or B>>A"}},
            "required": ["reason", "verdict"], "additionalProperties": False}

    def messages(self, prompt: list[dict], reference: str, output: tuple[str, str],
                 shape: bool = True) -> list[dict]:
        """As `Rubric.messages`: the JSON shape is in the prompt whatever the mode."""
        system = self.system_prompt.strip()
        if shape:
            system += ("\n\nReply with one JSON object and nothing else (no code fences). It must follow this "
                       "JSON schema:\n```json\n" + json.dumps(self.response_schema(), ensure_ascii=False)
                       + '\n```\nShape: {"reason": "...", "verdict": "<A>>B|A>B|A=B|B>A|B>>A>"}')
        conversation = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in prompt)
        first, second = output
        user = (self.user_template.replace("{conversation}", conversation).replace("{reference}", reference)
                .replace("{answer_a}", first).replace("{answer_b}", second))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def parse(self, text: str | None) -> tuple[dict[str, int], dict[str, str]]:
        """The judge's raw text -> ({"verdict": -2..2}, {"verdict": reason}); raises `InvalidJudgment`."""
        if not text or not text.strip():
            raise InvalidJudgment("the answer is empty; expected a JSON object")
        candidates = [_strip_fences(text)]
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            candidates.append(text[start:end + 1])
        first_error = None
        for candidate in candidates:
            try:
                verdict = Verdict.model_validate_json(candidate)
                return {CRITERION: VERDICTS[verdict.verdict]}, {CRITERION: verdict.reason}
            except ValidationError as e:
                first_error = first_error or e
        raise InvalidJudgment(_describe(first_error))

    def overall(self, scores: dict[str, int]) -> float:
        """The first-shown answer's share of the verdict, 0 (B>>A) to 1 (A>>B)."""
        return (scores[CRITERION] + 2) / 4


def load_pair_rubric(path: str | Path) -> PairRubric:
    path = paths.resolve(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RubricError(f"{path}: pairwise rubric file not found") from None
    except yaml.YAMLError as e:
        raise RubricError(f"{path}: not valid YAML: {e}") from None
    try:
        return PairRubric.model_validate(data)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg'].removeprefix('Value error, ')}"
                    for err in e.errors()]
        raise RubricError(f"{path}: " + "; ".join(problems)) from None


def model_pairs(models: list[str], how: str, baseline: str) -> list[tuple[str, str]]:
    """Unordered pairs (a, b) of model names, by `judge.pairs`; `models` in checkpoint order."""
    if how == "adjacent":
        return list(zip(models, models[1:]))
    if how == "all":
        return list(itertools.combinations(models, 2))
    return [(baseline, m) for m in models if m != baseline]


def pair_name(first: str, second: str) -> str:
    return f"{first}{PAIR_SEPARATOR}{second}"


def reference_verdict(first: dict, second: dict, single: Rubric) -> tuple[int, str, dict[str, Any]]:
    """The offline verdict for (first shown, second shown): reference-judge overall scores minus a
    penalty for not terminating; returns (verdict -2..2, reason, the numbers behind it)."""
    sides = []
    for row in (first, second):
        result = reference.evaluate(row, single)
        value = single.overall(result["scores"])
        unterminated = row.get("finish_reason") != "eos"
        sides.append((value - (UNTERMINATED_PENALTY if unterminated else 0.0), value, unterminated))
    difference = sides[0][0] - sides[1][0]
    if abs(difference) < TIE_MARGIN:
        verdict = 0
    else:
        verdict = (2 if abs(difference) > STRONG_MARGIN else 1) * (1 if difference > 0 else -1)
    label = {v: k for k, v in VERDICTS.items()}[verdict]
    reason = (f"reference agreement A {sides[0][1]:.2f}{' (did not stop: -%.1f)' % UNTERMINATED_PENALTY if sides[0][2] else ''}"
              f" vs B {sides[1][1]:.2f}{' (did not stop: -%.1f)' % UNTERMINATED_PENALTY if sides[1][2] else ''}"
              f": difference {difference:+.2f} -> {label}")
    return verdict, reason, {"a": sides[0][0], "b": sides[1][0], "difference": difference}


POSITION_FLIP = ("a position flip: the two orders of a pair prefer different answers (each order prefers the "
                 "answer it shows first, or each the one it shows second); the pair counts as a tie")


def is_position_flip(verdict_one_order: float, verdict_other_order: float) -> bool:
    """The one definition of a position flip (POSITION_FLIP). Each verdict is from its own first-shown
    answer's side (+ = the first shown is better), so the two orders agree on a winner when their signs
    differ; both positive or both negative means the judge followed the position, not the answer.
    A tie in either order is not a flip."""
    return verdict_one_order * verdict_other_order > 0


def position_flips(rows) -> tuple[int, int]:
    """(pairs judged in both orders, of which position flips) over judgment rows of `judge/pairwise/`."""
    verdicts: dict[tuple, list[int]] = {}
    for row in rows:
        if row.status != "judged" or not row.scores:
            continue
        first, _, second = row.checkpoint.partition(PAIR_SEPARATOR)
        verdicts.setdefault((min(first, second), max(first, second), row.id, row.repeat), []).append(
            row.scores[CRITERION])
    both = [v for v in verdicts.values() if len(v) == 2]
    return len(both), sum(1 for a, b in both if is_position_flip(a, b))
