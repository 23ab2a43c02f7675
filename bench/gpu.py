"""GPU figures: the train stage in bf16 and the infer stage's throughput on one CUDA device.

    .venv/bin/python bench/gpu.py [--steps 30] [--batch-size 32] [--peak-tflops 989]

Trains the demo model (builtin SmolLM2-135M-Instruct) through the real stage path (prepare -> torchrun
-> sftlab.train, bf16 mixed precision as the train stage picks on a bf16 GPU) and reports tokens/s and
model FLOPs utilisation: MFU = 6 x parameters x tokens/s / peak FLOP/s of the card (default: 989 TFLOP/s,
an H100/H200's dense bf16 peak; pass --peak-tflops for other cards). Then generates for the demo test
prompts with the infer stage's engine and reports generated tokens/s. Prints one JSON object.

Sized to finish in well under 10 minutes on one H200. Without a CUDA device it prints
{"skipped": "..."} and exits 0: nothing else in the project needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_figures(steps: int, batch_size: int, peak_tflops: float) -> dict:
    from transformers import AutoConfig

    from sftlab import data, train
    from sftlab.config import load_params
    from sftlab.models import resolve_model

    model = resolve_model("builtin:smollm2-135m-instruct")
    params = load_params(ROOT / "params" / "demo.yaml", [
        "experiment=gpu-bench", f"train.max_steps={steps}", f"train.save_steps={steps}",
        f"train.per_device_train_batch_size={batch_size}", "train.logging_steps=5", "train.resume=never",
        "train.nproc_per_node=1"])
    examples, _ = data.load_splits(params.data, params.seed)
    plan = train.plan(params, examples, model)
    train.run(plan, echo=lambda line: print(line, file=sys.stderr))
    summary = json.loads((plan.train_dir / "train_summary.json").read_text())
    config = AutoConfig.from_pretrained(model)
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    tokens_per_s = summary["tokens_per_s"]
    return {"steps": steps, "batch_size": batch_size, "parameters": n_params, "tokens_per_s": tokens_per_s,
            "supervised_tokens_per_s": summary["supervised_tokens_per_s"],
            "padding_fraction": summary["padding_fraction"], "peak_cuda_mib": summary["peak_cuda_mib"],
            "train_runtime_s": summary["train_runtime_s"], "peak_tflops": peak_tflops,
            "mfu": round(6 * n_params * tokens_per_s / (peak_tflops * 1e12), 4)}


def infer_figures(n_prompts: int, batch_size: int, max_new_tokens: int) -> dict:
    from sftlab import infer
    from sftlab.models import resolve_model

    prompts = [[{"role": "user", "content": json.loads(line)["question"]}]
               for line in (ROOT / "data" / "demo" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = (prompts * (n_prompts // len(prompts) + 1))[:n_prompts]
    engine = infer.HFEngine(resolve_model("builtin:smollm2-135m-instruct"), dtype="bfloat16", device="cuda")
    settings = infer.GenerationSettings(max_new_tokens=max_new_tokens)
    engine.generate(prompts[:batch_size], settings)  # warm-up: kernels, allocator
    started = time.perf_counter()
    generations = [g for start in range(0, len(prompts), batch_size)
                   for g in engine.generate(prompts[start:start + batch_size], settings)]
    seconds = time.perf_counter() - started
    tokens = sum(len(g.token_ids) for g in generations)
    return {"prompts": n_prompts, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "seconds": round(seconds, 2), "generated_tokens_per_s": round(tokens / seconds, 1),
            "samples_per_s": round(n_prompts / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--infer-prompts", type=int, default=512)
    parser.add_argument("--infer-batch-size", type=int, default=128)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu", "skipped": "no CUDA device on this machine"}))
        return
    os.environ.setdefault("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))
    with tempfile.TemporaryDirectory() as outputs:
        os.environ["SFTLAB_OUTPUTS"] = outputs
        report = {"bench": "gpu", "device": torch.cuda.get_device_name(0),
                  "train_bf16": train_figures(args.steps, args.batch_size, args.peak_tflops),
                  "infer": infer_figures(args.infer_prompts, args.infer_batch_size, 64)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
