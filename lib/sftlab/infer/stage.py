"""The infer stage: answers of the base model and every selected checkpoint to the same test prompts.

    planned = infer.plan(params)      # which models, which samples, what is already on disk (reads only)
    planned.estimate()                # samples and new tokens to generate, at most
    summary = infer.run(planned)      # generate what is missing, checkpoint by checkpoint

What it runs: the base model (named `base` in the outputs, always first) and the checkpoints that
`infer.checkpoints` selects from `outputs/<exp>/train/` — `all` complete ones, the `last`, or a list of
names. The samples: `infer.num_samples` test rows drawn with the experiment's seed (the first N of a
seeded shuffle, kept in file order), the same rows for every checkpoint; a larger N keeps the smaller
N's rows, so growing it only generates the new ones. Sampling (`do_sample: true`) is seeded with
`infer.seed` (default: the experiment's seed) at every batch.

What it writes: `generations/<checkpoint>.jsonl` and `.settings.json` (sftlab.infer.store).

Resuming: rows are appended, flushed and fsynced after every batch. `run` re-reads each checkpoint's file
before generating for it and generates only the ids missing from it, so a kill loses at most the batch in
flight, a second call of `run` on the same plan generates nothing, and a checkpoint with nothing missing is
not even loaded. `plan` writes nothing and converts nothing (a builtin base model not converted yet is
fingerprinted, and converted, by `run`). If the settings or the checkpoint's content changed
since its rows were written, the old files are moved to `generations/previous-<time>/` and the
checkpoint is generated again. Checkpoints are identified by content (checkpoints.content_fingerprint),
not by path or file times: a copied, moved or untarred experiment generates nothing again.

Raises:
    ValueError                a checkpoint named in `infer.checkpoints` that does not exist (the
                              message lists those that do)
    store.GenerationsError    a generations file with a line that is not a valid row (file, line, field)
    models.ModelError         a model folder that does not load (the message names the folder)
    data.DataError            a test set that is missing, malformed or empty (the message names the file)
"""

from __future__ import annotations

import gc
import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from sftlab import checkpoints, data, jsonl, metrics, models, progress
from sftlab.config import Params
from sftlab.infer import store
from sftlab.infer.engine import Generation, GenerationEngine, GenerationSettings, HFEngine, prompt_text
from sftlab.infer.parallel import HFReplicas
from sftlab.infer.vllm_engine import VLLMEngines  # light: vLLM itself runs in a process of its own

BASE = "base"


# --------------------------------------------------------------------------------------------
# What to run: checkpoints and samples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # "base" or the checkpoint folder's name
    path: str  # a checkpoint folder, or the base model (in a plan: models.model_path; converted by run if builtin)


def select_checkpoints(params: Params) -> list[Target]:
    """The base model first, then the selected complete checkpoints in step order."""
    base = Target(BASE, params.model.name_or_path)
    train_dir = params.layout.train
    found = checkpoints.list_checkpoints(train_dir)
    choice = params.infer.checkpoints
    if choice == "all":
        chosen = found
    elif choice == "last":
        chosen = found[-1:]
    else:
        by_name = {c.name: c for c in found}
        unknown = [name for name in choice if name != BASE and name not in by_name]
        if unknown:
            available = ", ".join(by_name) or "none"
            raise ValueError(f"infer.checkpoints: {', '.join(map(repr, unknown))} not found among the complete "
                             f"checkpoints in {train_dir} (available: {available})")
        wanted = set(choice)
        chosen = [c for c in found if c.name in wanted]
    return [base] + [Target(c.name, str(c)) for c in chosen]


def select_examples(params: Params) -> list[data.Example]:
    """The test rows to answer: `num_samples` of them, the same for every checkpoint and every run."""
    _, test = data.load_splits(params.data, params.seed)
    n = params.infer.num_samples
    if n is None or n >= len(test):
        return test
    # First n of a seeded shuffle: a larger n keeps these rows, so growing it reuses what is on disk.
    order = list(range(len(test)))
    random.Random(params.seed).shuffle(order)
    return [test[i] for i in sorted(order[:n])]


# --------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    target: Target
    path: Path  # generations/<name>.jsonl
    fingerprint: dict[str, Any]
    stale: bool  # rows on disk were generated otherwise: they are set aside, everything is generated
    todo: list[data.Example]


@dataclass
class Plan:
    params: Params
    settings: GenerationSettings
    examples: list[data.Example]
    jobs: list[Job] = field(default_factory=list)

    def estimate(self) -> dict[str, Any]:
        """What `run` will generate: models to load, samples to answer, new tokens at most."""
        todo = sum(len(job.todo) for job in self.jobs)
        return {"models": len(self.jobs), "samples": len(self.examples),
                "models_to_load": sum(1 for job in self.jobs if job.todo), "to_generate": todo,
                "up_to_date": len(self.examples) * len(self.jobs) - todo,
                "max_new_tokens": self.settings.max_new_tokens,
                "new_tokens_at_most": todo * self.settings.max_new_tokens}


def plan(params: Params) -> Plan:
    """Which models answer which samples, and which rows are already on disk. Reads only: generates,
    converts and writes nothing."""
    settings = GenerationSettings.from_params(params)
    examples = select_examples(params)
    result = Plan(params, settings, examples)
    for target in select_checkpoints(params):
        path = params.layout.generations_file(target.name)
        model_path = models.model_path(target.path)
        fingerprint = _fingerprint(params, target.name, model_path, settings)
        result.jobs.append(Job(Target(target.name, model_path), path, fingerprint, *_left(path, fingerprint, examples)))
    return result


def _fingerprint(params: Params, name: str, model_path: str, settings: GenerationSettings) -> dict[str, Any]:
    """What the rows of model `name` are generated with: the model (the params' name for the base model),
    its weights' content, dtype, settings and engine."""
    fingerprint = {"model": params.model.name_or_path if name == BASE else name,
                   "weights": _weights_fingerprint(model_path),
                   "dtype": models.weights_dtype(params.model.dtype), "settings": settings.fingerprint()}
    if params.model.chat_template:  # another template, other prompts
        template = models.chat_template_text(params.model.chat_template)
        fingerprint["chat_template"] = hashlib.sha256(template.encode()).hexdigest()[:16]
    if params.infer.engine != "hf":  # (the HF engine's rows keep the fingerprint they always had)
        fingerprint["engine"] = params.infer.engine
    return fingerprint


def _left(path: Path, fingerprint: dict[str, Any], examples: list[data.Example]) -> tuple[bool, list[data.Example]]:
    """(stale, todo) as the file holds them now: rows of another fingerprint are all generated again."""
    stale = store.is_stale(path, fingerprint)
    done = set() if stale else store.written_ids(path)
    return stale, [e for e in examples if e.id not in done]


def _weights_fingerprint(model_path: str) -> str:
    """The model folder's content (checkpoints.content_fingerprint): a retrained checkpoint differs, a
    copied or moved one does not."""
    folder = Path(model_path)
    if not folder.is_dir():
        return ""  # a hub id: its name is the fingerprint
    return checkpoints.content_fingerprint(folder)


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


@dataclass
class Summary:
    files: dict[str, Path] = field(default_factory=dict)  # checkpoint -> generations file
    generated: dict[str, int] = field(default_factory=dict)  # checkpoint -> rows generated now
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = []
        for name in self.files:
            n, seconds = self.generated.get(name, 0), self.seconds.get(name, 0.0)
            if n:
                lines.append(f"{name}: {n} samples in {seconds:.1f} s ({n / seconds:.2f} samples/s, "
                             f"{self.tokens[name] / seconds:.1f} tokens/s)")
            else:
                lines.append(f"{name}: up to date")
        return "\n".join(lines)


def run(planned: Plan, echo: Callable[[str], None] = print,
        make_engine: Callable[[str], GenerationEngine] | None = None) -> Summary:
    """Generate every row the plan says is missing; return what was generated, per checkpoint.

    `make_engine(model_path)` builds the engine (default: by `infer.engine`, `HFEngine` with `model.dtype`,
    `HFReplicas` with `infer.data_parallel` > 1, or `VLLMEngines` workers for every checkpoint; anything with
    a `close()` is closed at the end).
    """
    params, settings, examples = planned.params, planned.settings, planned.examples
    infer = params.infer
    template = models.chat_template_text(params.model.chat_template)
    if make_engine is None and infer.engine == "vllm" and any(job.todo for job in planned.jobs):
        make_engine = VLLMEngines(dtype=params.model.dtype, seed=settings.seed,
                                  probes=[e.prompt for e in examples[:2]], data_parallel=infer.data_parallel,
                                  tensor_parallel=infer.tensor_parallel, chat_template=template)
    elif make_engine is None and infer.data_parallel > 1:
        make_engine = HFReplicas(infer.data_parallel, dtype=params.model.dtype, chat_template=template)
    make_engine = make_engine or (lambda path: HFEngine(path, dtype=params.model.dtype, chat_template=template))
    try:
        return _run(planned, echo, make_engine)
    finally:
        if hasattr(make_engine, "close"):
            make_engine.close()


def _run(planned: Plan, echo: Callable[[str], None], make_engine: Callable[[str], GenerationEngine]) -> Summary:
    params, settings, examples = planned.params, planned.settings, planned.examples
    if params.infer.num_samples and params.infer.num_samples > len(examples):
        echo(f"[sftlab] infer.num_samples={params.infer.num_samples}, but the test set has {len(examples)} rows: "
             f"using all of them")
    summary = Summary()
    for job in planned.jobs:
        name = job.target.name
        summary.files[name] = job.path
        if name == BASE:
            models.resolve_model(params.model.name_or_path)  # a builtin model is converted here, once
        # The file as it is now (a first call of run, another process): nothing generated twice.
        job.fingerprint = _fingerprint(params, name, job.target.path, settings)
        job.stale, job.todo = _left(job.path, job.fingerprint, examples)
        if job.stale:
            store.set_aside(job.path, job.fingerprint, echo)
        if not job.todo:
            echo(f"[sftlab] {name}: all {len(examples)} samples already in {job.path.name}")
            continue
        store.write_settings(job.path, job.fingerprint)
        with progress.step(f"infer {name}: loading {job.target.path} for {len(job.todo)} samples", echo=echo):
            engine = make_engine(job.target.path)
        started, n_tokens = time.time(), 0
        with jsonl.Appender() as out, progress.bar(len(examples), f"infer {name}", unit="sample",
                                                   initial=len(examples) - len(job.todo)) as bar:
            for rows in generate_rows(engine, job.todo, settings, params.infer.batch_size, name):
                out.extend(job.path, [row.to_json() for row in rows])  # on disk before the next batch
                n_tokens += sum(row.n_tokens for row in rows)
                bar.update(len(rows))
        seconds = time.time() - started
        summary.generated[name], summary.seconds[name], summary.tokens[name] = len(job.todo), seconds, n_tokens
        echo(f"[sftlab] {name}: {len(job.todo)} samples in {seconds:.1f} s "
             f"({len(job.todo) / seconds:.2f} samples/s, {n_tokens / seconds:.1f} tokens/s) -> {job.path}")
        del engine
        gc.collect()  # free one model before loading the next
    return summary


def generate_rows(engine: GenerationEngine, examples: list[data.Example], settings: GenerationSettings,
                  batch_size: int, checkpoint: str) -> Iterator[list[store.GenerationRow]]:
    """Length-sorted batches through `engine`; yields the finished rows of each batch."""
    tokenizer = engine.tokenizer
    lengths = {e.id: len(tokenizer(prompt_text(tokenizer, e.prompt), add_special_tokens=False)["input_ids"])
               for e in examples}
    # Longest first: prompts of like length share a batch (little padding), and a batch too large
    # for memory fails at the start, not at the end.
    ordered = sorted(examples, key=lambda e: -lengths[e.id])
    batches = [ordered[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
    if hasattr(engine, "generate_batches"):  # replicas (infer.data_parallel): the same batches, in the same order
        answered = engine.generate_batches([[e.prompt for e in batch] for batch in batches], settings)
    else:
        answered = ((i, engine.generate([e.prompt for e in batch], settings)) for i, batch in enumerate(batches))
    for index, generations in answered:
        batch = batches[index]
        yield [make_row(e, g, checkpoint, tokenizer) for e, g in zip(batch, generations, strict=True)]


def make_row(example: data.Example, generation: Generation, checkpoint: str, tokenizer) -> store.GenerationRow:
    reference_ids = tokenizer(example.reference, add_special_tokens=False)["input_ids"]
    return store.GenerationRow(
        id=example.id, checkpoint=checkpoint, prompt=example.prompt, reference=example.reference,
        output=generation.text, n_tokens=len(generation.token_ids), finish_reason=generation.finish_reason,
        meta=example.meta, eos_terminated=generation.finish_reason == "eos",
        **metrics.degeneration_metrics(generation.token_ids, reference_ids))
