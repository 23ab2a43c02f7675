"""Which structured-output mode a judge server really supports: asked once, before the run's first row.

Servers differ in what they do with `response_format`, and a status code does not tell which: OpenAI
enforces a json_schema, llama.cpp's server may answer one with HTTP 500, `transformers serve` answers 200
and ignores it (docs/judge-servers.md). So the judge's preflight (sftlab.judge.stage, run by `run` before
its first row; `plan` sends nothing) asks, when the OpenAI backend has rows to judge:

    for mode in json_schema, json_object, prompt:
        one tiny rubric request (PROBE_RUBRIC: one criterion, "What is 2 + 2?") in that mode
        its answer parses and validates against the rubric's pydantic model  ->  this mode

The json_schema request leaves the JSON shape out of the prompt, so only a server that enforces the schema
can answer it validly: a 200 whose answer does not follow the schema means the schema was ignored. The
other two state the shape, as every row request does (sftlab.judge.rubric). An HTTP error (5xx included),
a refusal, a timeout or an invalid answer: the mode is unsupported — not a transient fault, so no retries;
only 408/409/429 and dropped connections are tried again (`PROBE_RETRIES`). When no mode validates (a model
too weak to follow the shape) the first answered in JSON is used, else the last answered at all (prompt:
response_format did nothing), and nothing is remembered.
A rejected key, an unknown model or an endpoint that cannot be reached leaves the probe undecided: the run
starts at json_schema and stops as it always did (sftlab.judge.api).

A decided result is remembered per (base_url, model) in `judge/probes.json`, so a re-run does not ask
again. `judge.probe: always` asks again (a different server behind the same address); `off` never asks
(json_schema first). A forced `judge.structured` is used as it is, and only probed, to report, under
`probe: always`. Under `structured: auto` the run starts in the chosen mode and still moves down a mode
on a 400/422 (the safety net of sftlab.judge.api). Probe requests are few and tiny; they are counted in
`Structured.requests` and the estimate, not in the run's requests or cost.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

from sftlab.clock import utc_now
from sftlab.config import JudgeParams
from sftlab.files import atomic_write_text
from sftlab.reports import shorten
from sftlab.judge.api import (MODES, OPENAI_URL, RETRY_STATUS, OpenAIJudge, _connection_level, _describe, _text_of,
                              fatal_reason)
from sftlab.judge.rubric import Criterion, InvalidJudgment, Mode, Rubric

PROBE_FILE = "probes.json"  # in judge/, beside the judgment files that are the cache
PROBE_RETRIES = 2  # for 408/409/429 and dropped connections only
_short = functools.partial(shorten, limit=160)  # what the plan shows of an error or an answer
MARKER = "sftlab structured-output probe"  # in every probe request: test servers tell probes from rows by it
PROBE_RUBRIC = Rubric(
    name="sftlab-probe", language="en",
    system_prompt=f"You grade an answer against a reference answer ({MARKER}).",
    user_template="Question:\n{conversation}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{output}",
    criteria=(Criterion(key="correctness", name="Correctness", scale=(1, 5),
                        description="Does the answer agree with the reference answer?"),))
PROBE_PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@dataclass
class Tried:
    mode: str
    result: str  # valid | json (JSON, not the schema) | answered (200, not JSON) | error | fatal | unreachable
    detail: str


@dataclass
class Structured:
    """The structured-output mode a run starts in, and how it was decided."""

    mode: Mode
    how: str  # probed | remembered | forced | not probed | undecided
    tried: list[Tried] = field(default_factory=list)
    probed_at: str | None = None
    requests: int = 0  # probe requests sent by this plan
    note: str = ""

    def __str__(self) -> str:
        found = "; ".join(f"{t.mode}: {t.detail}" for t in self.tried)
        if self.how == "probed":
            text = f"{self.mode} (probed now, {self.requests} request{'s' * (self.requests != 1)} — {found})"
        elif self.how == "remembered":
            text = (f"{self.mode} (probed {self.probed_at} — {found}; remembered in judge/{PROBE_FILE}, "
                    f"--set judge.probe=always asks again)")
        elif self.how == "forced":
            text = f"{self.mode} (judge.structured)" + (f"; the probe found: {found}" if found else "")
        else:
            text = f"{self.mode} first ({self.how}{': ' + found if found else ''})"
        return text + (f"; {self.note}" if self.note else "")


def server_key(judge: JudgeParams) -> str:
    return f"{(judge.base_url or OPENAI_URL).rstrip('/')} {judge.model}"


NOT_ASKED = "not asked yet"  # Structured.how of a plan whose run will ask the server first


def known(judge: JudgeParams, directory: Path) -> Structured:
    """The mode to start in as far as it is known without a request: forced, probe off, remembered; else
    `NOT_ASKED` (json_schema, until `choose` asks). Reads judge/probes.json only."""
    remembered = _load(directory).get(server_key(judge))
    if judge.structured != "auto" and judge.probe != "always":
        tried = [Tried(**t) for t in remembered["tried"]] if remembered else []
        return Structured(judge.structured, "forced", tried, remembered and remembered["probed_at"])
    if judge.probe == "off":
        return Structured("json_schema", "not probed", note="judge.probe is off; a 400/422 moves down a mode")
    if remembered and judge.probe == "auto":
        return Structured(remembered["mode"], "remembered", [Tried(**t) for t in remembered["tried"]],
                          remembered["probed_at"])
    return Structured("json_schema", NOT_ASKED, note="the run asks the server before its first row")


async def choose(judge: JudgeParams, directory: Path) -> Structured:
    """The mode to start in: `known`, else probed now (sends requests) and remembered when decided.
    `directory` is judge/, where probes.json lives."""
    decided = known(judge, directory)
    if decided.how != NOT_ASKED:
        return decided
    forced = judge.structured != "auto"
    found = await probe(judge)
    if found.how == "probed" and found.tried[-1].result == "valid":
        _remember(directory, judge, found)
    if forced:
        return Structured(judge.structured, "forced", found.tried, found.probed_at, found.requests,
                          note=f"the probe would pick {found.mode}")
    return found


async def probe(judge: JudgeParams) -> Structured:
    """Ask the server in each mode, best first, until one answer validates."""
    backend = OpenAIJudge(judge.model_copy(update={"structured": "auto"}))
    client = backend.client()
    tried: list[Tried] = []
    try:
        for mode in MODES:
            tried.append(await _ask(backend, client, mode))
            if tried[-1].result in ("valid", "fatal", "unreachable"):
                break
    finally:
        await client.close()
        backend._secret = None
    now = utc_now()
    last = tried[-1]
    if last.result in ("fatal", "unreachable"):
        return Structured("json_schema", "undecided", tried, now, backend.requests,
                          note="the run starts at json_schema and stops on the same error")
    if last.result == "valid":
        return Structured(last.mode, "probed", tried, now, backend.requests)
    # No valid answer (a model too weak to follow the shape): the first mode answered in JSON; else, when no
    # answer was even JSON, response_format did nothing useful, so the last mode answered at all (prompt).
    in_json = [t for t in tried if t.result == "json"]
    answered = [t for t in tried if t.result == "answered"]
    if not in_json and not answered:
        return Structured("json_schema", "undecided", tried, now, backend.requests,
                          note="no mode was answered; a 400/422 during the run moves down a mode")
    best = in_json[0] if in_json else answered[-1]
    return Structured(best.mode, "probed", tried, now, backend.requests,
                      note="no mode gave a valid answer: not remembered, the next run asks again")


async def _ask(backend: OpenAIJudge, client: openai.AsyncOpenAI, mode: Mode) -> Tried:
    """One probe request in `mode` (retried only for 408/409/429 and dropped connections)."""
    p = backend.params
    messages = PROBE_RUBRIC.messages(PROBE_PROMPT, "4", "4", shape=mode != "json_schema")
    request = backend.request_body(messages, mode, PROBE_RUBRIC)
    for attempt in range(PROBE_RETRIES + 1):
        backend.requests += 1
        retry: Exception | None = None
        try:
            completion = await client.chat.completions.create(**request)
        except openai.APIStatusError as e:
            fatal = fatal_reason(e.status_code, getattr(e, "code", None), e.message, p)
            if fatal:
                return Tried(mode, "fatal", backend._redact(fatal))
            if e.status_code not in RETRY_STATUS:
                return Tried(mode, "error", backend._redact(_short(_describe(e))))
            retry = e
        except openai.APIConnectionError as e:  # timeouts included
            if _connection_level(e):
                return Tried(mode, "unreachable", backend._redact(_short(_describe(e))))
            if isinstance(e, openai.APITimeoutError):
                return Tried(mode, "error", f"no answer within judge.timeout_s ({p.timeout_s:g} s)")
            retry = e
        except (openai.APIResponseValidationError, ValueError) as e:
            return Tried(mode, "error", backend._redact(_short(_describe(e))))
        if retry is not None:
            if attempt == PROBE_RETRIES:
                return Tried(mode, "error", backend._redact(_short(f"{_describe(retry)} ({attempt + 1} attempts)")))
            await asyncio.sleep(backend._delay(attempt, retry))
            continue
        text, refusal = _text_of(completion)
        if refusal is not None:
            return Tried(mode, "error", f"refused: {_short(refusal)}")
        try:
            PROBE_RUBRIC.parse(text)
        except InvalidJudgment as e:
            ignored = " (the schema was ignored)" if mode == "json_schema" else ""
            return Tried(mode, "json" if _json_object(text) else "answered",
                         f"200, but the answer does not follow the schema{ignored}: {_short(str(e))}; "
                         f"answer {_short(text or '')!r}")
        return Tried(mode, "valid", "valid answer")
    raise AssertionError("unreachable")


def _json_object(text: str | None) -> bool:
    try:
        return isinstance(json.loads(text or ""), dict)
    except ValueError:
        return False


# ---- judge/probes.json ----------------------------------------------------------------------


def _load(directory: Path) -> dict[str, dict[str, Any]]:
    try:
        entries = json.loads((directory / PROBE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # none yet, or unreadable: ask again
        return {}
    return {f"{e['base_url']} {e['model']}": e for e in entries if isinstance(e, dict) and "mode" in e}


def _remember(directory: Path, judge: JudgeParams, found: Structured) -> None:
    entries = _load(directory)
    entries[server_key(judge)] = {"base_url": (judge.base_url or OPENAI_URL).rstrip("/"), "model": judge.model,
                                  "mode": found.mode, "probed_at": found.probed_at,
                                  "tried": [asdict(t) for t in found.tried]}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / PROBE_FILE, json.dumps(list(entries.values()), indent=2, ensure_ascii=False) + "\n")
