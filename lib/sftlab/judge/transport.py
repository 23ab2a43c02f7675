"""The judge's HTTP transport, one for every path that talks to an OpenAI-compatible server: direct requests
(sftlab.judge.api), the Batch API (sftlab.judge.batch) and the capability probe (sftlab.judge.probe).

    transport.client()                      the SDK's async client, the key read from the environment now
    await transport.send(client, tally, request)   one chat completion, with retries and backoff
    transport.delay(attempt, error)         backoff: base * 2**n jittered into [d/2, d], or retry-after
    transport.count_connect_failure(error)  the circuit breaker (raises Fatal once the endpoint is unreachable)
    transport.redact(text)                  the key scrubbed from any text that leaves this module
    Tally                                   requests and token usage of one judgment

Transient failures — 408, 409, 429, 5xx, timeouts, dropped connections, an unreadable body — are retried up
to `max_retries` times, waiting base * 2**n (jittered) or what `retry-after`/`retry-after-ms` says, never more
than `backoff_max_s`. A rejected key (401/403), an unknown model (404) or an exhausted quota raise `Fatal`:
no later request can succeed either.

A circuit breaker tells a dead endpoint from a busy one. Connection-level failures — the name does not
resolve, the connection is refused or times out while connecting, TLS fails — before the endpoint has
ever answered mean it is unreachable: after `BREAKER_FAILURES` of them (counted over every request, so
the first wave of concurrent requests trips it at once) nothing more is sent, `unreachable` says why
and how to fix it, and the run stops with `fatal` set — within seconds, not after every row's retries.
Once the endpoint has answered anything, the same failures are transient and retried with backoff.
Connecting may take at most `CONNECT_TIMEOUT_S` (or `timeout_s`, if shorter).

The key is read from os.environ[judge.api_key_env] when a client is made, handed to it, and scrubbed from
every error text (`redact`); `forget_key` drops it when the run ends.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import openai

from sftlab.config import JudgeParams
from sftlab.errors import SftlabError
from sftlab.judge.rubric import Mode

MODES: tuple[Mode, ...] = ("json_schema", "json_object", "prompt")
BREAKER_FAILURES = 3  # connection-level failures, with no answer ever, that mean the endpoint is down
CONNECT_TIMEOUT_S = 10.0  # a host that takes longer to accept a connection is treated as unreachable
OPENAI_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 429}


class JudgeConfigError(SftlabError, ValueError):
    """The backend cannot start (no key, no price for a budget); nothing was sent."""


@dataclass
class Tally:
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


class Fatal(Exception):
    """No later request can succeed either (bad key, unknown model, no quota)."""


class GaveUp(Exception):
    """Retries exhausted; the message says what the last attempt met."""


@dataclass
class Transport:
    """Requests to one endpoint for one run: the counts, the breaker's state, the key for redaction."""

    params: JudgeParams
    requests: int = 0  # HTTP requests sent in this run, retries and repairs included
    responses: int = 0  # HTTP responses received (any status): the endpoint is alive
    connect_failures: int = 0
    unreachable: str | None = None  # set when the circuit breaker trips: the endpoint never answered
    stopped: str | None = None  # why no new request starts (budget, fatal error)
    fatal: bool = False
    _secret: str | None = None

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

    def forget_key(self) -> None:
        self._secret = None

    async def send(self, client: openai.AsyncOpenAI, tally: Tally, request: dict[str, Any]):
        """One chat completion, retried on transient failures with backoff (honouring retry-after); counts every
        request and response; raises Fatal (no later request can succeed), GaveUp (retries exhausted) or the
        SDK's APIStatusError for a 4xx the caller decides about (a fallback, or an error row)."""
        p = self.params
        for attempt in range(p.max_retries + 1):
            if self.unreachable:  # tripped by another request meanwhile: send nothing more
                raise Fatal(self.unreachable)
            tally.requests += 1
            self.requests += 1
            try:
                completion = await client.chat.completions.create(**request)
                self.responses += 1
                tally.add(completion)
                return completion
            except openai.APIStatusError as e:
                self.responses += 1
                raise_if_fatal(e, p)
                if e.status_code not in RETRY_STATUS and e.status_code < 500:
                    raise  # 400 and friends: the caller decides (fallback, or an error row)
                error: Exception = e
            except openai.APIConnectionError as e:  # timeouts and dropped connections
                if connection_level(e) and not self.responses:
                    self.count_connect_failure(e)
                error = e
            except (openai.APIResponseValidationError, ValueError) as e:  # a body that is not JSON
                error = e
            if attempt == p.max_retries:
                raise GaveUp(f"{describe(error)} (gave up after {attempt + 1} attempts)")
            await asyncio.sleep(self.delay(attempt, error))
        raise AssertionError("unreachable")

    def count_connect_failure(self, error: Exception) -> None:
        """The circuit breaker: enough connection-level failures and no answer ever -> unreachable."""
        self.connect_failures += 1
        if self.connect_failures >= BREAKER_FAILURES and not self.unreachable:
            url = self.params.base_url or OPENAI_URL
            self.unreachable = self.redact(
                f"the judge endpoint {url} is unreachable ({describe(error)}; {self.connect_failures} "
                f"connection attempts failed and none was ever answered). Nothing more is sent; rows judged "
                f"so far are kept and a re-run resumes. Fix: judge offline with --set judge.backend=reference, "
                f"or check the network and proxy (HTTPS_PROXY) and judge.base_url")
            self.stopped, self.fatal = self.unreachable, True
        if self.unreachable:
            raise Fatal(self.unreachable)

    def delay(self, attempt: int, error: Exception) -> float:
        p = self.params
        hinted = retry_after(error)
        if hinted is not None:
            return min(hinted, p.backoff_max_s)
        ceiling = min(p.backoff_max_s, p.backoff_base_s * 2 ** attempt)
        return random.uniform(ceiling / 2, ceiling)  # jitter: concurrent retries do not arrive together

    def redact(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "[redacted]")
        return text


def text_of(completion: Any) -> tuple[str | None, str | None]:
    """(content, refusal) of the first choice; a content filter stop counts as a refusal."""
    if not getattr(completion, "choices", None):
        return None, None
    choice = completion.choices[0]
    message = choice.message
    refusal = getattr(message, "refusal", None)
    if refusal is None and choice.finish_reason == "content_filter":
        refusal = message.content or "stopped by the server's content filter"
    return message.content, refusal


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


def raise_if_fatal(e: openai.APIStatusError, p: JudgeParams) -> None:
    reason = fatal_reason(e.status_code, getattr(e, "code", None), e.message, p)
    if reason:
        raise Fatal(reason)


def retry_after(error: Exception) -> float | None:
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


def connection_level(error: Exception) -> bool:
    """A failure to connect at all (DNS, refused, connect timeout, TLS), as opposed to a connection that
    was made and then dropped, or a read that timed out on a live server."""
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if type(cause).__name__ in ("ConnectError", "ConnectTimeout"):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def describe(error: Exception) -> str:
    if isinstance(error, openai.APITimeoutError):
        return "request timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"connection failed: {error.__cause__ or error}"
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, ValueError):
        return f"unreadable response body: {error}"
    return str(error)
