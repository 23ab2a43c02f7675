"""The judge stage: one judgment per (checkpoint, sample), by a rubric, from an LLM or offline.

    import sftlab.judge as judge_stage    # in notebooks, a name that does not hide the `judge` params
    planned = judge_stage.plan(params)            # what would be sent, and what it would cost (sends nothing)
    planned.estimate()
    summary = judge_stage.run(planned)            # probe if needed, then appends outputs/<exp>/judge/<checkpoint>.jsonl
    frame = judge_stage.load_judgments(params)    # one row per (checkpoint, id), the latest

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
from sftlab.judge.stage import (GenerationsError, JudgeFailed, JudgeStopped, Plan, Summary, backend_choice,
                                judgment_key, plan, preflight, resolve_backend, run, run_sync)
from sftlab.judge.store import JudgmentRow, JudgmentsError

__all__ = ["GenerationsError", "InvalidJudgment", "JudgeConfigError", "JudgeFailed", "JudgeStopped", "backend_choice", "JudgmentRow", "JudgmentsError",
           "Plan", "Rubric", "RubricError", "Summary", "judgment_key", "load_judgments", "load_rubric", "plan",
           "preflight", "resolve_backend", "run", "run_sync"]


def load_judgments(params: Params):
    """One row per (checkpoint, id) — the latest written — as a pandas DataFrame, base first then by
    step; with a `score_<criterion>` column per criterion. Empty when nothing was judged yet. In pairwise
    mode one row per (pair and order, id): `checkpoint` is `<A>~<B>`, `score_verdict` A's side, -2..2."""
    return store.load_frame(params.layout.judgments(params.judge.mode))
