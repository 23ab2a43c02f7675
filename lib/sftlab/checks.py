"""Params-time checks that read the disk (or ask the hub), run by sftlab.config after the schema: what the
schema cannot see, found in milliseconds instead of a minute into a stage.

    checks.problems(params)   # [((section, key), why), ...]: empty when every check passes

- the train section's trl.SFTConfig keys, as the training process's TrlParser will read them
  (sftlab.trainer_fields, from a cache: no trl import);
- the base model (and judge.local_model) on disk or fetchable (sftlab.models.model_problem);
- a pad token that must be in the model's vocabulary, when the model is on disk already;
- the rubric files the judge will load: they exist (a path is checked here, not one cell later);
- `report_to` trackers installed in this environment;
- a chat template: `model.chat_template` readable, or the model on disk has one of its own;
- infer replicas that the engine and the infer job's GPUs can give (tensor parallel is vLLM's).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from sftlab import models, paths, trainer_fields
from sftlab.knobs import PAD_TOKEN_CHOICES

# `params` below is a sftlab.config.Params that passed the schema (typed Any: sftlab.config imports this module).


def problems(params: Any) -> list[tuple[tuple, str]]:
    found = (_trainer_field_problems(params) + _tracker_problems(params) + _model_problems(params)
             + _rubric_problems(params) + _parallel_problems(params))
    if not found:  # the pad token and the template are looked up in the model's files: only once the model is fine
        pad = _pad_token_problem(params)
        found += [(("train", "pad_token"), pad)] if pad else []
        template = _chat_template_problem(params)
        found += [(("model", "chat_template"), template)] if template else []
    return found


def _tracker_problems(params: Any) -> list[tuple[tuple, str]]:
    trackers = params.train.report_to
    found = []
    for tracker in [trackers] if isinstance(trackers, str) else trackers or []:
        problem = tracker_problem(tracker)
        if problem:
            found.append((("train", "report_to"), problem))
    return found


# report_to values and the package each needs in the training environment.
TRACKER_PACKAGES = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",),
                    "comet_ml": ("comet_ml",), "trackio": ("trackio",), "clearml": ("clearml",),
                    "dvclive": ("dvclive",), "swanlab": ("swanlab",), "neptune": ("neptune",)}


def tracker_problem(name: str) -> str | None:
    """Why `report_to: name` would fail at launch (its package is not installed), or None."""
    packages = TRACKER_PACKAGES.get(name)
    if packages is None or any(importlib.util.find_spec(p) for p in packages):
        return None
    return (f"{name} is not installed in this environment ({sys.prefix}), so the launch would fail: install it "
            f"(`{Path(sys.prefix) / 'bin' / 'pip'} install {packages[0]}`) or remove it; without any tracker "
            "sftlab still plots loss, grad_norm and learning rate from trainer_state.json (the train report)")



def _parallel_problems(params: Any) -> list[tuple[tuple, str]]:
    """Replicas and GPUs per replica that the engine and the Slurm job can give (sftlab.infer.parallel)."""
    infer, found = params.infer, []
    if infer.tensor_parallel > 1 and infer.engine != "vllm":
        found.append((("infer", "tensor_parallel"), f"{infer.tensor_parallel}: the HF engine holds one whole model "
                      "per device; use infer.data_parallel (one replica per GPU), or infer.engine: vllm"))
    wanted = infer.data_parallel * infer.tensor_parallel
    asked = params.executor.infer.gpus_per_node
    if params.executor.backend == "slurm" and asked is not None and asked < wanted:
        found.append((("executor", "infer", "gpus_per_node"), f"{asked} GPUs for infer.data_parallel "
                      f"{infer.data_parallel} x infer.tensor_parallel {infer.tensor_parallel} = {wanted}: ask for "
                      f"{wanted}, or leave it unset (the infer job then asks for {wanted})"))
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
    try:
        models.chat_template_text(params.model.chat_template)
    except models.ModelError as e:
        problems.append((("model", "chat_template"), str(e).removeprefix("model.chat_template: ")))
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


def _chat_template_problem(params: Any) -> str | None:
    """A model on disk whose tokenizer has no chat template, and no model.chat_template: conversations cannot
    be rendered (a base model) — said here, not at the label audit."""
    if params.model.chat_template:
        return None
    folder = models.local_model_folder(params.model.name_or_path)
    if folder is None or models.has_chat_template(folder):
        return None
    return (f"not set, and {folder} has no chat template of its own (a base model): set model.chat_template to a "
            "template file or its text (e.g. ChatML) so that conversations can be rendered and the end-of-turn "
            "token found")
