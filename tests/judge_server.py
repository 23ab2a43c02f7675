"""An OpenAI-compatible chat-completions server for the judge's tests and benchmark.

Listens on 127.0.0.1 (a free port), answers `POST /v1/chat/completions` with a valid evaluation for
whatever schema the request carries — from `response_format` (json_schema) or, without it, from the
```json block the judge puts in its prompt — and can be scripted to misbehave:

    server.add_fault("rate_limit", times=2)            # the next 2 requests get 429 + retry-after
    server.add_fault("refusal", match="sample-7")      # every request whose text contains "sample-7"

Faults: rate_limit (429 with retry-after), server_error (500), slow (answers after `slow_s`, longer
than the client's timeout), malformed_body (200 whose body is not JSON), malformed_json (content that
is not JSON), schema_violation (JSON that breaks the schema), refusal, reject_response_format (400
when the request has `response_format`), drop (closes the connection without a response), unauthorized
(401 whose message quotes the key, as some servers do).

Every request is counted and kept (`requests`: the parsed bodies, oldest first); `max_in_flight` is
the most requests it was answering at once. Scores are a hash of
the request, so the same request always gets the same evaluation. Use as a context manager.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("rate_limit", "server_error", "slow", "malformed_body", "malformed_json", "schema_violation",
          "refusal", "reject_response_format", "drop", "unauthorized")


@dataclass
class Fault:
    kind: str
    times: int | None  # None: every matching request
    match: str | None  # substring of the request's message text; None: any request


class FakeJudgeServer:
    def __init__(self, latency_s: float = 0.0, slow_s: float = 2.0, retry_after: str = "0.01",
                 usage: bool = True):
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.usage = usage
        self.requests: list[dict] = []
        self.faults_served: list[str] = []
        self.authorization: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "FakeJudgeServer":
        handler = type("Handler", (_Handler,), {"judge_server": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a `slow` handler must not hold up the test's end
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # ---- scripting -------------------------------------------------------------------------

    def add_fault(self, kind: str, times: int | None = None, match: str | None = None) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._faults.append(Fault(kind, times, match))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.faults_served.clear()
            self.max_in_flight = 0

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def _take_fault(self, text: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.times == 0 or (fault.match is not None and fault.match not in text):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                self.faults_served.append(fault.kind)
                return fault.kind
        return None

    def _record(self, body: dict, authorization: str | None) -> None:
        with self._lock:
            self.requests.append(body)
            if authorization:
                self.authorization.add(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def _schema_of(body: dict) -> dict | None:
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return response_format["json_schema"]["schema"]
    for message in body.get("messages", []):
        found = re.search(r"```json\s*(\{.*?\})\s*```", message.get("content") or "", flags=re.DOTALL)
        if found:
            return json.loads(found.group(1))
    return None


def evaluation_for(body: dict) -> dict:
    """A valid answer for the request's schema; scores are a hash of the messages."""
    schema = _schema_of(body) or {"properties": {}}
    seed = json.dumps(body.get("messages"), sort_keys=True)
    answer = {}
    for key, prop in schema["properties"].items():
        score = prop["properties"]["score"]
        low, high = score.get("minimum", 1), score.get("maximum", 5)
        digest = int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest(), 16)
        answer[key] = {"reason": f"fake judge reason for {key}", "score": low + digest % (high - low + 1)}
    return answer


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connection attempts when 16 clients connect at once;
    # the kernel then retries the SYN after a second — a stall that looks like a slow server.
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client reuses connections
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's delayed
    # ACK (~40 ms) — a stall per response that would swamp the latency the benchmark sets.
    disable_nagle_algorithm = True
    judge_server: FakeJudgeServer

    def log_message(self, *args) -> None:  # quiet: tests read the request log instead
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}})
        server = self.judge_server
        server._record(body, self.headers.get("Authorization"))
        try:
            self._answer(server, body)
        finally:
            server._done()

    def _answer(self, server: FakeJudgeServer, body: dict) -> None:
        text = json.dumps(body.get("messages"), ensure_ascii=False)
        fault = server._take_fault(text)
        if server.latency_s:
            server.sleep(server.latency_s)

        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "rate_limit":
            return self._json(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                              "code": "rate_limit_exceeded"}},
                              {"retry-after": server.retry_after})
        if fault == "unauthorized":
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            return self._json(401, {"error": {"message": f"Incorrect API key provided: {key}",
                                              "type": "invalid_request_error", "code": "invalid_api_key"}})
        if fault == "server_error":
            return self._json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
        if fault == "reject_response_format" and body.get("response_format"):
            return self._json(400, {"error": {"message": "response_format is not supported by this server",
                                              "type": "invalid_request_error", "param": "response_format"}})
        if fault == "malformed_body":
            return self._send(200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
        if fault == "slow":
            server.sleep(server.slow_s)

        content, refusal = json.dumps(evaluation_for(body), ensure_ascii=False), None
        if fault == "malformed_json":
            content = '{"accuracy": {"reason": "unterminated'
        elif fault == "schema_violation":
            content = json.dumps({"accuracy": {"reason": "only one criterion", "score": 99}})
        elif fault == "refusal":
            refusal = "I'm sorry, I can't help with that."
            content = None if body.get("response_format") else refusal
        message = {"role": "assistant", "content": content, "refusal": refusal}
        reply = {
            "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        }
        if server.usage:
            # ~4 characters per token, as OpenAI's rule of thumb; exact values do not matter, stability does.
            reply["usage"] = {"prompt_tokens": len(text) // 4, "completion_tokens": len(content or refusal) // 4,
                              "total_tokens": len(text) // 4 + len(content or refusal) // 4}
        self._json(200, reply)

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a `slow` answer after its timeout)
