"""The OpenAI backend: one chat completion per judgment, through the `openai` SDK's async client,
against OpenAI or any compatible server (`judge.base_url`).

Per judgment:
    1. Send the rubric's messages — the JSON shape stated in the prompt, whatever the mode — with
       `response_format` by `judge.structured`: json_schema (the rubric's strict schema), json_object (JSON
       promised) or prompt (none). `auto` starts where the capability probe of the plan found the server
       works (sftlab.judge.probe; `start_mode`, else json_schema); a 400 for a request with `response_format`
       (or a 422) still moves down a mode for that judgment, and once a lower mode has worked the whole run
       uses it, so a server that refuses a mode costs one refused request, not one per row.
    2. Transient failures are retried with backoff, through the transport every path shares
       (sftlab.judge.transport: retries, backoff, circuit breaker, redaction of the key, tallies).
    3. The text is validated against the rubric's pydantic model; an invalid answer gets one repair
       request that quotes the validation error. A refusal or a still-invalid answer is an `error`
       outcome with the raw text — unscored, never a zero. Every answer that came back is kept: when the
       repair request fails (HTTP error, timeout), the row's `raw` is the first answer; when it answers,
       `raw` is that answer and `first_raw` the first.
    4. Usage is summed over the requests of the judgment and priced (`cost.price_for`).

Run-wide: at most `concurrency` judgments in flight; once the spent cost reaches `max_cost_usd`, no
new judgment starts (those in flight finish, so the overshoot is at most `concurrency` judgments)
and the rest come back `not_judged`. A rejected key (401/403), an unknown model (404) or an exhausted
quota stops the run the same way, with `fatal` set; so does an endpoint the transport's circuit breaker
finds unreachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from sftlab import jsonl
from sftlab.judge import cost
from sftlab.judge.pairwise import PairRubric
from sftlab.judge.rubric import InvalidJudgment, Mode, Rubric
from sftlab.judge.transport import MODES, Fatal, GaveUp, JudgeConfigError, Tally, Transport, describe, text_of

REPAIR_PROMPT = ("Your reply is not a valid evaluation: {error}\n"
                 "Reply again with only the corrected JSON object, following the schema and the criteria.")


@dataclass
class Job:
    """One distinct judgment to make (rows with the same key share it): one answer under a rubric, or in
    pairwise mode two answers (first shown, second shown) under a pairwise rubric."""

    key: str
    rubric: Rubric | PairRubric
    prompt: list[dict]
    reference: str
    output: str | tuple[str, str]


@dataclass
class Outcome:
    status: str  # judged | error | not_judged
    scores: dict[str, int] | None = None
    reasons: dict[str, str] | None = None
    raw: str | None = None
    first_raw: str | None = None  # the first answer, when a repair request followed it and was answered
    error: str | None = None
    usage: dict[str, int] | None = None
    cost_usd: float | None = None
    requests: int = 0
    structured: str | None = None
    seconds: float = 0.0
    metrics: dict[str, Any] | None = None  # the reference judge's agreement metrics


@dataclass
class OpenAIJudge(Transport):
    spent_usd: float = 0.0
    mode_counts: dict[str, int] = field(default_factory=dict)
    start_mode: Mode | None = None  # under structured: auto, the probe's mode (sftlab.judge.probe)
    _mode: Mode = "json_schema"

    def __post_init__(self) -> None:
        p = self.params
        self.price = cost.price_for(p.model, p.prices, batch=p.batch)
        if p.max_cost_usd is not None and self.price is None:
            raise JudgeConfigError(
                f"judge.max_cost_usd is set but judge.model '{p.model}' has no price: add "
                f"judge.prices.{p.model}: {{input_per_mtok: ..., output_per_mtok: ...}} to the params")
        self._mode = (self.start_mode or "json_schema") if p.structured == "auto" else p.structured

    @property
    def model_id(self) -> str:
        return self.params.model

    async def judge_all(self, jobs: list[Job], on_done: Callable[[Job, Outcome], None]) -> None:
        """Judge every job; `on_done` is called once per job, in the order they finish."""
        p = self.params
        client = self.client()
        slots = asyncio.Semaphore(p.concurrency)

        async def one(job: Job) -> None:
            async with slots:
                if self.stopped:
                    outcome = Outcome("not_judged", error=self.stopped)
                else:
                    outcome = await self._judge(client, job)
                    self.spent_usd += outcome.cost_usd or 0.0
                    if p.max_cost_usd is not None and self.spent_usd >= p.max_cost_usd and not self.stopped:
                        self.stopped = (f"budget reached: spent ${self.spent_usd:.4f} of "
                                        f"judge.max_cost_usd ${p.max_cost_usd:.4f}")
            on_done(job, outcome)

        try:
            await asyncio.gather(*(one(job) for job in jobs))
        finally:
            await client.close()
            self.forget_key()

    # ---- one judgment ----------------------------------------------------------------------

    async def _judge(self, client: openai.AsyncOpenAI, job: Job) -> Outcome:
        started = time.monotonic()
        tally = Tally()
        mode = self._mode
        raw: str | None = None  # the last answer that came back
        first: str | None = None  # the first answer, once a repair request has answered too
        try:
            messages = job.rubric.messages(job.prompt, job.reference, job.output)
            completion, mode = await self._send_with_fallback(client, tally, messages, mode, job)
            raw, refusal = text_of(completion)
            if refusal is not None:
                outcome = Outcome("error", raw=refusal, error=f"the judge refused: {refusal}")
            else:
                try:
                    scores, reasons = job.rubric.parse(raw)
                except InvalidJudgment as invalid:
                    repair = messages + [{"role": "assistant", "content": raw or ""},
                                         {"role": "user", "content": REPAIR_PROMPT.format(error=invalid)}]
                    # If this fails (HTTP error, timeout), `raw` is still the first answer: kept below.
                    completion = await self._send(client, tally, repair, mode, job.rubric)
                    first, (raw, refusal) = raw, text_of(completion)
                    if refusal is not None:
                        raw = refusal
                        raise InvalidJudgment(f"refused on repair: {refusal}") from None
                    scores, reasons = job.rubric.parse(raw)  # a second InvalidJudgment is final
                outcome = Outcome("judged", scores=scores, reasons=reasons, raw=raw)
                self.settle_mode(mode)
        except InvalidJudgment as e:
            outcome = Outcome("error", error=self.redact(f"invalid judgment after one repair: {e}"))
        except Fatal as e:
            self.fatal, self.stopped = True, self.redact(str(e))
            outcome = Outcome("error", error=self.stopped)
        except (GaveUp, openai.APIStatusError) as e:
            outcome = Outcome("error", error=self.redact(describe(e)) + _on_repair(first, raw))
        except Exception as e:  # anything else (a bug, an odd server): this row fails, the stage goes on
            outcome = Outcome("error", error=self.redact(f"{type(e).__name__}: {e}") + _on_repair(first, raw))
        if outcome.raw is None:
            outcome.raw = raw  # whatever else went wrong, the judge's words stay with the row
        outcome.first_raw = first
        outcome.requests = tally.requests
        outcome.structured = mode
        outcome.seconds = round(time.monotonic() - started, 3)
        if tally.requests and tally.has_usage:
            outcome.usage = {"prompt_tokens": tally.prompt_tokens, "completion_tokens": tally.completion_tokens}
            outcome.cost_usd = cost.cost_usd(self.price, tally.prompt_tokens, tally.completion_tokens)
        self.mode_counts[mode] = self.mode_counts.get(mode, 0) + 1
        return outcome

    async def _send_with_fallback(self, client, tally, messages, mode: Mode, job: Job):
        """Send; under `structured: auto`, a 400 to a request with response_format moves down a mode."""
        while True:
            try:
                return await self._send(client, tally, messages, mode, job.rubric), mode
            except (openai.BadRequestError, openai.UnprocessableEntityError):  # 422: FastAPI-style servers
                if self.params.structured != "auto" or mode == "prompt":
                    raise
                mode = MODES[MODES.index(mode) + 1]  # the same messages: only response_format changes

    async def _send(self, client, tally: Tally, messages: list[dict], mode: Mode, rubric: Rubric):
        return await self.send(client, tally, self.request_body(messages, mode, rubric))

    def settle_mode(self, mode: Mode) -> None:
        # Only ever downward: a mode that had to be left once is not tried again in this run.
        if MODES.index(mode) > MODES.index(self._mode):
            self._mode = mode

    def request_body(self, messages: list[dict], mode: Mode, rubric: Rubric) -> dict[str, Any]:
        """One chat-completions request: the same body for a direct request and a Batch API line."""
        p = self.params
        # A lone surrogate (a model output cut inside a character) cannot travel as UTF-8: the judge is shown
        # U+FFFD in its place; the row on disk and its cache key keep the text as it was.
        request: dict[str, Any] = {"model": p.model, "messages": jsonl.utf8_safe(messages)}
        if p.temperature is not None:
            request["temperature"] = p.temperature
        if p.max_tokens is not None:
            request["max_tokens"] = p.max_tokens
        if mode == "json_schema":
            request["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "evaluation", "strict": True, "schema": rubric.response_schema()}}
        elif mode == "json_object":
            # JSON promised. The schema rides along: llama.cpp's servers (and some hosted ones) enforce a
            # json_object's `schema`; others ignore the field, and the shape is in the prompt anyway.
            request["response_format"] = {"type": "json_object", "schema": rubric.response_schema()}
        return request


def _on_repair(first: str | None, raw: str | None) -> str:
    """Says that an HTTP failure hit the repair request, after an invalid first answer (kept in `raw`)."""
    return " (on the repair request; the invalid first answer is kept in raw)" if raw is not None and first is None \
        else ""
