"""Train stage speed: sftlab's default settings vs an origin-style configuration, in one run.

    .venv/bin/python bench/train.py [--steps 10] [--batch-size 8] [--repeats 2] [--model builtin:smollm2-135m-instruct]

Both configurations train the same model on the same demo rows (steps x batch size of them, each seen
once) for the same number of steps with the same batch size, through the real path (plan -> preflight -> torchrun -> sftlab.train). Origin style: random
batches, no packing, each batch padded to its longest row. Runs alternate (A B B A ...) so that drift
of a noisy machine hits both; the median of each is reported. Prints one JSON object: supervised
tokens/s, padding fraction and peak memory of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# What the origin did: the trainer's default random sampler, no packing, pad to the longest row.
ORIGIN_STYLE = ["train.train_sampling_strategy=random", "train.packing=false"]


def run_once(name: str, overrides: list[str], steps: int, batch_size: int, model: str) -> dict:
    from sftlab import data, train
    from sftlab.config import load_params
    from sftlab.models import resolve_model

    # Exactly steps x batch rows: both configurations train on the same rows, each once, in their own order.
    rows = Path(os.environ["SFTLAB_OUTPUTS"]) / "bench-rows.jsonl"
    lines = (ROOT / "data" / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    sample = random.Random(0).sample(lines, steps * batch_size)  # every category and both languages
    rows.write_text("\n".join(sample) + "\n", encoding="utf-8")
    common = [f"experiment={name}", f"model.name_or_path={model}", f"train.max_steps={steps}",
              f"train.save_steps={steps}", f"train.per_device_train_batch_size={batch_size}",
              "train.logging_steps=1", "train.resume=never", f"data.train={rows}"]
    params = load_params(ROOT / "params" / "demo.yaml", common + overrides)
    examples, _ = data.load_splits(params.data, params.seed)
    plan = train.plan(params, examples, resolve_model(model))
    train.run(plan, echo=lambda line: None)
    summary = json.loads((plan.train_dir / "train_summary.json").read_text())
    summary["sampling"] = yaml.safe_load(plan.config_path.read_text()).get("train_sampling_strategy", "random")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    args = parser.parse_args()

    os.environ.setdefault("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))
    results: dict[str, list[dict]] = {"default": [], "origin_style": []}
    with tempfile.TemporaryDirectory() as outputs:
        os.environ["SFTLAB_OUTPUTS"] = outputs
        for repeat in range(args.repeats):
            order = ["default", "origin_style"] if repeat % 2 == 0 else ["origin_style", "default"]
            for name in order:
                overrides = [] if name == "default" else ORIGIN_STYLE
                results[name].append(run_once(f"bench-{name}-{repeat}", overrides, args.steps, args.batch_size,
                                              args.model))
                print(f"{name} run {repeat}: {results[name][-1]['supervised_tokens_per_s']} supervised tokens/s",
                      file=sys.stderr)

    def median(name: str, key: str):
        values = [r[key] for r in results[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    report = {"bench": "train", "model": args.model, "steps": args.steps, "batch_size": args.batch_size,
              "repeats": args.repeats, "cpu_count": os.cpu_count()}
    for name in results:
        report[name] = {
            "supervised_tokens_per_s": median(name, "supervised_tokens_per_s"),
            "tokens_per_s": median(name, "tokens_per_s"),
            "padding_fraction": median(name, "padding_fraction"),
            "peak_rss_mib": median(name, "peak_rss_mib"),
            "train_runtime_s": median(name, "train_runtime_s"),
            "sampling": results[name][0]["sampling"],
        }
    report["train_vs_origin_style"] = round(
        report["default"]["supervised_tokens_per_s"] / report["origin_style"]["supervised_tokens_per_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
