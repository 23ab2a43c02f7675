"""The OpenAI Batch API backend (`judge.batch: true`): the same judgments at half the price, within 24 h.

One round: the open judgments become one JSONL file of chat-completions requests (`custom_id` = the
row's cache key, the body exactly what a direct request would send), uploaded through the files API;
`batches.create` with the 24 h window; polling every `judge.batch_poll_s` with a progress bar; the
output and error files downloaded and mapped back by `custom_id`. Each answer is handled as a direct
answer would be: parsed and validated against the rubric, an invalid one repaired once, a 400 to a
`response_format` moving down the structured-output chain (`judge.structured: auto`, from the
probe's mode, sftlab.judge.probe), a failed or
expired line sent again — each of these in the next round's batch, up to `max_retries` rounds.

Never paid twice: the batch id and what each of its lines asked are written to `judge/batches.json` the
moment the batch is created. A stage killed while polling, or simply run again, polls the batches it
finds there for the rows still open instead of submitting them again; a batch whose results were
written is marked processed and never read again.

Costs use the Batch API's prices (`cost.price_for(..., batch=True)`); `max_cost_usd` is checked before a
batch is created — lines that would pass it are not submitted and come back `not_judged`. After
`judge.batch_fallback_after_s`, a batch still running is cancelled, the answers it has are used, and the
rest are judged the normal way (sftlab.judge.api). The circuit breaker, fatal errors (bad key, unknown
model) and the redaction of the key are those of `OpenAIJudge`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from sftlab.clock import utc_now
from sftlab.files import atomic_write_text
from sftlab.judge import cost
from sftlab.progress import bar as progress_bar
from sftlab.judge.api import (MODES, REPAIR_PROMPT, RETRY_STATUS, Job, OpenAIJudge, Outcome, _connection_level,
                              _describe, _Fatal, _raise_if_fatal, _Tally, _text_of, fatal_reason)
from sftlab.judge.rubric import InvalidJudgment, Mode

log = logging.getLogger("sftlab.judge")

BATCHES_FILE = "batches.json"
TERMINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


@dataclass
class _Open:
    """A judgment still waiting for its answer, and what its next batch line will ask."""

    job: Job
    mode: Mode
    messages: list[dict]
    repair: bool = False  # the next line is the repair request (the answer before it was invalid)
    raw: str | None = None  # the last answer's text
    first_raw: str | None = None  # the first answer, once the repair line has answered too
    error: str | None = None  # why the last line failed
    rounds: int = 0  # batch lines sent for it
    tally: _Tally = field(default_factory=_Tally)
    started: float = field(default_factory=time.monotonic)


@dataclass
class BatchJudge(OpenAIJudge):
    state_dir: Path | None = None  # judge/: where batches.json keeps every batch created
    batches_created: int = 0

    # ---- state on disk ---------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return Path(self.state_dir) / BATCHES_FILE

    def _load(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []

    def _save(self, state: list[dict[str, Any]]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_file, json.dumps(state, indent=2, ensure_ascii=False) + "\n")

    # ---- the run ---------------------------------------------------------------------------

    async def judge_all(self, jobs: list[Job], on_done: Callable[[Job, Outcome], None]) -> None:
        p = self.params
        client = self.client()
        self._on_done = on_done
        self._open = {job.key: _Open(job, self._mode, job.rubric.messages(job.prompt, job.reference,
                                                                            job.output)) for job in jobs}
        deadline = time.monotonic() + p.batch_fallback_after_s if p.batch_fallback_after_s else None
        state = self._load()
        try:
            # Batches an earlier run created (then was killed, or simply ended): poll them, never pay twice.
            for record in state:
                if not record.get("processed") and set(record["lines"]) & set(self._open):
                    await self._collect(client, state, record, deadline)
            for _ in range(p.max_retries + 2):  # the first round, repairs and fallbacks, failed lines again
                if not self._open or self.stopped or (deadline and time.monotonic() >= deadline):
                    break
                record = await self._submit(client, state)
                if record is None:
                    break
                await self._collect(client, state, record, deadline)
        except _Fatal as e:
            self.fatal, self.stopped = True, self.stopped or self._redact(str(e))
        finally:
            await client.close()
            self._secret = None
        if self._open and not self.stopped and deadline and time.monotonic() >= deadline:
            await self._fall_back()
        for item in list(self._open.values()):  # budget, a fatal error, or retries exhausted
            if self.stopped:
                self._finish(item, Outcome("not_judged" if not item.rounds else "error",
                                           error=self.stopped if not item.rounds else item.error or self.stopped))
            else:
                self._finish(item, Outcome("error", raw=item.raw, error=self._redact(
                    f"{item.error or 'no answer'} (gave up after {item.rounds} batch rounds)")))

    async def _fall_back(self) -> None:
        """Judge what the batches left open the normal way, at the normal price."""
        log.warning("judge.batch_fallback_after_s (%ss) passed: %d rows go through direct requests",
                    self.params.batch_fallback_after_s, len(self._open))
        direct = OpenAIJudge(self.params.model_copy(update={"batch": False}), start_mode=self._mode)
        items = {item.job.key: item for item in self._open.values()}
        self._open = {}
        try:
            def done(job: Job, outcome: Outcome) -> None:
                if outcome.raw is None:  # what the batch's answer said stays with the row
                    outcome.raw = items[job.key].raw
                self._on_done(job, outcome)

            await direct.judge_all([item.job for item in items.values()], done)
        finally:
            self.requests += direct.requests
            for mode, n in direct.mode_counts.items():
                self.mode_counts[mode] = self.mode_counts.get(mode, 0) + n
            if direct.stopped:
                self.stopped, self.fatal = direct.stopped, direct.fatal

    # ---- one batch -------------------------------------------------------------------------

    async def _submit(self, client: openai.AsyncOpenAI, state: list[dict]) -> dict | None:
        """Upload the open judgments as one batch and record it at once; None when the budget forbids."""
        p = self.params
        items = list(self._open.values())
        if p.max_cost_usd is not None:
            fits, planned = [], self.spent_usd
            for item in items:
                planned += self._estimate(item)
                if planned > p.max_cost_usd:
                    break
                fits.append(item)
            if not fits:
                self.stopped = (f"budget reached: spent ${self.spent_usd:.4f}; the next batch would pass "
                                f"judge.max_cost_usd ${p.max_cost_usd:.4f}, so it was not created")
                return None
            items = fits
        lines = [{"custom_id": item.job.key, "method": "POST", "url": ENDPOINT,
                  "body": self.request_body(item.messages, item.mode, item.job.rubric)} for item in items]
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")
        upload = await self._call(lambda: client.files.create(
            file=("sftlab-judge-batch.jsonl", data, "application/jsonl"), purpose="batch"))
        batch = await self._call(lambda: client.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h",
            metadata={"created_by": "sftlab judge"}))
        record = {"id": batch.id, "input_file_id": upload.id, "status": batch.status,
                  "created_at": utc_now(), "processed": False,
                  "lines": {item.job.key: {"mode": item.mode, "repair": item.repair} for item in items}}
        state.append(record)
        self._save(state)  # before the first poll: a kill from here on never submits these rows again
        self.batches_created += 1
        log.info("batch %s created: %d requests", batch.id, len(lines))
        return record

    def _estimate(self, item: _Open) -> float:
        text = "".join(m["content"] for m in item.messages)
        if item.mode == "json_schema":
            text += json.dumps(item.job.rubric.response_schema(), ensure_ascii=False)
        completion = cost.estimate_completion_tokens(len(item.job.rubric.criteria))
        return cost.cost_usd(self.price, cost.estimate_tokens(text), completion) or 0.0

    async def _collect(self, client: openai.AsyncOpenAI, state: list[dict], record: dict,
                       deadline: float | None) -> None:
        """Poll the batch to its end (cancelling it past the deadline), then settle every line."""
        p = self.params
        cancelled = False
        with progress_bar(len(record["lines"]), f"judge batch {record['id']}", unit="request", leave=False) as bar:
            while True:
                batch = await self._call(lambda: client.batches.retrieve(record["id"]))
                counts = batch.request_counts
                if counts is not None:
                    bar.n = counts.completed + counts.failed
                    bar.set_postfix_str(batch.status)
                    bar.refresh()
                if batch.status != record["status"]:
                    record["status"] = batch.status
                    self._save(state)
                if batch.status in TERMINAL:
                    break
                if deadline and time.monotonic() >= deadline and not cancelled:
                    await self._call(lambda: client.batches.cancel(record["id"]))
                    cancelled = True
                await asyncio.sleep(p.batch_poll_s)
        results: dict[str, dict] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._call(lambda: client.files.content(file_id))
                for line in content.read().split(b"\n"):
                    if line.strip():
                        result = json.loads(line)
                        results[result["custom_id"]] = result
        failure = None
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            failure = "batch failed: " + ("; ".join(f"{e.code}: {e.message}" for e in errors) or "no reason given")
        for key, line in record["lines"].items():
            if key in self._open:
                self._settle(self._open[key], line, results.get(key), failure or f"batch {batch.status}")
        record["processed"] = True
        self._save(state)

    def _settle(self, item: _Open, line: dict, result: dict | None, missing: str) -> None:
        """One answered (or failed) line: a final outcome, or what the next round asks."""
        p = self.params
        mode: Mode = line["mode"]
        item.rounds += 1
        item.tally.requests += 1
        self.requests += 1
        if result is None or result.get("error") or not result.get("response"):
            error = (result or {}).get("error") or {}
            item.error = f"{error.get('code', 'no answer')}: {error.get('message', missing)}" if error else missing
            return  # sent again in the next round (expired, cancelled, a line that failed)
        response = result["response"]
        status, body = response.get("status_code"), response.get("body") or {}
        self.responses += 1
        if status != 200:
            error = (body.get("error") or {}) if isinstance(body, dict) else {}
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            fatal = fatal_reason(status, error.get("code") if isinstance(error, dict) else None, message, p)
            if fatal:
                self.fatal, self.stopped = True, self._redact(fatal)
                return self._finish(item, Outcome("error", error=self.stopped), mode)
            if status in (400, 422) and p.structured == "auto" and mode != "prompt" and not line["repair"]:
                item.mode = MODES[MODES.index(mode) + 1]  # down the chain, next round; same messages
                return
            item.error = f"HTTP {status}: {message}"
            if status in RETRY_STATUS or status >= 500:
                return  # transient: next round
            return self._finish(item, Outcome("error", error=self._redact(item.error)), mode)
        completion = openai.types.chat.ChatCompletion.model_validate(body)
        item.tally.add(completion)
        raw, refusal = _text_of(completion)
        if line["repair"]:
            item.first_raw = item.raw
        item.raw = raw
        if refusal is not None:
            return self._finish(item, Outcome("error", raw=refusal, error=f"the judge refused: {refusal}"), mode)
        try:
            scores, reasons = item.job.rubric.parse(raw)
        except InvalidJudgment as e:
            if line["repair"]:
                return self._finish(item, Outcome("error", raw=raw, error=self._redact(
                    f"invalid judgment after one repair: {e}")), mode)
            item.repair = True
            item.mode = mode
            item.messages = item.messages + [{"role": "assistant", "content": raw or ""},
                                             {"role": "user", "content": REPAIR_PROMPT.format(error=e)}]
            return
        self._settle_mode(mode)
        self._finish(item, Outcome("judged", scores=scores, reasons=reasons, raw=raw), mode)

    def _finish(self, item: _Open, outcome: Outcome, mode: Mode | None = None) -> None:
        p = self.params
        self._open.pop(item.job.key, None)
        if outcome.raw is None:
            outcome.raw = item.raw  # an answer that came back stays with the row, whatever failed after it
        outcome.first_raw = item.first_raw
        outcome.requests = item.tally.requests
        outcome.structured = mode or item.mode
        outcome.seconds = round(time.monotonic() - item.started, 3)
        if item.tally.requests and item.tally.has_usage and item.tally.prompt_tokens:
            outcome.usage = {"prompt_tokens": item.tally.prompt_tokens,
                             "completion_tokens": item.tally.completion_tokens}
            outcome.cost_usd = cost.cost_usd(self.price, item.tally.prompt_tokens, item.tally.completion_tokens)
        self.spent_usd += outcome.cost_usd or 0.0
        if p.max_cost_usd is not None and self.spent_usd >= p.max_cost_usd and not self.stopped:
            self.stopped = f"budget reached: spent ${self.spent_usd:.4f} of judge.max_cost_usd ${p.max_cost_usd:.4f}"
        self.mode_counts[outcome.structured] = self.mode_counts.get(outcome.structured, 0) + 1
        self._on_done(item.job, outcome)

    # ---- the API calls around the batch (upload, create, poll, download) ------------------

    async def _call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """One files/batches call, with the retries, backoff and circuit breaker of direct requests."""
        p = self.params
        for attempt in range(p.max_retries + 1):
            if self.unreachable:
                raise _Fatal(self.unreachable)
            try:
                result = await make()
                self.responses += 1
                return result
            except openai.APIStatusError as e:
                self.responses += 1
                _raise_if_fatal(e, p)
                if e.status_code not in RETRY_STATUS and e.status_code < 500:
                    raise _Fatal(self._redact(f"the Batch API refused: {_describe(e)}")) from None
                error: Exception = e
            except openai.APIConnectionError as e:
                if _connection_level(e) and not self.responses:
                    self._count_connect_failure(e)
                error = e
            if attempt == p.max_retries:
                raise _Fatal(self._redact(f"the Batch API: {_describe(error)} (gave up after {attempt + 1} attempts)"))
            await asyncio.sleep(self._delay(attempt, error))
        raise AssertionError("unreachable")
