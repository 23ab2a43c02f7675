"""Infer stage speed: its batched generation against a one-sample-at-a-time loop, in one run.

    .venv/bin/python bench/infer.py [--model builtin:smollm2-135m-instruct] [--prompts 32]
                                    [--max-new-tokens 64] [--batch-size 16]

Both sides use the same model object, prompts and generation settings (greedy): the batched side is the
stage's own `infer.stage.generate_rows` (length-sorted, left-padded batches), the sequential side calls the same
engine with one prompt at a time. They take turns batch by batch, so a change in the machine's load
affects both. Prints one JSON object: samples/s and generated tokens/s of each, their
ratio, and whether the two produced the same tokens. Tokens are counted as in the stage's `n_tokens`
(generated tokens before the stop token). The load average is printed too: on a shared machine, other
processes slow both sides (they take turns, so the ratio holds up better than the rates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT / "data" / "demo" / "test.jsonl"))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    import torch

    from sftlab import data, infer, models
    from sftlab.infer.stage import generate_rows
    from sftlab.config import ColumnMap

    # The demo file alternates Korean and English rows: the first N hold both languages.
    examples = data.load_examples(args.data, "test", ColumnMap())[:args.prompts]
    model_path = models.resolve_model(args.model)
    engine = infer.HFEngine(model_path)
    settings = infer.GenerationSettings(max_new_tokens=args.max_new_tokens)
    engine.generate([examples[0].prompt], settings)  # warm-up: first-call allocations count for neither side

    # Interleaved batch by batch (the stage's batches: length-sorted, longest first), so that whatever
    # else runs on the machine meanwhile slows both sides alike.
    tokenizer = engine.tokenizer
    ordered = sorted(examples, key=lambda e: -len(tokenizer(infer.prompt_text(tokenizer, e.prompt),
                                                            add_special_tokens=False)["input_ids"]))
    load_before = os.getloadavg()[0]
    batched, sequential, batched_s, sequential_s = {}, {}, 0.0, 0.0
    for start in range(0, len(ordered), args.batch_size):
        chunk = ordered[start:start + args.batch_size]
        started = time.perf_counter()
        for rows in generate_rows(engine, chunk, settings, args.batch_size, "bench"):
            batched.update((row.id, row) for row in rows)
        batched_s += time.perf_counter() - started
        started = time.perf_counter()
        for e in chunk:
            sequential[e.id] = engine.generate([e.prompt], settings)[0]
        sequential_s += time.perf_counter() - started
    load_after = os.getloadavg()[0]

    batched_tokens = sum(row.n_tokens for row in batched.values())
    sequential_tokens = sum(len(g.token_ids) for g in sequential.values())
    same = sum(batched[e.id].output == sequential[e.id].text for e in examples)
    result = {
        "model": args.model,
        "prompts": len(examples),
        "settings": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "greedy": True,
                     "dtype": str(engine.model.dtype).removeprefix("torch."), "device": str(engine.model.device),
                     "torch_threads": torch.get_num_threads()},
        "batched": {"seconds": round(batched_s, 2), "samples_per_s": round(len(examples) / batched_s, 3),
                    "tokens_per_s": round(batched_tokens / batched_s, 1), "tokens": batched_tokens},
        "sequential": {"seconds": round(sequential_s, 2), "samples_per_s": round(len(examples) / sequential_s, 3),
                       "tokens_per_s": round(sequential_tokens / sequential_s, 1), "tokens": sequential_tokens},
        "speedup": round(sequential_s / batched_s, 2),
        "same_outputs": f"{same}/{len(examples)}",
        "eos_terminated": sum(row.eos_terminated for row in batched.values()),
        "machine": {"cpus": os.cpu_count(), "load_average_before": round(load_before, 2),
                    "load_average_after": round(load_after, 2), "python": platform.python_version()},
    }
    result["vllm_vs_hf"] = vllm_figures(model_path, examples, settings, batched, batched_s, batched_tokens)
    print(json.dumps(result, indent=2))
    return result


def vllm_figures(model_path: str, examples, settings, batched: dict, batched_s: float, batched_tokens: int) -> dict:
    """The vLLM engine on the same prompts, same run (engine start not counted): tokens/s ratio to the
    HF engine's batched decoding, and how many outputs are identical. Skipped without `make setup-vllm`."""
    from sftlab import models
    from sftlab.infer.vllm_engine import VLLMEngines, vllm_python

    try:
        vllm_python()
    except models.ModelError as e:
        return {"skipped": str(e)}
    engines = VLLMEngines(dtype="float32")
    try:
        started = time.perf_counter()
        engine = engines(model_path)
        start_s = time.perf_counter() - started
        started = time.perf_counter()
        generations = engine.generate([e.prompt for e in examples], settings)
        seconds = time.perf_counter() - started
    finally:
        engines.close()
    tokens = sum(len(g.token_ids) for g in generations)
    same = sum(g.text == batched[e.id].output for e, g in zip(examples, generations))
    return {"engine_start_s": round(start_s, 1), "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "hf_batched_tokens_per_s": round(batched_tokens / batched_s, 1),
            "ratio": round((tokens / seconds) / (batched_tokens / batched_s), 2), "goal": ">= 3",
            "same_outputs": f"{same}/{len(examples)}"}


if __name__ == "__main__":
    main()
