"""The judge stage: one judgment per (checkpoint, sample), by a rubric, from an LLM or offline.

    from sftlab import judge
    planned = judge.plan(params)          # what would be sent, and what it would cost
    summary = judge.run(params, planned)  # appends outputs/<exp>/judge/<checkpoint>.jsonl
    frame = judge.load_judgments(params)  # one row per (checkpoint, id), the latest

Backends (`judge.backend`): `openai` — any OpenAI-compatible chat-completions endpoint
(sftlab.judge.api); `reference` — offline agreement with the reference answer (sftlab.judge.reference);
`auto` — openai when `judge.base_url` or the key's variable is set, else reference. Rubrics:
sftlab.judge.rubric. Rows on disk and the cache: sftlab.judge.store and sftlab.judge.stage.
"""

from __future__ import annotations

from sftlab.config import Params
from sftlab.judge import store
from sftlab.judge.api import JudgeConfigError
from sftlab.judge.rubric import InvalidJudgment, Rubric, RubricError, load_rubric
from sftlab.judge.stage import (GenerationsError, JudgeStopped, Plan, Summary, judge_dir, judgment_key, plan,
                                read_generations, resolve_backend, run, run_sync)

__all__ = ["GenerationsError", "InvalidJudgment", "JudgeConfigError", "JudgeStopped", "Plan", "Rubric",
           "RubricError", "Summary", "judge_dir", "judgment_key", "load_judgments", "load_rubric", "plan",
           "read_generations", "resolve_backend", "run", "run_sync"]


def load_judgments(params: Params):
    """One row per (checkpoint, id) — the latest written — as a pandas DataFrame, base first then by
    step; with a `score_<criterion>` column per criterion. Empty when nothing was judged yet."""
    return store.load_frame(judge_dir(params))
