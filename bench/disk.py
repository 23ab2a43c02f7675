"""Disk of an experiment: the whole folder, each checkpoint split into what a model is and what only resuming
needs (sftlab.checkpoints.RESUME_STATE), and what `train.keep_optimizer: all` would have kept.

    .venv/bin/python bench/disk.py [--experiment outputs/demo]

Sizes are bytes allocated on disk (as `du` counts them). `keep_all_bytes` adds the newest checkpoint's
resume state once more for every checkpoint that holds weights only: the state has the same shapes at every
step, so that is what keeping it everywhere costs. When no checkpoint holds it (`keep_optimizer: until_done`
after a finished run), `keep_all_bytes` and `newest_bytes` (what the default, `newest`, would keep) are
estimated from the weights: AdamW's two moments are twice the weights. Prints one JSON object.
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
        per_checkpoint.append({"checkpoint": checkpoint.name, "path": str(checkpoint), "bytes": total,
                               "resume_state_bytes": state,
                               "model_bytes": total - state, "complete": checkpoints.is_complete(checkpoint)})
    whole = allocated(folder)
    newest_state = max((c["resume_state_bytes"] for c in per_checkpoint), default=0)
    estimated = newest_state == 0 and bool(per_checkpoint)
    if estimated:  # until_done: every checkpoint weights only; the state would be AdamW's two moments
        newest_state = 2 * max(weights_bytes(Path(c["path"])) for c in per_checkpoint)
    keep_all = whole + sum(newest_state - c["resume_state_bytes"] for c in per_checkpoint)
    # `newest`: the resume state in the last checkpoint only
    keep_newest = whole - sum(c["resume_state_bytes"] for c in per_checkpoint) + newest_state
    print(json.dumps({"bench": "disk", "experiment": str(folder), "bytes": whole, "gib": round(whole / 2**30, 2),
                      "gb": round(whole / 1e9, 2), "keep_optimizer": keep_optimizer(folder),
                      "newest_bytes": keep_newest, "newest_gib": round(keep_newest / 2**30, 2),
                      "keep_all_bytes": keep_all, "keep_all_gib": round(keep_all / 2**30, 2),
                      "resume_state_estimated": estimated,
                      "checkpoints": per_checkpoint, "goal": "<= 1.5 GB"}, indent=2))


def weights_bytes(checkpoint: Path) -> int:
    return sum(allocated(p) for p in checkpoint.iterdir() if p.name.startswith("model") and p.suffix == ".safetensors")


def keep_optimizer(folder: Path) -> str | None:
    """The experiment's train.keep_optimizer, from the params as run."""
    import yaml

    resolved = folder / "config.resolved.yaml"
    if not resolved.exists():
        return None
    return ((yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}).get("train") or {}).get("keep_optimizer")


if __name__ == "__main__":
    main()
