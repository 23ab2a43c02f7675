"""An OpenAI-compatible chat-completions server for the judge's tests and benchmark.

Listens on 127.0.0.1 (a free port), answers `POST /v1/chat/completions` with a valid evaluation for
whatever schema the request carries — from `response_format` (json_schema) or, without it, from the
```json block the judge puts in its prompt — and can be scripted to misbehave:

    server.add_fault("rate_limit", times=2)            # the next 2 requests get 429 + retry-after
    server.add_fault("refusal", match="sample-7")      # every request whose text contains "sample-7"

Flavours, the way real servers treat `response_format` (the whole server, probe requests included):

    FakeJudgeServer()                          openai: a json_schema is enforced (the answer follows it)
    FakeJudgeServer(flavour="llamacpp")        llama.cpp's server (llama-cpp-python): HTTP 500 to a
                                               json_schema; a json_object's `schema` enforced
    FakeJudgeServer(flavour="transformers")    `transformers serve`: response_format ignored, 200 always; the
                                               "model" answers valid JSON only when the prompt states the
                                               shape (its ```json block), prose otherwise

The capability probe's requests (sftlab.judge.probe, marked with its MARKER) are kept apart in `probes`,
and faults pass them by unless added with `probe=True` (then they hit probes only): the fault tests
script the rows' requests, the probe tests script the probe.

Faults: rate_limit (429 with retry-after), server_error (500), slow (answers after `slow_s`, longer
than the client's timeout), malformed_body (200 whose body is not JSON), malformed_json (content that
is not JSON), schema_violation (JSON that breaks the schema), refusal, reject_response_format (400
when the request has `response_format`), drop (closes the connection without a response), unauthorized
(401 whose message quotes the key, as some servers do), position_bias (a pairwise verdict that always
prefers the first answer), context_length (400: the prompt is over the model's context, as a repair
request with a long first answer can be). Pairwise requests (a schema with `verdict`) get a verdict that does not depend
on the order of the answers.

Every request is counted and kept (`requests`: the parsed bodies, oldest first); `max_in_flight` is
the most requests it was answering at once. Scores are a hash of
the request, so the same request always gets the same evaluation. Use as a context manager.

The Batch API too: `POST /v1/files` (multipart upload), `GET /v1/files/{id}/content`, `POST /v1/batches`,
`GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`. A batch's lines are answered like chat requests
(faults included; `drop` and `malformed_body` become a 500 line) after `batch_delay_s`, on a thread of
its own; `batch_failures` (custom id -> times) fail in the error file; `batch_expire_after` answers that many
lines and expires the batch with the rest in the error file (`batch_expired`). `batches` keeps every
batch object, `batch_lines` every line answered.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sftlab.judge.probe import MARKER as PROBE_MARKER

# The API key the judge tests put in the environment (never a real one): tests check it reaches the server
# and never lands on disk.
KEY_ENV = "SFTLAB_TEST_JUDGE_KEY"
KEY = "sk-sftlab-test-7f3a9c2e41d0-do-not-leak"

FLAVOURS = ("openai", "llamacpp", "transformers")
FAULTS = ("rate_limit", "server_error", "slow", "malformed_body", "malformed_json", "schema_violation",
          "refusal", "reject_response_format", "drop", "unauthorized", "position_bias", "context_length")


@dataclass
class Fault:
    kind: str
    times: int | None  # None: every matching request
    match: str | None  # substring of the request's message text; None: any request
    probe: bool = False  # True: hits the capability probe's requests only; False: the rows' requests only


class FakeJudgeServer:
    def __init__(self, latency_s: float = 0.0, slow_s: float = 2.0, retry_after: str = "0.01",
                 usage: bool = True, noise: float = 0.0, seed: int = 0, flavour: str = "openai"):
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
        self.flavour = flavour
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.usage = usage
        # A noisy judge: each criterion's score is, with this probability, moved one step (wrapping within
        # the scale) from the one the request's hash gives — so two passes disagree at a known rate.
        self.noise = noise
        self._noise_rng = random.Random(seed)
        self.requests: list[dict] = []
        self.probes: list[dict] = []  # the capability probe's requests, apart from the rows'
        self.faults_served: list[str] = []
        self.authorization: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: list[Fault] = []
        self.batch_delay_s = 0.0
        self.batch_failures: dict[str, int] = {}  # custom_id -> how many more times its line fails
        self.batch_expire_after: int | None = None
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_lines: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
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

    def add_fault(self, kind: str, times: int | None = None, match: str | None = None, probe: bool = False) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        with self._lock:
            self._faults.append(Fault(kind, times, match, probe))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.probes.clear()
            self.faults_served.clear()
            self.max_in_flight = 0

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def _take_fault(self, text: str) -> str | None:
        probe = PROBE_MARKER in text
        with self._lock:
            for fault in self._faults:
                if fault.times == 0 or (fault.match is not None and fault.match not in text) or fault.probe != probe:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                self.faults_served.append(fault.kind)
                return fault.kind
        return None

    def _record(self, body: dict, authorization: str | None) -> None:
        with self._lock:
            probe = PROBE_MARKER in json.dumps(body.get("messages"), ensure_ascii=False)
            (self.probes if probe else self.requests).append(body)
            if authorization:
                self.authorization.add(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # ---- the Batch API ---------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = self._new_id("file")
        with self._lock:
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def create_batch(self, request: dict) -> dict:
        batch_id = self._new_id("batch")
        now = int(time.time())
        batch = {"id": batch_id, "object": "batch", "endpoint": request.get("endpoint"),
                 "input_file_id": request.get("input_file_id"), "completion_window": request.get("completion_window"),
                 "status": "in_progress", "created_at": now, "in_progress_at": now, "expires_at": now + 86400,
                 "metadata": request.get("metadata"), "output_file_id": None, "error_file_id": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        with self._lock:
            self.batches[batch_id] = batch
        threading.Thread(target=self._process_batch, args=(batch_id,), daemon=True).start()
        return dict(batch)

    def cancel_batch(self, batch_id: str) -> dict | None:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is not None and batch["status"] in ("validating", "in_progress", "finalizing"):
                batch["status"] = "cancelling"
            return dict(batch) if batch else None

    def _process_batch(self, batch_id: str) -> None:
        batch = self.batches[batch_id]
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].decode("utf-8").splitlines()
                 if line.strip()]
        batch["request_counts"]["total"] = len(lines)
        until = time.monotonic() + self.batch_delay_s
        while time.monotonic() < until and batch["status"] != "cancelling" and not self._stopping.is_set():
            self.sleep(0.02)  # a cancel is honoured at once
        outputs, errors, final = [], [], "completed"
        for number, line in enumerate(lines):
            if batch["status"] == "cancelling":
                final = "cancelled"
            elif self.batch_expire_after is not None and number >= self.batch_expire_after:
                final = "expired"
            if final != "completed":
                errors.append({"id": self._new_id("batch_req"), "custom_id": line["custom_id"], "response": None,
                               "error": {"code": f"batch_{final}", "message": f"This request was {final}."}})
                continue
            with self._lock:
                self.batch_lines.append(line)
            if self.batch_failures.get(line["custom_id"], 0) > 0:
                self.batch_failures[line["custom_id"]] -= 1
                errors.append({"id": self._new_id("batch_req"), "custom_id": line["custom_id"], "response": None,
                               "error": {"code": "server_error", "message": "The server had an error."}})
                batch["request_counts"]["failed"] += 1
                continue
            status, payload, _ = reply_for(self, line["body"], batch=True)
            outputs.append({"id": self._new_id("batch_req"), "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": status, "request_id": self._new_id("req"), "body": payload}})
            batch["request_counts"]["completed" if status == 200 else "failed"] += 1
            if self.batch_delay_s:
                self.sleep(self.batch_delay_s / max(len(lines), 1))
        with self._lock:
            if outputs:
                batch["output_file_id"] = self.add_file(_jsonl(outputs), "output.jsonl", "batch_output")["id"]
            if errors:
                batch["error_file_id"] = self.add_file(_jsonl(errors), "errors.jsonl", "batch_output")["id"]
            batch["status"] = final
            batch[f"{final}_at"] = int(time.time())


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _schema_of(body: dict, enforced: bool = True) -> dict | None:
    """The schema the answer follows: response_format's json_schema where the server enforces it, else the
    one in the prompt's ```json block (a model that follows instructions)."""
    response_format = body.get("response_format") or {}
    if enforced and response_format.get("type") == "json_schema":
        return response_format["json_schema"]["schema"]
    if enforced and response_format.get("type") == "json_object" and "schema" in response_format:
        return response_format["schema"]  # llama.cpp's servers enforce it; OpenAI's does not know the field
    for message in body.get("messages", []):
        found = re.search(r"```json\s*(\{.*?\})\s*```", message.get("content") or "", flags=re.DOTALL)
        if found:
            return json.loads(found.group(1))
    return None


_ANSWERS = re.compile(r"\[(?:Answer|답변) A\]\n(.*?)\n\n\[(?:Answer|답변) B\]\n(.*)", flags=re.DOTALL)


def verdict_for(body: dict, position_bias: bool = False) -> dict:
    """A pairwise verdict: the shorter answer wins, much so when it is under half as long (the same in
    both orders); with `position_bias`, always "A>B" — so the two orders of a pair disagree."""
    if position_bias:
        return {"reason": "fake judge: the first answer", "verdict": "A>B"}
    user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
    found = _ANSWERS.search(user)
    a, b = (found.group(1).strip(), found.group(2).strip()) if found else ("", "")
    if len(a) == len(b):
        verdict = "A=B"
    elif len(a) < len(b):
        verdict = "A>>B" if 2 * len(a) < len(b) else "A>B"
    else:
        verdict = "B>>A" if 2 * len(b) < len(a) else "B>A"
    return {"reason": "fake judge: the shorter answer", "verdict": verdict}


def evaluation_for(body: dict, enforced: bool = True) -> dict:
    """A valid answer for the request's schema; scores are a hash of the messages."""
    schema = _schema_of(body, enforced) or {"properties": {}}
    if "verdict" in schema["properties"]:
        return verdict_for(body)
    seed = json.dumps(body.get("messages"), sort_keys=True)
    answer = {}
    for key, prop in schema["properties"].items():
        score = prop["properties"]["score"]
        low, high = score.get("minimum", 1), score.get("maximum", 5)
        digest = int(hashlib.sha256(f"{seed}|{key}".encode()).hexdigest(), 16)
        answer[key] = {"reason": f"fake judge reason for {key}", "score": low + digest % (high - low + 1)}
    return answer


def reply_for(server: FakeJudgeServer, body: dict, batch: bool = False, authorization: str | None = None) -> tuple:
    """(status, payload, headers) for one chat request, faults applied; status "drop" or "malformed_body"
    for the faults that break the HTTP exchange itself (a 500 inside a batch)."""
    text = json.dumps(body.get("messages"), ensure_ascii=False)
    fault = server._take_fault(text)
    if server.latency_s and not batch:
        server.sleep(server.latency_s)
    if fault in ("drop", "malformed_body"):
        if batch:
            return 500, {"error": {"message": "The server had an error", "type": "server_error"}}, {}
        return fault, None, {}
    if fault == "rate_limit":
        return 429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                               "code": "rate_limit_exceeded"}}, {"retry-after": server.retry_after}
    if fault == "unauthorized":
        key = (authorization or "").removeprefix("Bearer ")  # quoted back, as some servers do
        return 401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                               "code": "invalid_api_key"}}, {}
    if fault == "context_length":
        return 400, {"error": {"message": "This model's maximum context length is 2048 tokens. However, your "
                               "messages resulted in 2301 tokens.", "type": "invalid_request_error",
                               "param": "messages", "code": "context_length_exceeded"}}, {}
    if fault == "server_error":
        return 500, {"error": {"message": "The server had an error", "type": "server_error"}}, {}
    if fault == "reject_response_format" and body.get("response_format"):
        return 400, {"error": {"message": "response_format is not supported by this server",
                               "type": "invalid_request_error", "param": "response_format"}}, {}
    if fault == "slow" and not batch:
        server.sleep(server.slow_s)
    response_format = body.get("response_format") or {}
    if server.flavour == "llamacpp" and response_format.get("type") == "json_schema":
        return 500, {"error": {"message": "llama.cpp: json_schema response_format failed", "type": "server_error",
                               "code": 500}}, {}
    if server.flavour == "transformers" and _schema_of(body, enforced=False) is None:
        return 200, _completion(server, body, text, "The answer is correct and complete, I would give it a 5.",
                                None), {}

    enforced = server.flavour in ("openai", "llamacpp")
    answer = verdict_for(body, position_bias=True) if fault == "position_bias" else evaluation_for(body, enforced)
    if server.noise and "verdict" not in answer:
        schema = _schema_of(body, enforced)
        with server._lock:
            for key, item in answer.items():
                if server._noise_rng.random() < server.noise:
                    score = schema["properties"][key]["properties"]["score"]
                    low, high = score.get("minimum", 1), score.get("maximum", 5)
                    item["score"] = low + (item["score"] - low + 1) % (high - low + 1)
    content, refusal = json.dumps(answer, ensure_ascii=False), None
    if fault == "malformed_json":
        content = '{"accuracy": {"reason": "unterminated'
    elif fault == "schema_violation":
        content = json.dumps({"accuracy": {"reason": "only one criterion", "score": 99}})
    elif fault == "refusal":
        refusal = "I'm sorry, I can't help with that."
        content = None if body.get("response_format") else refusal
    return 200, _completion(server, body, text, content, refusal), {}


def _completion(server: FakeJudgeServer, body: dict, text: str, content: str | None, refusal: str | None) -> dict:
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
    return reply


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

    def do_GET(self) -> None:
        server, path = self.judge_server, self.path.rstrip("/")
        content = re.fullmatch(r".*/files/([^/]+)/content", path)
        batch = re.fullmatch(r".*/batches/([^/]+)", path)
        if content and content.group(1) in server.files:
            return self._send(200, server.files[content.group(1)], "application/octet-stream")
        if batch and batch.group(1) in server.batches:
            return self._json(200, dict(server.batches[batch.group(1)]))
        return self._json(404, {"error": {"message": f"no such object: {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        server, path = self.judge_server, self.path.rstrip("/")
        if path.endswith("/files"):  # multipart upload: the file part and its purpose
            message = BytesParser().parsebytes(
                f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode() + raw)
            parts = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
            upload = parts["file"]
            return self._json(200, server.add_file(upload.get_payload(decode=True), upload.get_filename() or "upload",
                                                   parts["purpose"].get_payload(decode=True).decode()))
        if path.endswith("/batches"):
            return self._json(200, server.create_batch(json.loads(raw)))
        cancel = re.fullmatch(r".*/batches/([^/]+)/cancel", path)
        if cancel:
            batch = server.cancel_batch(cancel.group(1))
            return self._json(200, batch) if batch else self._json(404, {"error": {"message": "no such batch"}})
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
        status, payload, headers = reply_for(server, body, authorization=self.headers.get("Authorization"))
        if status == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if status == "malformed_body":
            return self._send(200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
        self._json(status, payload, headers)

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
