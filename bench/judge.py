"""Judge throughput and re-run cost against the test server (tests/judge_server.py) on 127.0.0.1.

    .venv/bin/python bench/judge.py [--latency 0.2] [--rows-serial 20] [--rows-parallel 160]

Prints JSON: judgments per second at concurrency 1 and 16 with `latency` seconds per response (goal:
at least 10x), and the number of requests a re-run of the finished stage sends (goal: 0). Every run
uses a fresh temporary outputs folder; nothing leaves the machine.
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
sys.path.insert(0, str(ROOT / "tests"))

from judge_server import FakeJudgeServer  # noqa: E402

from sftlab.metrics import METRICS  # noqa: E402
from sftlab.paths import ExperimentLayout  # noqa: E402


def write_generations(outputs: Path, experiment: str, rows: int) -> None:
    samples = [json.loads(line) for line in (ROOT / "data" / "demo" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    folder = ExperimentLayout(outputs / experiment).generations
    folder.mkdir(parents=True)
    with (folder / "base.jsonl").open("w", encoding="utf-8") as f:
        for i in range(rows):
            sample = samples[i % len(samples)]
            f.write(json.dumps({
                "id": f"{sample['id']}-{i}", "checkpoint": "base",
                "prompt": [{"role": "user", "content": sample["question"]}], "reference": sample["answer"],
                "output": f"{sample['answer']} ({i})", "n_tokens": 12, "finish_reason": "eos",
                "eos_terminated": True, **{metric: 0.0 for metric in METRICS}, "length_ratio": 1.0,
                "meta": {"lang": sample["lang"]},
            }, ensure_ascii=False) + "\n")


def timed_run(server: FakeJudgeServer, experiment: str, concurrency: int) -> dict:
    from sftlab import config, judge

    params = config.validate({"experiment": experiment, "judge": {
        "backend": "openai", "base_url": server.base_url, "api_key_env": "SFTLAB_BENCH_JUDGE_KEY",
        "concurrency": concurrency, "timeout_s": 30.0, "max_retries": 0}})
    server.reset_counts()
    started = time.perf_counter()
    summary = judge.run(judge.plan(params), progress=False)
    seconds = time.perf_counter() - started
    return {"params": params, "judged": summary.judged, "seconds": round(seconds, 3),
            "judgments_per_s": round(summary.judged / seconds, 2), "requests": server.request_count,
            "max_in_flight": server.max_in_flight}


def batch_run(server: FakeJudgeServer, experiment: str) -> dict:
    """The Batch API path: one run, then a re-run (which must create no batch and send nothing)."""
    from sftlab import config, judge

    params = config.validate({"experiment": experiment, "judge": {
        "backend": "openai", "base_url": server.base_url, "api_key_env": "SFTLAB_BENCH_JUDGE_KEY",
        "batch": True, "batch_poll_s": 0.05, "timeout_s": 30.0}})
    started = time.perf_counter()
    first = judge.run(judge.plan(params), progress=False)
    seconds = time.perf_counter() - started
    batches, lines = len(server.batches), len(server.batch_lines)
    again = judge.run(judge.plan(params), progress=False)
    return {"judged": first.judged, "seconds": round(seconds, 3), "batches_created": first.batches,
            "batch_lines": lines, "cost_usd": first.cost_usd,
            "rerun_batches_created": len(server.batches) - batches, "rerun_lines": len(server.batch_lines) - lines,
            "rerun_requests": again.requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per response")
    parser.add_argument("--rows-serial", type=int, default=20, help="judgments at concurrency 1")
    parser.add_argument("--rows-parallel", type=int, default=160, help="judgments at concurrency 16")
    args = parser.parse_args()

    os.environ["SFTLAB_OUTPUTS"] = outputs = tempfile.mkdtemp(prefix="sftlab-bench-judge-")
    os.environ["SFTLAB_BENCH_JUDGE_KEY"] = "bench-key"
    from sftlab.judge import reference  # noqa: F401  (imported before timing: no import cost inside a run)

    write_generations(Path(outputs), "serial", args.rows_serial)
    write_generations(Path(outputs), "parallel", args.rows_parallel)
    write_generations(Path(outputs), "batch", args.rows_parallel)
    with FakeJudgeServer(latency_s=args.latency) as server:
        serial = timed_run(server, "serial", 1)
        parallel = timed_run(server, "parallel", 16)
        rerun = timed_run(server, "parallel", 16)
        batch = batch_run(server, "batch")
    result = {
        "latency_s": args.latency,
        "concurrency_1": {k: serial[k] for k in ("judged", "seconds", "judgments_per_s", "requests")},
        "concurrency_16": {k: parallel[k] for k in ("judged", "seconds", "judgments_per_s", "requests",
                                                    "max_in_flight")},
        "speedup": round(parallel["judgments_per_s"] / serial["judgments_per_s"], 2),
        "speedup_goal": 10,
        "rerun_requests": rerun["requests"],
        "rerun_requests_goal": 0,
        "rerun_seconds": rerun["seconds"],
        "batch": batch,
        "batch_rerun_created_goal": 0,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
