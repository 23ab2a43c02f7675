"""Checkpoints on disk: `outputs/<exp>/train/checkpoint-<step>/`.

A checkpoint is *complete* when the trainer wrote its state file and the model weights: the trainer
writes `trainer_state.json` after the weights, optimizer and scheduler, so a folder left by a kill in
the middle of a save lacks it and is never resumed from or evaluated.

What a checkpoint keeps (`train.keep_optimizer`): every complete checkpoint keeps what a model is (weights,
config, tokenizer, generation config) and `trainer_state.json`, all that infer and score read. The state
only resuming needs (`RESUME_STATE`: optimizer, scheduler, gradient scaler, RNG states; Adam's two fp32
moments alone are twice the fp32 weights) is kept by the newest complete checkpoint only (`newest`, the
default), by all (`all`), or by the newest while the run goes on and by none once it has saved its last step
(`until_done`: a finished run keeps weights only, and cannot be extended). `prune_resume_state` removes it
from the older ones, and is called only once a newer checkpoint is complete, so a kill at any moment leaves a
checkpoint to resume from exactly (and with `until_done`, once the last step is saved). A
checkpoint without it is *weights-only*: evaluated like any other, refused as a resume point
(`check_resumable`).

`content_fingerprint(folder)` identifies a model folder (a checkpoint, a converted base model) by what
it generates with, never by where it is or when its files were written: a copied or moved experiment
keeps its generations, a retrained checkpoint does not.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

_STEP = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def name_step(name: str) -> int | None:
    """The step in a name like checkpoint-30; None for anything else (e.g. `base`)."""
    match = _STEP.match(name)
    return int(match.group(1)) if match else None


def step_of(checkpoint: Path) -> int:
    step = name_step(checkpoint.name)
    if step is None:
        raise ValueError(f"{checkpoint}: not a checkpoint folder (expected checkpoint-<step>)")
    return step


def checkpoint_order(name: str) -> tuple:
    """Sort key for outputs named after models: base first, then checkpoint-<step> by step, then by name."""
    if name == "base":
        return (0, 0, "")
    step = name_step(name)
    return (1, step, "") if step is not None else (2, 0, name)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state.json").exists() and any((checkpoint / w).exists() for w in _WEIGHTS)


def list_checkpoints(train_dir: Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders in step order."""
    if not train_dir.is_dir():
        return []
    found = [p for p in train_dir.iterdir() if p.is_dir() and _STEP.match(p.name)]
    if complete_only:
        found = [p for p in found if is_complete(p)]
    return sorted(found, key=step_of)


def newest_complete(train_dir: Path) -> Path | None:
    found = list_checkpoints(train_dir)
    return found[-1] if found else None


def trainer_state(train_dir: Path) -> dict:
    """The most recent trainer state: the final one if training finished, else the newest checkpoint's."""
    candidates = [train_dir / "trainer_state.json"]
    newest = newest_complete(train_dir)
    if newest is not None:
        candidates.append(newest / "trainer_state.json")
    states = []
    for path in candidates:
        if path.exists():
            states.append(json.loads(path.read_text(encoding="utf-8")))
    if not states:
        return {"log_history": [], "global_step": 0}
    return max(states, key=lambda s: s.get("global_step", 0))


def remove_partial(train_dir: Path) -> list[Path]:
    """Folders a kill left in the middle of a save; they are never resumed from, so clear them."""
    partial = [p for p in list_checkpoints(train_dir, complete_only=False) if not is_complete(p)]
    for path in partial:
        shutil.rmtree(path)
    return partial


# --------------------------------------------------------------------------------------------
# Resume state
# --------------------------------------------------------------------------------------------

# What only resuming reads: the optimizer (optimizer.pt; a folder optimizer_<n> for sharded FSDP state), the
# scheduler, the gradient scaler, the RNG states. Nothing infer, score or from_pretrained reads.
RESUME_STATE = re.compile(r"^(optimizer(\.pt|\.bin|_\d+)|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$")


def resume_state(checkpoint: Path) -> list[Path]:
    """The files and folders of `checkpoint` that only resuming needs."""
    return sorted(p for p in Path(checkpoint).iterdir() if RESUME_STATE.match(p.name))


def has_optimizer_state(checkpoint: Path) -> bool:
    return any(p.name.startswith("optimizer") for p in resume_state(checkpoint))


def prune_resume_state(train_dir: Path, including_newest: bool = False) -> list[Path]:
    """Remove the resume state of every complete checkpoint older than the newest complete one; return the
    checkpoints it was removed from. Safe at any moment: the newest complete checkpoint is never touched, and
    a kill in the middle leaves a checkpoint pruned in part, which the next call finishes. `including_newest`
    (keep_optimizer: until_done, once the run has saved its last step): the newest one too."""
    done = list_checkpoints(train_dir)
    pruned = []
    for checkpoint in done if including_newest else done[:-1]:
        found = resume_state(checkpoint)
        for path in found:  # gone already is fine: another node's first process may prune a shared folder too
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if found:
            pruned.append(checkpoint)
    return pruned


def check_resumable(checkpoint: Path) -> None:
    """Raise ValueError when `checkpoint` holds weights only: resuming from it would silently restart the
    optimizer (the trainer loads its state only if the file is there) and the learning-rate schedule."""
    if not has_optimizer_state(checkpoint):
        raise ValueError(
            f"{checkpoint} holds weights only, no optimizer and scheduler state (train.keep_optimizer: newest "
            "removes them from a checkpoint once a newer one is complete, until_done from the last one too once "
            "the run has reached its last step; save_only_model never writes them), so "
            "training cannot resume from it exactly. Resume from the newest complete checkpoint (train.resume: "
            f"auto), or train from these weights in a new experiment (model.name_or_path: {checkpoint}); set "
            "train.keep_optimizer: all to keep every checkpoint resumable in future runs")


# --------------------------------------------------------------------------------------------
# Content fingerprint
# --------------------------------------------------------------------------------------------

# What a checkpoint folder holds for resuming only (RESUME_STATE, the pickled arguments with their absolute
# output_dir, the trainer state): nothing a model generates with, so pruning leaves the fingerprint as it was.
_NOT_THE_MODEL = re.compile(r"^(training_args\.bin|trainer_state\.json|README\.md)$")
FULL_HASH_BYTES = 16 * 2**20  # files up to this size are hashed whole (config, tokenizer, chat template)
SAMPLES, SAMPLE_BYTES = 64, 64 * 2**10  # larger ones (weights): their header and 64 chunks spread over the file


def content_fingerprint(folder: Path) -> str:
    """A hash of the model files of `folder` (its own files, not subfolders): each one's name and size,
    small files whole, and of a weight file its header (a safetensors header lists every tensor's name,
    dtype, shape and offsets) plus 64 chunks of 64 KiB spread evenly over it. Fine-tuning changes every
    weight, so any retrained checkpoint differs in every chunk; a copy (cp -r, tar, rsync) does not differ
    at all, whatever its modification times. Reads about 4 MiB per weight file: cheap enough to compute
    each time, so there is no cache to go stale."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file() and not _NOT_THE_MODEL.match(p.name)
                       and not RESUME_STATE.match(p.name)):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= FULL_HASH_BYTES:
                digest.update(f.read())
                continue
            header = _safetensors_header_size(f, size) if path.suffix == ".safetensors" else 0
            f.seek(0)
            digest.update(f.read(header))
            rest = size - header
            if rest <= FULL_HASH_BYTES:
                digest.update(f.read())
                continue
            for i in range(SAMPLES):
                f.seek(header + (rest - SAMPLE_BYTES) * i // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def _safetensors_header_size(f, size: int) -> int:
    """8 bytes of little-endian length, then that much JSON; 0 when the file does not look like that."""
    f.seek(0)
    length = int.from_bytes(f.read(8), "little")
    return 8 + length if 8 + length <= min(size, 100 * 2**20) else 0
