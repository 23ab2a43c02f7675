"""The test suite's wall time and its slowest tests, as JSON: `make test`'s command with --durations.

    .venv/bin/python bench/suite.py [--workers 2] [--slowest 15] [--log outputs/bench/suite.log]
    .venv/bin/python bench/suite.py --from-log outputs/bench/suite.log    # read a run already made

Runs `pytest -q -n <workers> --dist loadfile --durations=<slowest>` (the README's test command with the
durations report) in this checkout and prints {"seconds", "passed", "skipped", "failed", "workers",
"load_average_before", "slowest": [{"test", "phase", "seconds"}, ...]}. A set-up or tear-down (a module's
shared Slurm cluster, a shared training run) is listed as its own line, as pytest reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S.*)$")
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def parse(log: str, slowest: int) -> dict:
    lines = log.splitlines()
    found = [DURATION.match(line.strip()) for line in lines]
    durations = [{"test": m.group(3), "phase": m.group(2), "seconds": float(m.group(1))} for m in found if m]
    summary = next((line for line in reversed(lines) if " in " in line and COUNT.search(line)), "")
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in COUNT.findall(summary)}
    wall = re.search(r" in ([\d.]+)s", summary)
    return {"pytest_seconds": float(wall.group(1)) if wall else None, **counts,
            "slowest": sorted(durations, key=lambda d: -d["seconds"])[:slowest]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2")
    parser.add_argument("--slowest", type=int, default=15)
    parser.add_argument("--log", default=str(ROOT / "outputs" / "bench" / "suite.log"))
    parser.add_argument("--from-log", help="parse this pytest log instead of running the suite")
    args = parser.parse_args()
    if args.from_log:
        print(json.dumps(parse(Path(args.from_log).read_text(), args.slowest), indent=2))
        return
    load = os.getloadavg()
    command = [str(Path(sys.executable).parent / "pytest"), "-q", "-p", "no:cacheprovider", "-n", args.workers,
               "--dist", "loadfile", f"--durations={args.slowest}"]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - started
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    Path(args.log).write_text(result.stdout + result.stderr)
    report = {"seconds": round(seconds, 1), "workers": args.workers, "exit_code": result.returncode,
              "load_average_before": [round(x, 2) for x in load], "log": args.log,
              **parse(result.stdout, args.slowest)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
