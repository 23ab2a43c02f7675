"""`make bench`: every benchmark in one run, one JSON file with every figure, and a table for docs/benchmarks.md.

    .venv/bin/python bench/run_all.py [--out outputs/bench/bench.json] [--quick] [--suite | --suite-log LOG]

Runs bench/train.py, bench/infer.py, bench/judge.py, bench/pipeline.py and bench/disk.py (both need a
finished `make demo`), bench/gpu.py (skips itself without CUDA) and, with `--suite`, bench/suite.py (the test
suite's wall time and slowest tests; `--suite-log` reads them from a log instead), each in its own process,
one after the other so that they do not slow each other down. Writes the JSON file (keys `train_vs_origin_style`,
`infer_batched_vs_sequential`, `judge_concurrent_vs_sequential`, `experiment_disk_gib`, `vllm_vs_hf_tokens_per_s`,
`vllm_over_hf_infer_stage`, `demo_experiment_gb`, `suite_seconds`, `suite_slowest`, ... plus each script's full
report) and prints a Markdown table. The vLLM figures need `make setup-vllm` (each says `skipped` without it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> dict:
    print(f"[bench] {script} {' '.join(args)}", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-2000:]}"}
    return json.loads(result.stdout[result.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "bench.json"))
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    parser.add_argument("--suite", action="store_true",
                        help="also run the test suite (bench/suite.py: its wall time and slowest tests; ~10 min)")
    parser.add_argument("--suite-log", help="read the suite's figures from this pytest log instead (bench/suite.py "
                                            "--from-log)")
    args = parser.parse_args()

    quick = args.quick
    started = time.time()
    reports = {
        # 32 steps x 8 rows: enough rows for length grouping to work as it does on real data (its
        # megabatches grow with the row count); on 128 rows it still leaves ~12 % padding.
        "train": run("train.py", "--steps", "6" if quick else "32", "--repeats", "1"),
        "infer": run("infer.py", *(["--prompts", "16"] if quick else [])),
        "judge": run("judge.py"),
        "pipeline": run("pipeline.py", "--repeats", "1" if quick else "2", "--engines"),
        "disk": run("disk.py"),
        "gpu": run("gpu.py"),
        # Last: the suite is heaviest, and would slow the others down.
        "suite": (run("suite.py", "--from-log", args.suite_log) if args.suite_log else
                  run("suite.py") if args.suite else {"skipped": "--suite not given"}),
    }
    figures = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "train_vs_origin_style": reports["train"].get("train_vs_origin_style"),
        "infer_batched_vs_sequential": reports["infer"].get("speedup"),
        "judge_concurrent_vs_sequential": reports["judge"].get("speedup"),
        "judge_rerun_requests": reports["judge"].get("rerun_requests"),
        "papermill_overhead": (reports["pipeline"].get("papermill_vs_direct") or {}).get("overhead"),
        "demo_stage_seconds": reports["pipeline"].get("demo_stage_seconds"),
        "experiment_disk_gib": reports["disk"].get("gib"),
        "vllm_vs_hf_tokens_per_s": (reports["infer"].get("vllm_vs_hf") or {}).get("ratio"),
        "vllm_over_hf_infer_stage": (reports["pipeline"].get("vllm_vs_hf_infer_stage") or {}).get("vllm_over_hf"),
        "demo_experiment_gb": reports["disk"].get("gb"),
        "suite_seconds": reports["suite"].get("seconds"),
        "suite_slowest": reports["suite"].get("slowest"),
        "gpu": reports["gpu"],
        "seconds": round(time.time() - started, 1),
        "reports": reports,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(figures))
    print(f"\nwritten: {out}")


def table(f: dict) -> str:
    train = f["reports"]["train"]
    infer = f["reports"]["infer"]
    judge = f["reports"]["judge"]
    pipeline = f["reports"]["pipeline"].get("papermill_vs_direct", {})
    rows = [
        ("train: supervised tokens/s, default vs origin style", f"{f['train_vs_origin_style']}x",
         f"{train.get('default', {}).get('supervised_tokens_per_s')} vs "
         f"{train.get('origin_style', {}).get('supervised_tokens_per_s')} tok/s; padding "
         f"{train.get('default', {}).get('padding_fraction')} vs {train.get('origin_style', {}).get('padding_fraction')}",
         ">= 1.3x"),
        ("infer: batched vs one at a time", f"{f['infer_batched_vs_sequential']}x",
         f"{infer.get('batched', {}).get('tokens_per_s')} vs {infer.get('sequential', {}).get('tokens_per_s')} tok/s",
         ">= 4x"),
        ("judge: concurrency 16 vs 1 (200 ms latency)", f"{f['judge_concurrent_vs_sequential']}x",
         f"{judge.get('concurrency_16', {}).get('judgments_per_s')} vs "
         f"{judge.get('concurrency_1', {}).get('judgments_per_s')} judgments/s", ">= 10x"),
        ("judge: requests of a re-run", f"{f['judge_rerun_requests']}", "", "0"),
        ("papermill vs direct call (infer stage)", f"{f['papermill_overhead']}",
         f"{pipeline.get('papermill_s')} s vs {pipeline.get('direct_s')} s", "< 0.10"),
        ("make demo stage wall times (s)", json.dumps(f["demo_stage_seconds"]), "", ""),
        ("demo experiment on disk (GiB)", f"{f['experiment_disk_gib']}",
         f"keep_optimizer: all would take {f['reports']['disk'].get('keep_all_gib')}", "<= 1.5 GB"),
        ("infer: vLLM vs HF batched, tokens/s (bench/infer.py)", f"{f['vllm_vs_hf_tokens_per_s']}x",
         f"outputs identical {(infer.get('vllm_vs_hf') or {}).get('same_outputs')}", ">= 3x"),
        ("demo infer stage: vLLM time / HF time", f"{f['vllm_over_hf_infer_stage']}",
         f"rows identical {(f['reports']['pipeline'].get('vllm_vs_hf_infer_stage') or {}).get('identical_rows')}",
         "<= 0.5"),
        ("test suite, wall time (s)", f"{f['suite_seconds']}",
         "slowest: " + ", ".join(f"{t['test'].split('::')[-1]} {t['seconds']} s"
                                 for t in (f["suite_slowest"] or [])[:5]),
         "<= 600"),
        ("GPU", json.dumps(f["gpu"].get("skipped") or f["gpu"].get("train_bf16", {}).get("mfu")), "", ""),
    ]
    lines = ["| measure | result | detail | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
