"""A TRL or alignment-handbook training recipe (one flat YAML) turned into an sftlab params file.

    sftlab import-recipe recipes/zephyr-7b-beta/sft/config_full.yaml -o params/zephyr-sft.yaml

`convert(recipe)` maps every key: the model's keys to `model`, the data keys (`dataset_name`,
`dataset_mixture`, splits, `test_split_size`) to `data`, `chat_template` to `model.chat_template`, `seed`
to the top level, sftlab's own knobs (`max_seq_length` -> `train.max_length`, `packing` -> `train.packing`,
`gradient_checkpointing_kwargs.use_reentrant` -> `train.use_reentrant`, `completion_only_loss` ->
`train.loss`, `assistant_only_loss` -> `train.turns`), every other trainer field to `train` as it is, and
drops what sftlab decides itself or does not do (output_dir, Hub pushing, attention implementation, ...).
Each decision is a line of the returned notes, written as comments at the head of the params file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftlab import checks, config
from sftlab.files import atomic_write_text

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32", "auto": "auto"}
_TRACKERS = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "comet_ml": "comet_ml",
             "trackio": "trackio"}


@dataclass
class Converted:
    params: dict[str, Any]
    mapped: list[str] = field(default_factory=list)  # "recipe key -> params key"
    dropped: list[str] = field(default_factory=list)  # "recipe key: why"

    def header(self, source: str) -> str:
        lines = [f"# Imported from {source} by `sftlab import-recipe`.", "# Mapped:"]
        lines += [f"#   {m}" for m in self.mapped] or ["#   (nothing)"]
        lines += ["# Dropped:"] + ([f"#   {d}" for d in self.dropped] or ["#   (nothing)"])
        return "\n".join(lines) + "\n"


def convert(recipe: dict[str, Any], experiment: str) -> Converted:
    out = Converted({"experiment": experiment, "model": {}, "data": {}, "train": {}})
    model, data, train = out.params["model"], out.params["data"], out.params["train"]
    trainer_fields = config.sft_config_fields()

    def put(section: dict, key: str, value: Any, source: str, where: str) -> None:
        section[key] = value
        out.mapped.append(f"{source} -> {where}")

    for key, value in recipe.items():
        if key == "model_name_or_path":
            put(model, "name_or_path", value, key, "model.name_or_path")
        elif key == "model_revision":
            if value not in (None, "main"):
                put(model, "revision", value, key, "model.revision")
            else:
                out.dropped.append(f"{key}: {value!r} is the default revision")
        elif key in ("torch_dtype", "dtype"):
            if str(value) in _DTYPES:
                put(model, "dtype", _DTYPES[str(value)], key, "model.dtype")
            else:
                out.dropped.append(f"{key}: {value!r} is not a dtype sftlab knows (auto, bfloat16, float16, float32)")
        elif key == "trust_remote_code":
            put(model, "trust_remote_code", bool(value), key, "model.trust_remote_code")
        elif key in ("attn_implementation", "use_flash_attention_2"):
            out.dropped.append(f"{key}: sftlab loads models with transformers' default attention")
        elif key == "chat_template":
            put(model, "chat_template", value, key, "model.chat_template")
        elif key == "dataset_name":
            put(data, "train", value, key, "data.train")
        elif key == "dataset_config":
            if value not in (None, "default"):
                out.dropped.append(f"{key}: {value!r}: a hub dataset configuration is not a params key; save the "
                                   f"configuration you want with datasets' save_to_disk and name that folder")
        elif key == "dataset_train_split":
            put(data, "train_split", value, key, "data.train_split")
        elif key == "dataset_test_split":
            put(data, "test", recipe.get("dataset_name"), key, "data.test (the same dataset)")
            put(data, "test_split", value, key, "data.test_split")
        elif key == "dataset_mixture":
            _mixture(value, out)
        elif key in ("dataset_num_proc", "preprocessing_num_workers"):
            out.dropped.append(f"{key}: sftlab tokenizes with the fast tokenizer in batches, in one process")
        elif key == "seed":
            put(out.params, "seed", value, key, "seed (top level: data split, trainer, sampling)")
        elif key in ("max_seq_length", "max_length"):
            put(train, "max_length", value, key, "train.max_length")
        elif key == "packing":
            put(train, "packing", "bfd" if value is True else value, key,
                "train.packing" + (" (bfd: TRL's default strategy)" if value is True else ""))
        elif key == "packing_strategy":
            if recipe.get("packing"):
                put(train, "packing", value, key, "train.packing")
        elif key == "gradient_checkpointing_kwargs":
            if isinstance(value, dict) and "use_reentrant" in value:
                put(train, "use_reentrant", bool(value["use_reentrant"]), f"{key}.use_reentrant", "train.use_reentrant")
            others = sorted(set(value or {}) - {"use_reentrant"})
            if others:
                out.dropped.append(f"{key}: {', '.join(others)}: sftlab sets only use_reentrant")
        elif key == "completion_only_loss":
            put(train, "loss", "completion" if value is not False else "all", key, "train.loss")
        elif key == "assistant_only_loss":
            if value:
                put(train, "turns", "all", key, "train.turns (sftlab masks every assistant turn itself)")
        elif key == "truncation_mode":
            put(train, "overlong", value, key, "train.overlong")
        elif key == "warmup_ratio" and key not in trainer_fields:
            put(train, "warmup_steps", value, key, "train.warmup_steps (a value below 1 is a fraction of the steps)")
        elif key == "evaluation_strategy" and key not in trainer_fields:
            put(train, "eval_strategy", value, key, "train.eval_strategy")
        elif key == "report_to":
            trackers = [value] if isinstance(value, str) else list(value or [])
            kept = [t for t in trackers if t in _TRACKERS and checks.tracker_problem(t) is None]
            missing = [t for t in trackers if t not in kept and t not in ("none", "all")]
            if missing:
                out.dropped.append(f"report_to: {', '.join(missing)}: not installed here (sftlab plots the curves "
                                   "from trainer_state.json without a tracker); install it and add it back")
            if kept:
                put(train, "report_to", kept, key, "train.report_to")
        elif key in config.OWNED_TRAINER_KEYS:
            out.dropped.append(f"{key}: {config.OWNED_TRAINER_KEYS[key]}")
        elif key in config.FOREIGN_KEYS and key not in trainer_fields:
            out.dropped.append(f"{key}: {config.FOREIGN_KEYS[key]}")
        elif key in trainer_fields:
            train[key] = value
            out.mapped.append(f"{key} -> train.{key}")
        else:
            out.dropped.append(f"{key}: neither a trainer field nor a recipe key sftlab knows")
    if "train" not in data and "dataset_mixture" not in recipe:
        out.dropped.append("(no dataset in the recipe: data.train stays the demo set)")
    for section in ("model", "data", "train"):
        if not out.params[section]:
            del out.params[section]
    return out


def _mixture(value: Any, out: Converted) -> None:
    """The handbook's dataset_mixture: {datasets: [{id, config, split, columns, weight}], test_split_size, seed}."""
    data = out.params["data"]
    entries = value.get("datasets", []) if isinstance(value, dict) else []
    sources = []
    for entry in entries:
        source = {"source": entry.get("id"), "split": entry.get("split", "train"),
                  "weight": float(entry.get("weight", 1.0))}
        sources.append(source)
        if entry.get("config") not in (None, "default"):
            out.dropped.append(f"dataset_mixture: {entry.get('id')} config {entry.get('config')!r}: a hub dataset "
                               "configuration is not a params key; save it with save_to_disk and name the folder")
        if entry.get("columns"):
            out.dropped.append(f"dataset_mixture: {entry.get('id')} columns {entry['columns']}: sftlab reads the "
                               "conversation columns it knows (messages, conversations, ...; see data.columns)")
    if sources:
        data["train"] = sources
        out.mapped.append(f"dataset_mixture.datasets ({len(sources)}) -> data.train (a list of sources)")
    if isinstance(value, dict) and value.get("test_split_size") is not None:
        data["test"] = None
        data["test_size"] = value["test_split_size"]
        out.mapped.append("dataset_mixture.test_split_size -> data.test_size (data.test: null, split off data.train)")
    if isinstance(value, dict) and value.get("seed") is not None:
        out.dropped.append(f"dataset_mixture.seed: {value['seed']}: sftlab splits and mixes with the one top-level seed")


def import_recipe(path: str | Path, target: str | Path | None = None) -> tuple[Path, Converted]:
    """Write the params file for the recipe at `path` (default: params/<recipe stem>.yaml); never overwrites."""
    path = Path(path)
    recipe = config.read_yaml(path)
    target = Path(target) if target else Path("params") / f"{path.stem}.yaml"
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another name with -o")
    experiment = target.stem if config.experiment_name_problem(target.stem) is None else "imported"
    converted = convert(recipe, experiment)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = converted.header(str(path)) + yaml.safe_dump(converted.params, sort_keys=False, allow_unicode=True,
                                                        width=120)
    atomic_write_text(target, text)
    return target, converted
