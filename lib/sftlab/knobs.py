"""The allowed values of the knobs that both the params schema (sftlab.config) and the training script
(sftlab.train.trainer's ScriptArguments) read, declared once. Imports nothing of sftlab: the training
processes load it without the params machinery."""

from __future__ import annotations

from typing import Literal

DType = Literal["auto", "float32", "bfloat16", "float16"]  # auto: see sftlab.models.weights_dtype
Loss = Literal["completion", "all"]
Packing = Literal[False, "bfd", "wrapped"]
Collator = Literal["trl", "legacy_pad_masked"]
Turns = Literal["all", "last"]  # which assistant turns carry loss (sftlab.train.supervision)
Overlong = Literal["error", "drop", "keep_start", "keep_end"]  # rows longer than max_length
PAD_TOKEN_CHOICES = ("eos", "add")  # ...or any token of the model's vocabulary
Resume = Literal["auto", "never"] | str  # auto: the newest complete checkpoint; never; or a checkpoint path


def collator_conflict(collator: str, padding_free: bool) -> str | None:
    """Why `collator` cannot train padding-free batches (None if it can). Asked by the schema and, for
    hand-written configs, by sftlab.train."""
    if collator == "legacy_pad_masked" and padding_free:
        return ("collator: legacy_pad_masked pads each batch and masks the pad id, but packing: bfd and "
                "padding_free: true train padding-free (no pad tokens at all). Use packing: false or wrapped "
                "with this collator, or collator: trl.")
    return None
