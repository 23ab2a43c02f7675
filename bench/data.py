"""How long the data checks take on a large file: read, validate and split a generated JSONL of `--mb` MB.

    nice .venv/bin/python bench/data.py [--mb 50] [--seed 0]

Writes a JSONL of chat rows (a mix of single-turn question/answer, multi-turn messages, ShareGPT rows and
tool-call turns, half of them Korean) to a temporary folder, then times `data.load_data` with a seeded
10% test split (the prompt-overlap check included). Prints one JSON object: the file size, rows, and the
seconds to load and check
(wall clock, and the CPU time of this process: on a shared machine the wall clock also counts waiting).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def rows(rng: random.Random):
    words = ["data", "model", "학습", "모델", "token", "answer", "질문", "loss", "batch", "supervised"]
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    call = {"type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    n = 0
    while True:
        n += 1
        kind = n % 4
        if kind == 0:
            yield {"question": text(20), "answer": text(60), "lang": "en"}
        elif kind == 1:
            yield {"messages": [{"role": "system", "content": text(8)}, {"role": "user", "content": text(20)},
                                {"role": "assistant", "content": text(60), "weight": 0},
                                {"role": "user", "content": text(15)}, {"role": "assistant", "content": text(60)}]}
        elif kind == 2:
            yield {"conversations": [{"from": "human", "value": text(25)}, {"from": "gpt", "value": text(70)}]}
        else:
            yield {"messages": [{"role": "user", "content": text(20)},
                                {"role": "assistant", "content": None, "tool_calls": [call]},
                                {"role": "tool", "content": text(10)}, {"role": "assistant", "content": text(50)}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sftlab import data
    from sftlab.config import DataParams

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.jsonl"
        limit, size, count = int(args.mb * 1_000_000), 0, 0
        with path.open("w", encoding="utf-8") as f:
            for row in rows(random.Random(args.seed)):
                line = json.dumps(row, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                count += 1
                if size >= limit:
                    break
        start, cpu = time.perf_counter(), time.process_time()
        splits = data.load_data(DataParams(train=str(path), test=None, test_size=0.1), seed=args.seed)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"mb": round(size / 1e6, 1), "rows": count, "train": len(splits.train),
                      "test": len(splits.test), "load_and_check_s": round(seconds, 2),
                      "cpu_s": round(cpu_seconds, 2)}))


if __name__ == "__main__":
    main()
