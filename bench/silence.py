"""How long the terminal stays silent while a command runs: the longest gaps between output lines.

    .venv/bin/python bench/silence.py [--top 5] -- make demo
    .venv/bin/python bench/silence.py -- .venv/bin/sftlab run params/demo.yaml --stages infer,judge

Runs the command (stdout and stderr merged, as a terminal shows them), passes every line through, and
prints one JSON object at the end: the exit code, the wall time, the number of lines, the longest gap and
the `--top` longest gaps, each with the line before and the line after it. A gap is the time between two
lines arriving (tqdm-style carriage-return updates count as lines).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = last = time.monotonic()
    previous = "(start)"
    gaps, lines = [], 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    buffer = b""
    while chunk := process.stdout.read1(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        buffer += chunk
        *complete, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            now = time.monotonic()
            line = raw.decode("utf-8", "replace").strip()
            gaps.append({"seconds": round(now - last, 1), "after": previous[:160], "before": line[:160]})
            last, previous, lines = now, line or previous, lines + 1
    code = process.wait()
    gaps.sort(key=lambda g: g["seconds"], reverse=True)
    print(json.dumps({"command": command, "exit_code": code, "seconds": round(time.monotonic() - start, 1),
                      "lines": lines, "longest_gap_s": gaps[0]["seconds"] if gaps else None,
                      "longest_gaps": gaps[:args.top]}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
