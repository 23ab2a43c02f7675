"""Disk of an experiment: the whole folder, each checkpoint split into what a model is and what only resuming
needs (sftlab.checkpoints.RESUME_STATE), and what `train.keep_optimizer: all` would have kept.

    .venv/bin/python bench/disk.py [--experiment outputs/demo]

Sizes are bytes allocated on disk (as `du` counts them). `keep_all_bytes` adds the newest checkpoint's
resume state once more for every checkpoint that holds weights only: the state has the same shapes at every
step, so that is what keeping it everywhere costs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sftlab import checkpoints
from sftlab.paths import ExperimentLayout

ROOT = Path(__file__).resolve().parents[1]


def allocated(path: Path) -> int:
    """Bytes on disk of a file or a folder (blocks, as du counts), links not followed."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_blocks * 512
    return sum(allocated(p) for p in path.iterdir()) + path.lstat().st_blocks * 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=str(ROOT / "outputs" / "demo"))
    args = parser.parse_args()
    folder = Path(args.experiment)
    if not folder.is_dir():
        sys.exit(f"{folder}: no experiment here; run `make demo` first")
    per_checkpoint = []
    for checkpoint in checkpoints.list_checkpoints(ExperimentLayout(folder).train, complete_only=False):
        state = sum(allocated(p) for p in checkpoints.resume_state(checkpoint))
        total = allocated(checkpoint)
        per_checkpoint.append({"checkpoint": checkpoint.name, "bytes": total, "resume_state_bytes": state,
                               "model_bytes": total - state, "complete": checkpoints.is_complete(checkpoint)})
    whole = allocated(folder)
    newest_state = max((c["resume_state_bytes"] for c in per_checkpoint), default=0)
    keep_all = whole + sum(newest_state - c["resume_state_bytes"] for c in per_checkpoint)
    print(json.dumps({"bench": "disk", "experiment": str(folder), "bytes": whole, "gib": round(whole / 2**30, 2),
                      "keep_all_bytes": keep_all, "keep_all_gib": round(keep_all / 2**30, 2),
                      "checkpoints": per_checkpoint, "goal": "<= 1.5 GB"}, indent=2))


if __name__ == "__main__":
    main()
