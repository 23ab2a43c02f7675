"""The OpenAI backend: one chat completion per judgment, through the `openai` SDK's async client,
against OpenAI or any compatible server (`judge.base_url`).

Per judgment:
    1. Send the rubric's messages — the JSON shape stated in the prompt, whatever the mode — with
       `response_format` by `judge.structured`: json_schema (the rubric's strict schema), json_object (JSON
       promised) or prompt (none). `auto` starts where the capability probe of the plan found the server
       works (sftlab.judge.probe; `start_mode`, else json_schema); a 400 for a request with `response_format`
       (or a 422) still moves down a mode for that judgment, and once a lower mode has worked the whole run
       uses it, so a server that refuses a mode costs one refused request, not one per row.
    2. Transient failures — 408, 409, 429, 5xx, timeouts, dropped connections, an unreadable body — are
       retried up to `max_retries` times, waiting base * 2**n (jittered into [d/2, d]) or what
       `retry-after`/`retry-after-ms` says, never more than `backoff_max_s`.
    3. The text is validated against the rubric's pydantic model; an invalid answer gets one repair
       request that quotes the validation error. A refusal or a still-invalid answer is an `error`
       outcome with the raw text — unscored, never a zero. Every answer that came back is kept: when the
       repair request fails (HTTP error, timeout), the row's `raw` is the first answer; when it answers,
       `raw` is that answer and `first_raw` the first.
    4. Usage is summed over the requests of the judgment and priced (`cost.price_for`).

Run-wide: at most `concurrency` judgments in flight; once the spent cost reaches `max_cost_usd`, no
new judgment starts (those in flight finish, so the overshoot is at most `concurrency` judgments)
and the rest come back `not_judged`. A rejected key (401/403), an unknown model (404) or an exhausted
quota stops the run the same way, with `fatal` set.

A circuit breaker tells a dead endpoint from a busy one. Connection-level failures — the name does not
resolve, the connection is refused or times out while connecting, TLS fails — before the endpoint has
ever answered mean it is unreachable: after `BREAKER_FAILURES` of them (counted over every request, so
the first wave of concurrent requests trips it at once) nothing more is sent, `unreachable` says why
and how to fix it, and the run stops with `fatal` set — within seconds, not after every row's retries.
Once the endpoint has answered anything, the same failures are transient and retried with backoff.
Connecting may take at most `CONNECT_TIMEOUT_S` (or `timeout_s`, if shorter).

The key is read from os.environ[judge.api_key_env] when the run starts, handed to the client, and
scrubbed from every error text this module produces.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from sftlab import jsonl
from sftlab.config import JudgeParams
from sftlab.judge import cost
from sftlab.judge.rubric import InvalidJudgment, Mode, Rubric
from sftlab.errors import SftlabError

MODES: tuple[Mode, ...] = ("json_schema", "json_object", "prompt")
BREAKER_FAILURES = 3  # connection-level failures, with no answer ever, that mean the endpoint is down
CONNECT_TIMEOUT_S = 10.0  # a host that takes longer to accept a connection is treated as unreachable
OPENAI_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429}
REPAIR_PROMPT = ("Your reply is not a valid evaluation: {error}\n"
                 "Reply again with only the corrected JSON object, following the schema and the criteria.")


class JudgeConfigError(SftlabError, ValueError):
    """The backend cannot start (no key, no price for a budget); nothing was sent."""


@dataclass
class Job:
    """One distinct judgment to make (rows with the same key share it)."""

    key: str
    rubric: Rubric
    prompt: list[dict]
    reference: str
    output: str


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
class _Tally:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    has_usage: bool = True

    def add(self, completion: Any) -> None:
        usage = getattr(completion, "usage", None)
        if usage is None:
            self.has_usage = False  # a compatible server without usage: no cost can be claimed
            return
        self.prompt_tokens += usage.prompt_tokens or 0
        self.completion_tokens += usage.completion_tokens or 0


class _Fatal(Exception):
    """No later request can succeed either (bad key, unknown model, no quota)."""


class _GaveUp(Exception):
    """Retries exhausted; the message says what the last attempt met."""


@dataclass
class OpenAIJudge:
    params: JudgeParams
    requests: int = 0  # HTTP requests sent in this run, retries and repairs included
    spent_usd: float = 0.0
    stopped: str | None = None  # why no new judgment starts (budget, fatal error)
    fatal: bool = False
    unreachable: str | None = None  # set when the circuit breaker trips: the endpoint never answered
    responses: int = 0  # HTTP responses received (any status): the endpoint is alive
    connect_failures: int = 0
    mode_counts: dict[str, int] = field(default_factory=dict)
    start_mode: Mode | None = None  # under structured: auto, the probe's mode (sftlab.judge.probe)
    _mode: Mode = "json_schema"
    _secret: str | None = None

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

    def client(self) -> openai.AsyncOpenAI:
        """The SDK's async client, with the key from the environment (never from a file); retries are ours."""
        p = self.params
        self._secret = os.environ.get(p.api_key_env) or None
        if self._secret is None and p.base_url is None:
            raise JudgeConfigError(
                f"judge.backend openai needs an API key: set the environment variable {p.api_key_env} "
                f"(or judge.base_url for a server that needs none, or judge.backend: reference)")
        return openai.AsyncOpenAI(
            api_key=self._secret or "no-key",  # local compatible servers ignore it; the SDK wants one
            base_url=p.base_url, max_retries=0,
            timeout=openai.Timeout(p.timeout_s, connect=min(p.timeout_s, CONNECT_TIMEOUT_S)))

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
            self._secret = None

    # ---- one judgment ----------------------------------------------------------------------

    async def _judge(self, client: openai.AsyncOpenAI, job: Job) -> Outcome:
        started = time.monotonic()
        tally = _Tally()
        mode = self._mode
        raw: str | None = None  # the last answer that came back
        first: str | None = None  # the first answer, once a repair request has answered too
        try:
            messages = job.rubric.messages(job.prompt, job.reference, job.output)
            completion, mode = await self._send_with_fallback(client, tally, messages, mode, job)
            raw, refusal = _text_of(completion)
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
                    first, (raw, refusal) = raw, _text_of(completion)
                    if refusal is not None:
                        raw = refusal
                        raise InvalidJudgment(f"refused on repair: {refusal}") from None
                    scores, reasons = job.rubric.parse(raw)  # a second InvalidJudgment is final
                outcome = Outcome("judged", scores=scores, reasons=reasons, raw=raw)
                self._settle_mode(mode)
        except InvalidJudgment as e:
            outcome = Outcome("error", error=self._redact(f"invalid judgment after one repair: {e}"))
        except _Fatal as e:
            self.fatal, self.stopped = True, self._redact(str(e))
            outcome = Outcome("error", error=self.stopped)
        except (_GaveUp, openai.APIStatusError) as e:
            outcome = Outcome("error", error=self._redact(_describe(e)) + _on_repair(first, raw))
        except Exception as e:  # anything else (a bug, an odd server): this row fails, the stage goes on
            outcome = Outcome("error", error=self._redact(f"{type(e).__name__}: {e}") + _on_repair(first, raw))
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

    def _settle_mode(self, mode: Mode) -> None:
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

    async def _send(self, client, tally: _Tally, messages: list[dict], mode: Mode, rubric: Rubric):
        p = self.params
        request = self.request_body(messages, mode, rubric)
        for attempt in range(p.max_retries + 1):
            if self.unreachable:  # tripped by another request meanwhile: send nothing more
                raise _Fatal(self.unreachable)
            tally.requests += 1
            self.requests += 1
            try:
                completion = await client.chat.completions.create(**request)
                self.responses += 1
                tally.add(completion)
                return completion
            except openai.APIStatusError as e:
                self.responses += 1
                _raise_if_fatal(e, p)
                if e.status_code not in RETRY_STATUS and e.status_code < 500:
                    raise  # 400 and friends: the caller decides (fallback, or an error row)
                error: Exception = e
            except openai.APIConnectionError as e:  # timeouts and dropped connections
                if _connection_level(e) and not self.responses:
                    self._count_connect_failure(e)
                error = e
            except (openai.APIResponseValidationError, ValueError) as e:  # a body that is not JSON
                error = e
            if attempt == p.max_retries:
                raise _GaveUp(f"{_describe(error)} (gave up after {attempt + 1} attempts)")
            await asyncio.sleep(self._delay(attempt, error))
        raise AssertionError("unreachable")

    def _count_connect_failure(self, error: Exception) -> None:
        """The circuit breaker: enough connection-level failures and no answer ever -> unreachable."""
        self.connect_failures += 1
        if self.connect_failures >= BREAKER_FAILURES and not self.unreachable:
            url = self.params.base_url or OPENAI_URL
            self.unreachable = self._redact(
                f"the judge endpoint {url} is unreachable ({_describe(error)}; {self.connect_failures} "
                f"connection attempts failed and none was ever answered). Nothing more is sent; rows judged "
                f"so far are kept and a re-run resumes. Fix: judge offline with --set judge.backend=reference, "
                f"or check the network and proxy (HTTPS_PROXY) and judge.base_url")
            self.stopped, self.fatal = self.unreachable, True
        if self.unreachable:
            raise _Fatal(self.unreachable)

    def _delay(self, attempt: int, error: Exception) -> float:
        p = self.params
        hinted = _retry_after(error)
        if hinted is not None:
            return min(hinted, p.backoff_max_s)
        ceiling = min(p.backoff_max_s, p.backoff_base_s * 2 ** attempt)
        return random.uniform(ceiling / 2, ceiling)  # jitter: concurrent retries do not arrive together

    def _redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "[redacted]")
        return text


def _text_of(completion: Any) -> tuple[str | None, str | None]:
    """(content, refusal) of the first choice; a content filter stop counts as a refusal."""
    if not getattr(completion, "choices", None):
        return None, None
    choice = completion.choices[0]
    message = choice.message
    refusal = getattr(message, "refusal", None)
    if refusal is None and choice.finish_reason == "content_filter":
        refusal = message.content or "stopped by the server's content filter"
    return message.content, refusal


def _on_repair(first: str | None, raw: str | None) -> str:
    """Says that an HTTP failure hit the repair request, after an invalid first answer (kept in `raw`)."""
    return " (on the repair request; the invalid first answer is kept in raw)" if raw is not None and first is None \
        else ""


def fatal_reason(status: int, code: str | None, message: str, p: JudgeParams) -> str | None:
    """Why no later request can succeed either, for an HTTP error (None if a later one might)."""
    if status in (401, 403):
        # The server's message may quote part of the key; say what happened without it.
        return f"the server rejected the API key from ${p.api_key_env} (HTTP {status})"
    if status == 404:
        return f"HTTP 404 for model '{p.model}' at {p.base_url or OPENAI_URL}: {message}"
    if status == 429 and code == "insufficient_quota":
        return f"HTTP 429 insufficient_quota: the account has no quota left ({message})"
    return None


def _raise_if_fatal(e: openai.APIStatusError, p: JudgeParams) -> None:
    reason = fatal_reason(e.status_code, getattr(e, "code", None), e.message, p)
    if reason:
        raise _Fatal(reason)


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return max(0.0, float(value))
            except ValueError:  # an HTTP date
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None
    return None


def _connection_level(error: Exception) -> bool:
    """A failure to connect at all (DNS, refused, connect timeout, TLS), as opposed to a connection that
    was made and then dropped, or a read that timed out on a live server."""
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout"):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _describe(error: Exception) -> str:
    if isinstance(error, openai.APITimeoutError):
        return "request timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"connection failed: {error.__cause__ or error}"
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, ValueError):
        return f"unreadable response body: {error}"
    return str(error)
