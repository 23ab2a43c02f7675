"""Pipeline figures: wall time of each stage of the demo, and what running a stage through papermill costs.

    .venv/bin/python bench/pipeline.py [--status outputs/demo/status.json] [--repeats 2]
                                       [--engines] [--no-papermill] [--num-samples N]

1. Stage wall times: read from the status file that `make demo` (`sftlab run params/demo.yaml`) wrote.
2. Papermill overhead: the demo's infer stage (base model + every demo checkpoint) run twice over the same
   checkpoints, each time in a fresh process and a fresh outputs folder: once as a direct library call
   (`infer.run(infer.plan(params))`), once through the runner (papermill on this checkout's kernel, then the HTML
   reports and the index). Alternating runs; the medians are compared: overhead = papermill / direct - 1.
3. Engines (`--engines`, needs `make setup-vllm`): the demo's infer stage as a direct call with
   `infer.engine: hf` and with `infer.engine: vllm` over the same checkpoints, each in a fresh process and
   outputs folder; ratio vllm / hf of the wall times, and how many rows (every checkpoint's every sample)
   are identical (output text and finish reason).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sftlab.paths import ExperimentLayout

ROOT = Path(__file__).resolve().parents[1]
DIRECT = """
from sftlab import config, infer
params = config.load_params({params!r}, ["experiment={experiment}", *{overrides!r}])
config.write_resolved(params)
infer.run(infer.plan(params), echo=lambda line: None)
"""


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def papermill_overhead(repeats: int, train_dir: Path, overrides: list[str]) -> dict:
    python = sys.executable
    times: dict[str, list[float]] = {"direct": [], "papermill": []}
    with tempfile.TemporaryDirectory() as outputs:
        env = {**os.environ, "SFTLAB_OUTPUTS": outputs,
               "SFTLAB_MODEL_CACHE": os.environ.get("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))}
        for repeat in range(repeats):
            order = ["direct", "papermill"] if repeat % 2 == 0 else ["papermill", "direct"]
            for way in order:
                experiment = f"pipeline-{way}-{repeat}"
                layout = ExperimentLayout(Path(outputs) / experiment)
                layout.root.mkdir(parents=True)
                layout.train.symlink_to(train_dir)  # the demo's checkpoints
                if way == "direct":
                    code = DIRECT.format(params=str(ROOT / "params" / "demo.yaml"), experiment=experiment,
                                         overrides=overrides)
                    command = [python, "-c", code]
                else:
                    command = [python, "-m", "sftlab", "run", "params/demo.yaml", "--stages", "infer",
                               "--set", f"experiment={experiment}"]
                    for override in overrides:
                        command += ["--set", override]
                times[way].append(timed(command, env))
                print(f"{way} run {repeat}: {times[way][-1]:.1f} s", file=sys.stderr)
    direct, papermill = statistics.median(times["direct"]), statistics.median(times["papermill"])
    return {"stage": "infer (demo: base + checkpoints)", "repeats": repeats, "direct_s": round(direct, 2),
            "papermill_s": round(papermill, 2), "overhead": round(papermill / direct - 1, 4), "goal": "< 0.10",
            "runs": {k: [round(v, 2) for v in vs] for k, vs in times.items()}}


def engines_on_the_demo(train_dir: Path, overrides: list[str]) -> dict:
    """The demo's infer stage (direct call) with the HF engine, then with vLLM, over the same checkpoints."""
    from sftlab.infer.vllm_engine import vllm_python
    from sftlab.models import ModelError

    try:
        vllm_python()
    except ModelError as e:
        return {"skipped": str(e)}
    seconds, rows = {}, {}
    with tempfile.TemporaryDirectory() as outputs:
        env = {**os.environ, "SFTLAB_OUTPUTS": outputs,
               "SFTLAB_MODEL_CACHE": os.environ.get("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))}
        for engine in ("hf", "vllm"):
            experiment = f"engine-{engine}"
            layout = ExperimentLayout(Path(outputs) / experiment)
            layout.root.mkdir(parents=True)
            layout.train.symlink_to(train_dir)
            code = DIRECT.format(params=str(ROOT / "params" / "demo.yaml"), experiment=experiment,
                                 overrides=[*overrides, f"infer.engine={engine}"])
            seconds[engine] = timed([sys.executable, "-c", code], env)
            print(f"infer stage, {engine}: {seconds[engine]:.1f} s", file=sys.stderr)
            rows[engine] = {}
            for file in sorted(layout.generations.glob("*.jsonl")):
                for line in file.read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    rows[engine][(file.stem, row["id"])] = (row["output"], row["finish_reason"])
    same = sum(rows["vllm"].get(key) == value for key, value in rows["hf"].items())
    return {"stage": "infer (demo: base + checkpoints), direct call", "hf_s": round(seconds["hf"], 2),
            "vllm_s": round(seconds["vllm"], 2), "vllm_over_hf": round(seconds["vllm"] / seconds["hf"], 3),
            "goal": "<= 0.5", "identical_rows": f"{same}/{len(rows['hf'])}", "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status", default=str(ROOT / "outputs" / "demo" / "status.json"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", action="store_true", help="also the infer stage with vLLM vs HF")
    parser.add_argument("--no-papermill", action="store_true", help="skip the papermill overhead runs")
    parser.add_argument("--num-samples", type=int, help="infer.num_samples instead of the demo's (a quicker run)")
    args = parser.parse_args()

    overrides = [f"infer.num_samples={args.num_samples}"] if args.num_samples else []
    status_file = Path(args.status)
    if not status_file.exists():
        sys.exit(f"{status_file}: no demo run to read; run `make demo` first")
    status = json.loads(status_file.read_text(encoding="utf-8"))
    stages = {name: info.get("seconds") for name, info in status.get("stages", {}).items()}
    train_dir = ExperimentLayout(status_file.parent).train
    report = {"bench": "pipeline", "demo_stage_seconds": stages,
              "demo_total_seconds": round(sum(v for v in stages.values() if v), 1),
              "overrides": overrides, "papermill_vs_direct": None}
    if not args.no_papermill:
        report["papermill_vs_direct"] = papermill_overhead(args.repeats, train_dir.resolve(), overrides)
    if args.engines:
        report["vllm_vs_hf_infer_stage"] = engines_on_the_demo(train_dir.resolve(), overrides)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
