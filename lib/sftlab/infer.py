"""Infer stage: answers of the base model and every selected checkpoint to the same test prompts.

    files = infer.run_inference(params)            # generate what is missing, checkpoint by checkpoint
    generations = infer.load_generations(params)   # one DataFrame row per (checkpoint, sample)
    infer.summarize(generations)                   # per checkpoint: termination rate first, then the rest

What it runs: the base model (named `base` in the outputs, always first) and the checkpoints that
`infer.checkpoints` selects from `outputs/<exp>/train/` — `all` complete ones, the `last`, or a list of
names. The samples: `infer.num_samples` test rows drawn with the experiment's seed (the first N of a
seeded shuffle, kept in file order), the same rows for every checkpoint; a larger N keeps the smaller
N's rows, so growing it only generates the new ones. Sampling (`do_sample: true`) is seeded with
`infer.seed` (default: the experiment's seed) at every batch.

What it writes, under `outputs/<exp>/generations/`:
    <checkpoint>.jsonl          one JSON line per sample: id, checkpoint, prompt (the chat messages),
                                reference, output, n_tokens, finish_reason (eos | length), meta (the
                                row's other columns, e.g. lang), eos_terminated, rep_2, rep_3, rep_4,
                                seq_rep_4, distinct_1, distinct_2, length_ratio (see sftlab.metrics)
    <checkpoint>.settings.json  what the rows were generated with: the model (name, then size and
                                time of its weight files), dtype, generation settings
`n_tokens` counts the generated tokens before the stop token (the stop token itself and padding are
not counted); n-gram metrics are computed on the same tokens. `finish_reason` is `eos` when the model
emitted its end-of-turn or EOS token within `max_new_tokens`, else `length`.

Resuming: rows are appended, flushed and fsynced after every batch. A re-run reads the ids already
written (cutting off a line torn by a kill) and generates only the missing ones, so a kill loses at
most the batch in flight and never duplicates a row; a checkpoint with nothing missing is not even
loaded. If the settings or the checkpoint's weights changed since its rows were written, the old
files are moved to `generations/previous-<time>/` and the checkpoint is generated again.

Raises:
    ValueError         a checkpoint named in `infer.checkpoints` that does not exist (the message
                       lists those that do), or a line of a generations file that is not valid JSON
    models.ModelError  a model folder that does not load (the message names the folder)
    data.DataError     a test set that is missing, malformed or empty (the message names the file)
"""

from __future__ import annotations

import gc
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

from sftlab import checkpoints, data, metrics, models
from sftlab.config import Params, atomic_write_text

BASE = "base"
METRICS = ("rep_2", "rep_3", "rep_4", "seq_rep_4", "distinct_1", "distinct_2", "length_ratio")


# --------------------------------------------------------------------------------------------
# The engine: what generates, behind an interface another backend (vLLM on GPUs) can implement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    do_sample: bool = False  # greedy unless True; the sampling values below apply only then
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # None: no top-k filtering
    repetition_penalty: float = 1.0
    seed: int = 0

    @classmethod
    def from_params(cls, params: Params) -> "GenerationSettings":
        infer = params.infer
        return cls(max_new_tokens=infer.max_new_tokens, do_sample=infer.do_sample, temperature=infer.temperature,
                   top_p=infer.top_p, top_k=infer.top_k, repetition_penalty=infer.repetition_penalty,
                   seed=params.seed if infer.seed is None else infer.seed)

    def fingerprint(self) -> dict:
        """The settings that change the output (the seed only when sampling)."""
        settings = asdict(self)
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k", "seed"):
                settings.pop(key)
        return settings


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]  # generated tokens before the stop token (stop token and padding cut off)
    text: str  # token_ids decoded, special tokens skipped
    finish_reason: Literal["eos", "length"]


class GenerationEngine(Protocol):
    """Generates answers for a batch of chat prompts, in order. `tokenizer` is the model's own: the
    stage counts prompt lengths and metric tokens with it. Another backend (vLLM on GPUs) implements
    this and is passed to `run_inference(make_engine=...)`; the stage does not change."""

    tokenizer: object

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings) -> list[Generation]: ...


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The chat template with the generation prompt: the text the model continues."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class HFEngine:
    """A transformers model on one device, decoded step by step with a KV cache.

    A batch is left-padded (every prompt ends at the last position, where generation continues), with
    position ids counted from the attention mask, under `torch.inference_mode`. A row that emits the
    chat template's end-of-turn token or EOS leaves the batch at once: its cache rows are dropped, so
    the rest of the batch does not carry it to the longest answer. (`model.generate` keeps computing
    finished rows until the longest answer ends: 45% of its decoding work on the demo benchmark.)

    Only `GenerationSettings` steer decoding; the checkpoint's own generation config is not read.
    Greedy output of a batch equals the output of its prompts one at a time in fp32 (the tests check
    it on the builtin model); in lower precision, padding changes the rounding and may flip a near-tie.
    The repetition penalty sees each row's own prompt and answer, never the padding.
    """

    def __init__(self, model_path: str, dtype: str = "auto", device: str | None = None):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.model = models.load_model(model_path, dtype, device)
        except models.ModelError:
            raise
        except Exception as e:  # a broken folder fails in many ways (JSON, safetensors header, shapes)
            raise models.ModelError(f"{model_path}: cannot load the model or its tokenizer: "
                                    f"{type(e).__name__}: {e}") from e
        self.tokenizer.padding_side = "left"
        end_of_turn = models.end_of_turn_token_id(self.tokenizer)
        self.stop_ids = sorted({end_of_turn, self.tokenizer.eos_token_id} - {None})
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.stop_ids[0]  # padding is masked: any id will do

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings) -> list[Generation]:
        import torch
        from transformers import DynamicCache

        device = self.model.device
        texts = [prompt_text(self.tokenizer, messages) for messages in prompts]
        # The template already holds the special tokens it needs: add none.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        mask = batch["attention_mask"]
        step_ids = batch["input_ids"]
        step_positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # What the repetition penalty looks at: padding replaced by the row's first real token.
        first_real = step_ids.gather(1, mask.argmax(-1, keepdim=True))
        history = torch.where(mask.bool(), step_ids, first_real)
        processors = self._logits_processors(settings)
        generator = torch.Generator(device).manual_seed(settings.seed) if settings.do_sample else None
        stop = torch.tensor(self.stop_ids, device=device)

        cache = DynamicCache(config=self.model.config)
        live = torch.arange(len(prompts), device=device)  # batch row -> index of its prompt
        answers: list[list[int]] = [[] for _ in prompts]
        finish: list[str] = ["length"] * len(prompts)
        with torch.inference_mode():
            for step in range(settings.max_new_tokens):
                logits = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions,
                                    cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
                logits = processors(history, logits)
                if generator is None:
                    tokens = logits.argmax(-1)
                else:
                    tokens = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
                stopped = torch.isin(tokens, stop)
                for row, token, ended in zip(live.tolist(), tokens.tolist(), stopped.tolist()):
                    if ended:
                        finish[row] = "eos"
                    else:
                        answers[row].append(token)
                if stopped.all() or step == settings.max_new_tokens - 1:
                    break
                if stopped.any():  # finished rows leave the batch and its cache
                    keep = (~stopped).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    live, tokens, mask = live[keep], tokens[keep], mask[keep]
                    history, step_positions = history[keep], step_positions[keep]
                step_ids = tokens[:, None]
                step_positions = step_positions[:, -1:] + 1
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                history = torch.cat([history, step_ids], dim=1)
        return [Generation(token_ids=ids, text=self.tokenizer.decode(ids, skip_special_tokens=True),
                           finish_reason=reason) for ids, reason in zip(answers, finish)]

    @staticmethod
    def _logits_processors(settings: GenerationSettings):
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        processors = LogitsProcessorList()
        if settings.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty)))
        if settings.do_sample:  # the order of transformers' own sampling
            if settings.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                processors.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                processors.append(TopPLogitsWarper(settings.top_p))
        return processors


# --------------------------------------------------------------------------------------------
# What to run: checkpoints and samples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # "base" or the checkpoint folder's name
    path: str  # a checkpoint folder, or `model.name_or_path` (a builtin model is converted only when run)


def select_checkpoints(params: Params) -> list[Target]:
    """The base model first, then the selected complete checkpoints in step order."""
    base = Target(BASE, params.model.name_or_path)
    train_dir = params.output_dir / "train"
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
# The stage
# --------------------------------------------------------------------------------------------


def generations_dir(params: Params) -> Path:
    return params.output_dir / "generations"


def run_inference(params: Params, echo: Callable[[str], None] = print,
                  make_engine: Callable[[str], GenerationEngine] | None = None) -> dict[str, Path]:
    """Generate every missing row for every selected checkpoint; return {checkpoint: jsonl file}.

    `make_engine(model_path)` builds the engine (default: `HFEngine` with `model.dtype`).
    """
    from tqdm.auto import tqdm

    make_engine = make_engine or (lambda path: HFEngine(path, dtype=params.model.dtype))
    settings = GenerationSettings.from_params(params)
    examples = select_examples(params)
    if params.infer.num_samples and params.infer.num_samples > len(examples):
        echo(f"[sftlab] infer.num_samples={params.infer.num_samples}, but the test set has {len(examples)} rows: "
             f"using all of them")
    targets = select_checkpoints(params)
    out_dir = generations_dir(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for target in targets:
        path = out_dir / f"{target.name}.jsonl"
        written[target.name] = path
        model_path = models.resolve_model(target.path)
        fingerprint = {"model": target.path if target.name == BASE else target.name,
                       "weights": _weights_fingerprint(model_path), "dtype": _resolved_dtype(params.model.dtype),
                       "settings": settings.fingerprint()}
        _set_aside_if_stale(path, fingerprint, echo)
        done = read_ids(path)
        todo = [e for e in examples if e.id not in done]
        if not todo:
            echo(f"[sftlab] {target.name}: all {len(examples)} samples already in {path.name}")
            continue
        atomic_write_text(_settings_file(path), json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n")
        engine = make_engine(model_path)
        started, n_tokens = time.time(), 0
        with open(path, "a", encoding="utf-8") as out, \
                tqdm(total=len(examples), initial=len(examples) - len(todo), desc=target.name, unit="sample") as bar:
            for rows in generate_rows(engine, todo, settings, params.infer.batch_size, target.name):
                out.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                out.flush()
                os.fsync(out.fileno())  # on disk before the next batch: a kill loses at most one batch
                n_tokens += sum(row["n_tokens"] for row in rows)
                bar.update(len(rows))
        seconds = time.time() - started
        echo(f"[sftlab] {target.name}: {len(todo)} samples in {seconds:.1f} s "
             f"({len(todo) / seconds:.2f} samples/s, {n_tokens / seconds:.1f} tokens/s) -> {path}")
        del engine
        gc.collect()  # free one model before loading the next
    return written


def generate_rows(engine: GenerationEngine, examples: list[data.Example], settings: GenerationSettings,
                  batch_size: int, checkpoint: str) -> Iterator[list[dict]]:
    """Length-sorted batches through `engine`; yields the finished rows of each batch."""
    tokenizer = engine.tokenizer
    lengths = {e.id: len(tokenizer(prompt_text(tokenizer, e.prompt), add_special_tokens=False)["input_ids"])
               for e in examples}
    # Longest first: prompts of like length share a batch (little padding), and a batch too large
    # for memory fails at the start, not at the end.
    ordered = sorted(examples, key=lambda e: -lengths[e.id])
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        generations = engine.generate([e.prompt for e in batch], settings)
        yield [make_row(e, g, checkpoint, tokenizer) for e, g in zip(batch, generations, strict=True)]


def make_row(example: data.Example, generation: Generation, checkpoint: str, tokenizer) -> dict:
    reference_ids = tokenizer(example.reference, add_special_tokens=False)["input_ids"]
    return {
        "id": example.id,
        "checkpoint": checkpoint,
        "prompt": example.prompt,
        "reference": example.reference,
        "output": generation.text,
        "n_tokens": len(generation.token_ids),
        "finish_reason": generation.finish_reason,
        "meta": example.meta,
        "eos_terminated": generation.finish_reason == "eos",
        **metrics.degeneration_metrics(generation.token_ids, reference_ids),
    }


# --------------------------------------------------------------------------------------------
# Files: resumable appends
# --------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """The rows of a generations file. A last line without its newline (a kill during the write) is
    cut off the file, so appending continues on a clean line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw[:raw.rfind(b"\n") + 1]
    if len(complete) < len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            os.fsync(f.fileno())
    rows = []
    for number, line in enumerate(complete.decode("utf-8").split("\n")[:-1], start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a valid JSON row ({e.msg}); delete that line and re-run "
                             f"to generate it again") from None
    return rows


def read_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_rows(path)}


def _settings_file(jsonl: Path) -> Path:
    return jsonl.with_name(f"{jsonl.stem}.settings.json")


def _weights_fingerprint(model_path: str) -> list:
    """Name, size and modification time of the weight files: a retrained checkpoint differs."""
    folder = Path(model_path)
    if not folder.is_dir():
        return []  # a hub id: its name is the fingerprint
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
            if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]


def _resolved_dtype(dtype: str) -> str:
    """What `models.load_model` will pick for `auto`, known without loading anything."""
    import torch

    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def _set_aside_if_stale(path: Path, fingerprint: dict, echo: Callable[[str], None]) -> None:
    settings_file = _settings_file(path)
    if not path.exists():
        return
    try:
        previous = json.loads(settings_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        previous = None
    if previous == fingerprint:
        return
    # Nothing generated is deleted: the old rows move aside and the checkpoint runs again.
    aside = path.parent / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    for file in (path, settings_file):
        if file.exists():
            shutil.move(str(file), aside / file.name)
    changed = sorted(k for k in fingerprint if (previous or {}).get(k) != fingerprint[k])
    echo(f"[sftlab] {path.stem}: generated with other {', '.join(changed)}; old rows moved to {aside}")


# --------------------------------------------------------------------------------------------
# For the notebook
# --------------------------------------------------------------------------------------------


def load_generations(params: Params):
    """Rows of the selected checkpoints and samples, base first, samples in test-set order.

    `meta` is spread into columns (e.g. `lang`); a meta key that clashes with a row field becomes
    `meta.<key>`.
    """
    import pandas as pd

    ids = [e.id for e in select_examples(params)]
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    frames = []
    for target in select_checkpoints(params):
        rows = [r for r in read_rows(generations_dir(params) / f"{target.name}.jsonl") if r["id"] in position]
        frame = pd.DataFrame(rows)
        if len(frame):
            frames.append(frame.sort_values("id", key=lambda s: s.map(position)))
    if not frames:
        return pd.DataFrame(columns=["id", "checkpoint", "output", "finish_reason", "n_tokens", *METRICS])
    frame = pd.concat(frames, ignore_index=True)
    meta = pd.DataFrame(list(frame.pop("meta")), index=frame.index)
    meta.columns = [f"meta.{c}" if c in frame.columns else c for c in meta.columns]
    return frame.join(meta)


def summarize(generations, by: str | list[str] = "checkpoint"):
    """Means per group (default: per checkpoint, in the order of `generations`): termination rate first,
    then repetition, diversity and length; the number of samples last."""
    by = [by] if isinstance(by, str) else list(by)
    return generations.groupby(by, sort=False).agg(
        termination_rate=("eos_terminated", "mean"),
        **{name: (name, "mean") for name in METRICS[:-1]},
        mean_tokens=("n_tokens", "mean"),
        length_ratio=("length_ratio", "mean"),
        samples=("id", "size"),
    )
