"""Params-time checks that read the disk (or ask the hub), run by sftlab.config after the schema: what the
schema cannot see, found in milliseconds instead of a minute into a stage.

    checks.problems(params)   # [((section, key), why), ...]: empty when every check passes

- the train section's trl.SFTConfig keys, as the training process's TrlParser will read them
  (sftlab.trainer_fields, from a cache: no trl import);
- the base model (and judge.local_model) on disk or fetchable (sftlab.models.model_problem);
- a pad token that must be in the model's vocabulary, when the model is on disk already;
- the rubric files the judge will load: they exist (a path is checked here, not one cell later).
"""

from __future__ import annotations

from typing import Any

from sftlab import models, paths, trainer_fields
from sftlab.knobs import PAD_TOKEN_CHOICES

# `params` below is a sftlab.config.Params that passed the schema (typed Any: sftlab.config imports this module).


def problems(params: Any) -> list[tuple[tuple, str]]:
    found = _trainer_field_problems(params) + _model_problems(params) + _rubric_problems(params)
    if not found:  # the pad token is looked up in the model's vocabulary: only once the model is fine
        pad = _pad_token_problem(params)
        found += [(("train", "pad_token"), pad)] if pad else []
    return found


def _rubric_problems(params: Any) -> list[tuple[tuple, str]]:
    """Every rubric file the judge may load exists."""
    judge = params.judge
    named = [(("judge", "rubric"), judge.rubric), (("judge", "pairwise_rubric"), judge.pairwise_rubric)]
    for key in ("rubric_by_lang", "pairwise_rubric_by_lang"):
        named += [(("judge", key, lang), path) for lang, path in (getattr(judge, key) or {}).items()]
    found = []
    for loc, path in named:
        if path and not paths.resolve(path).is_file():
            found.append((loc, f"no such rubric file: {paths.resolve(path)}"))
    return found


def _trainer_field_problems(params: Any) -> list[tuple[tuple, str]]:
    """The train section's trl.SFTConfig keys, checked as the training process's TrlParser will read them
    (sftlab.trainer_fields): a wrong value fails here, not 30-200 s into the train stage."""
    extra = params.train.model_extra or {}
    problems = []
    for key, value in extra.items():
        problem = trainer_fields.problem(key, value)
        if problem:
            problems.append((("train", key), f"{problem} (a trl.SFTConfig field)"))
    return problems


def _model_problems(params: Any) -> list[tuple[tuple, str]]:
    """A model that is neither on disk nor fetchable fails here, not a minute into the train stage."""
    problems = []
    problem = models.model_problem(params.model.name_or_path)
    if problem:
        problems.append((("model", "name_or_path"), problem))
    if params.judge.backend == "local":
        problem = models.model_problem(params.judge.local_model)
        if problem:
            problems.append((("judge", "local_model"), problem))
    return problems


def _pad_token_problem(params: Any) -> str | None:
    """A pad-token choice that is neither eos, add nor a token of the model's vocabulary — checked here
    when the model is already on disk (otherwise the label audit checks it before training)."""
    choice = params.train.pad_token
    if choice in PAD_TOKEN_CHOICES:
        return None
    folder = models.local_model_folder(params.model.name_or_path)
    if folder is None or choice in models.vocabulary(folder):
        return None
    return (f"{choice!r} is not a token of the vocabulary of {folder}; use eos (pad = EOS), add (a dedicated "
            "pad token, embeddings resized) or a token of the vocabulary")
