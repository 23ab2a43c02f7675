"""Data-parallel generation: one engine replica per device, each answering its share of the batches.

    make_engine = HFReplicas(2, dtype="auto")     # infer.data_parallel: 2 (two GPUs; on CPU two processes)
    engine = make_engine(checkpoint_path)         # every replica loads the checkpoint
    for index, generations in engine.generate_batches(batches, settings): ...   # in batch order
    make_engine.close()

The infer stage forms its length-sorted batches exactly as with one engine, and each batch is answered
whole by one replica: a batch's rows do not depend on which replica answered it, nor on how many there
are (greedy decoding of a batch is a function of the batch; sampling is seeded per batch). The replicas
take the next batch as they finish one, and `generate_batches` yields the answers in batch order, so the
generations file is written in the same order as with one replica and a kill loses only the batches in
flight.

HF replicas are processes (multiprocessing, spawn) with the model on `cuda:<i>`, or, without GPUs, N
processes sharing the CPU cores (torch threads split between them). The vLLM engine's replicas are worker
processes of its own (sftlab.infer.vllm_engine), each with `infer.tensor_parallel` GPUs.

Raises `models.ModelError` when a replica fails (its message, naming the replica's device) or dies.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from typing import Callable, Iterator, Sequence

from sftlab import models

POLL_S = 1.0  # seconds between two looks at whether a silent replica is still alive


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (every GPU torch sees when it is
    unset); none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named:
        return [g.strip() for g in named.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(replicas: int, per_replica: int = 1) -> list[list[str]]:
    """The GPUs of each replica, `per_replica` each in the visible order (refused when fewer are visible than
    replicas x per_replica); no groups at all when this machine has no GPU."""
    gpus = visible_gpus()
    if not gpus:
        return []
    need = replicas * per_replica
    if need > len(gpus):
        asked = (f"infer.data_parallel: {replicas} replicas" if per_replica == 1 else
                 f"infer.data_parallel: {replicas} replicas of infer.tensor_parallel: {per_replica} GPUs")
        named = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise models.ModelError(f"{asked} need {need} GPUs, and {len(gpus)} {'is' if len(gpus) == 1 else 'are'} "
                                f"visible here (CUDA_VISIBLE_DEVICES={named})")
    return [gpus[i * per_replica:(i + 1) * per_replica] for i in range(replicas)]


def devices(n: int) -> list[str]:
    """The device of each of `n` replicas: `cuda:0` .. `cuda:n-1` (refused when fewer GPUs are visible), or
    `cpu` for each when this machine has no GPU."""
    return [f"cuda:{i}" for i in range(n)] if gpu_groups(n) else ["cpu"] * n


def in_batch_order(batches: Sequence, replicas: Sequence[Callable]) -> Iterator[tuple[int, object]]:
    """Answer `batches` with `replicas` (blocking callables, one batch at a time each; a replica takes the next
    batch when it is done with one) and yield (index, answer) in batch order. The first exception a replica
    raises is raised here, after the answers before it were yielded; the other replicas stop taking batches."""
    todo: queue.Queue = queue.Queue()
    for item in enumerate(batches):
        todo.put(item)
    answers: dict[int, object] = {}
    failures: list[BaseException] = []
    ready = threading.Condition()
    stop = threading.Event()

    def serve(replica: Callable) -> None:
        while not stop.is_set():
            try:
                index, batch = todo.get_nowait()
            except queue.Empty:
                return
            try:
                answer = replica(batch)
            except BaseException as e:  # handed to the consuming thread, which raises it
                with ready:
                    failures.append(e)
                    stop.set()
                    ready.notify_all()
                return
            with ready:
                answers[index] = answer
                ready.notify_all()

    threads = [threading.Thread(target=serve, args=(r,), daemon=True, name=f"sftlab-replica-{i}")
               for i, r in enumerate(replicas)]
    for thread in threads:
        thread.start()
    try:
        for index in range(len(batches)):
            with ready:
                ready.wait_for(lambda: index in answers or failures)
                if index not in answers:
                    raise failures[0]
                answer = answers.pop(index)
            yield index, answer
    finally:
        stop.set()  # a consumer that stops early (or failed) leaves the replicas idle, not busy
        for thread in threads:
            thread.join()


class ReplicaEngine:
    """The engine of one checkpoint over several replicas: the stage's `GenerationEngine`, plus
    `generate_batches`, which the stage uses to keep every replica busy."""

    def __init__(self, tokenizer, replicas: Sequence[Callable]):
        self.tokenizer = tokenizer
        self.replicas = list(replicas)  # replica(prompts, settings) -> [Generation]

    def generate(self, prompts, settings):
        return self.replicas[0](prompts, settings)

    def generate_batches(self, batches: Sequence, settings) -> Iterator[tuple[int, list]]:
        return in_batch_order(batches, [lambda prompts, r=r: r(prompts, settings) for r in self.replicas])


# --------------------------------------------------------------------------------------------
# HF replicas: one process per device
# --------------------------------------------------------------------------------------------


def _hf_replica(device: str, threads: int, connection) -> None:
    """A replica process: loads checkpoints and answers batches sent over `connection`."""
    import torch

    from sftlab.infer.engine import HFEngine

    if device == "cpu":
        torch.set_num_threads(threads)
    engine = None
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        op = message[0]
        if op == "quit":
            return
        try:
            if op == "load":
                _, path, dtype, template = message
                engine = None
                engine = HFEngine(path, dtype=dtype, device=device, chat_template=template)
                connection.send(("ok", None))
            elif op == "generate":
                _, prompts, settings = message
                connection.send(("ok", engine.generate(prompts, settings)))
        except BaseException as e:  # the parent raises it, naming this replica
            connection.send(("error", f"{type(e).__name__}: {e}"))


class HFReplicas:
    """`make_engine` for `infer.data_parallel` > 1 with the HF engine: `n` replica processes for the whole run
    (started at the first checkpoint, each loading every checkpoint in turn); `close()` ends them."""

    def __init__(self, n: int, dtype: str = "auto", chat_template: str | None = None):
        self.n, self.dtype, self.chat_template = n, dtype, chat_template
        self.devices: list[str] = []
        self.processes: list = []
        self.connections: list = []

    def _start(self) -> None:
        self.devices = devices(self.n)
        threads = max(1, (os.cpu_count() or 1) // self.n)
        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        for device in self.devices:
            parent, child = context.Pipe()
            process = context.Process(target=_hf_replica, args=(device, threads, child), daemon=True,
                                      name=f"sftlab-infer-{device}")
            process.start()
            child.close()
            self.processes.append(process)
            self.connections.append(parent)

    def _receive(self, i: int, doing: str):
        """Replica i's answer; a replica that died or failed raises, naming itself and what it was doing."""
        connection, process = self.connections[i], self.processes[i]
        where = f"infer replica {i} ({self.devices[i]})"
        while not connection.poll(POLL_S):
            if not process.is_alive():
                raise models.ModelError(f"{where} ended with exit code {process.exitcode} while {doing} "
                                        f"(out of memory?)")
        try:
            status, value = connection.recv()
        except EOFError:
            process.join(5)
            raise models.ModelError(f"{where} ended with exit code {process.exitcode} while {doing}") from None
        if status != "ok":
            raise models.ModelError(f"{where}, {doing}: {value}")
        return value

    def _generate(self, i: int, prompts, settings):
        self.connections[i].send(("generate", prompts, settings))
        return self._receive(i, "answering a batch")

    def __call__(self, model_path: str) -> ReplicaEngine:
        from transformers import AutoTokenizer

        if not self.processes:
            self._start()
        for connection in self.connections:  # every replica loads at once
            connection.send(("load", model_path, self.dtype, self.chat_template))
        for i in range(self.n):
            self._receive(i, f"loading {model_path}")
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.chat_template:
            tokenizer.chat_template = self.chat_template
        return ReplicaEngine(tokenizer, [lambda prompts, settings, i=i: self._generate(i, prompts, settings)
                                         for i in range(self.n)])

    def close(self) -> None:
        for connection, process in zip(self.connections, self.processes):
            try:
                connection.send(("quit",))
            except (BrokenPipeError, OSError):
                pass
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes, self.connections = [], []
