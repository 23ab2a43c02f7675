"""The executor's figure: wall time of a two-experiment study run here, one stage after another, and submitted
to a one-node Slurm on this machine (its jobs side by side where the CPUs allow).

    sudo .venv/bin/python bench/cluster.py      # root: it starts its own Slurm daemons (tests/slurm_cluster.py)

The study is the executor test's (tests/test_executor.py `study`): the tiny random model, 2 training steps,
3 test samples, the reference judge; 7 stages in all (2 x train, infer, judge + the joint score). Local:
`sftlab run STUDY`; Slurm: `sftlab run STUDY --executor slurm --wait` (submission to the end of the last job).
Each in a fresh outputs folder; the Slurm run first. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_tiny_model  # noqa: E402
from slurm_cluster import LocalSlurm  # noqa: E402
from test_executor import study  # noqa: E402


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    from sftlab.models import builtin_checkpoint

    sftlab = str(Path(sys.executable).parent / "sftlab")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = build_tiny_model(tmp / "tiny-model", builtin_checkpoint("smollm2-135m-instruct"))
        target = study(tmp, model)
        cluster = LocalSlurm(tmp / "slurm").start()
        try:
            base = {**os.environ, **cluster.env,
                    "SFTLAB_MODEL_CACHE": os.environ.get("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))}
            slurm_s = timed([sftlab, "run", str(target), "--executor", "slurm", "--wait"],
                            {**base, "SFTLAB_OUTPUTS": str(tmp / "slurm-outputs")})
            local_s = timed([sftlab, "run", str(target)], {**base, "SFTLAB_OUTPUTS": str(tmp / "local-outputs")})
        finally:
            cluster.stop()
    print(json.dumps({"study": "2 experiments x (train, infer, judge) + joint score, tiny model, 2 steps",
                      "cpus": os.cpu_count(), "local_s": round(local_s, 1), "slurm_s": round(slurm_s, 1),
                      "slurm_over_local": round(slurm_s / local_s, 2)}, indent=2))


if __name__ == "__main__":
    main()
