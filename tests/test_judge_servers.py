"""The judge stage against real OpenAI-compatible servers on 127.0.0.1, serving the demo model: what the
capability probe (sftlab.judge.probe) finds there, and that rows get through. The 135M demo model is a poor
judge; the transport is the point.

- llama.cpp's server (llama-cpp-python with its server extra): needs `make setup-llamacpp` (.venv-llamacpp,
  built from source, about 10 min on 2 cores); skipped without it. About 2 min to run here.
- `transformers serve` (the pinned transformers): needs its serving extra (fastapi, uvicorn), which the pinned
  environment does not have; skipped without it. To run it: `pip install --target DIR fastapi uvicorn starlette
  opentelemetry-api` and `PYTHONPATH=DIR .venv/bin/pytest -q tests/test_judge_servers.py`.

    make setup-llamacpp && .venv/bin/pytest -q tests/test_judge_servers.py
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_judge import EXPERIMENT, generation_row, write_generations
from sftlab import config, judge

ROOT = Path(__file__).resolve().parents[1]
LLAMACPP_PYTHON = ROOT / ".venv-llamacpp" / "bin" / "python"
STARTUP_S = 180


def english_rows(n: int) -> list[dict]:
    import json

    with open(ROOT / "data" / "demo" / "test.jsonl", encoding="utf-8") as f:
        return [row for row in map(json.loads, f) if row["lang"] == "en"][:n]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(command: list[str], port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a server and wait until /v1/models answers."""
    out = open(log, "w", encoding="utf-8")
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return process
        except OSError:
            time.sleep(1.0)
    stop(process)
    raise AssertionError(f"the server did not answer within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()  # uvicorn finishes the request in flight first: not for long
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def judge_params(base_url: str, model: str):
    # max_tokens: without it the demo model can write on to its context limit (minutes per request on CPU).
    return config.validate({"experiment": EXPERIMENT, "judge": {
        "backend": "openai", "base_url": base_url, "model": model, "max_tokens": 600, "concurrency": 1,
        "timeout_s": 300, "max_retries": 1, "backoff_base_s": 0.1}})


@pytest.mark.slow
@pytest.mark.skipif(not LLAMACPP_PYTHON.exists(), reason="no llama.cpp environment: run `make setup-llamacpp` first")
def test_llama_cpp_server_ends_in_json_object_and_judges_rows(outputs, tmp_path):
    from sftlab.models import builtin_gguf

    port = free_port()
    process = serve([str(LLAMACPP_PYTHON), "-m", "llama_cpp.server", "--model", str(builtin_gguf("smollm2-135m-instruct")),
                     "--model_alias", "demo", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                     "--n_threads", str(os.cpu_count() or 1)], port, tmp_path / "llamacpp.log")
    try:
        samples = english_rows(4)
        write_generations(outputs, "base", [generation_row(s, "base", s["answer"]) for s in samples])
        params = judge_params(f"http://127.0.0.1:{port}/v1", "demo")
        planned = judge.plan(params)
        # llama-cpp-python's request model knows response_format types text and json_object only: a
        # json_schema is a validation error it answers with HTTP 500. A json_object's `schema` it enforces.
        structured = planned.structured
        assert structured.mode == "json_object", structured
        assert structured.tried[0].mode == "json_schema" and structured.tried[0].detail.startswith("HTTP 500")
        assert structured.tried[1].result == "valid"
        try:
            summary = judge.run(planned, progress=False)
        except judge.JudgeFailed as failed:
            raise AssertionError(f"no row judged: {failed}") from None
        frame = judge.load_judgments(params)
        assert len(frame) == len(samples) and summary.judged >= 1, frame[["status", "error"]]
        assert set(frame["structured"]) == {"json_object"}
        print(f"\nllama.cpp: {summary.judged} of {len(samples)} rows judged; {structured}")
        assert judge.plan(params).structured.how == "remembered"
    finally:
        stop(process)


HAVE_SERVING = all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn"))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SERVING, reason="transformers serve needs fastapi and uvicorn (transformers[serving]), "
                                              "which the pinned environment does not install")
def test_transformers_serve_ignores_response_format_and_the_probe_sees_it(outputs, tmp_path, builtin_model_path):
    port = free_port()
    process = serve([str(Path(sys.executable).parent / "transformers"), "serve", str(builtin_model_path),
                     "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "info"],
                    port, tmp_path / "transformers.log")
    try:
        samples = english_rows(2)
        write_generations(outputs, "base", [generation_row(s, "base", s["answer"]) for s in samples])
        params = judge_params(f"http://127.0.0.1:{port}/v1", str(builtin_model_path))
        structured = judge.plan(params).structured
        # 200 to every mode; the json_schema answer (no shape in its prompt) does not follow the schema.
        json_schema = structured.tried[0]
        assert json_schema.result in ("answered", "json") and "the schema was ignored" in json_schema.detail
        assert "Ignoring unsupported fields in the request: {'response_format'}" in (
            tmp_path / "transformers.log").read_text(encoding="utf-8")
        print(f"\ntransformers serve: {structured}")
    finally:
        stop(process)
