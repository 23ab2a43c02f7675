"""Launching training from a notebook: the flat config, the torchrun command, live output, curves.

    plan = launch.prepare(params, train_examples)   # writes train/train_config.yaml and train/train.jsonl
    launch.run_training(plan)                       # torchrun ... -m sftlab.train --config <that file>
    launch.training_curves(plan.train_dir)          # loss, grad_norm, learning rate from trainer_state.json

Writes under `outputs/<exp>/train/`: `train_config.yaml` (the flat YAML TrlParser reads), `train.jsonl`
(the validated rows as prompt/completion conversations), `train.log` (everything the processes print,
appended per launch), the trainer's `checkpoint-<step>/` folders and `trainer_state.json`.

Raises `TrainingFailed` (with the last 50 lines of the log) when torchrun exits non-zero, and
`ValueError` for launch settings that cannot work (multi-node without an endpoint, a changed config
over existing checkpoints).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from sftlab import checkpoints
from sftlab.config import Params, TrainParams, atomic_write_text

LOG_TAIL_LINES = 50
# sftlab's own knobs and launch settings: not SFTConfig fields, translated below.
_OWN_KEYS = {"loss", "packing", "collator", "pad_token", "allow_unsupervised_eos", "audit_rows", "use_reentrant",
             "nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "resume"}


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the message ends with the tail of train.log."""


@dataclass(frozen=True)
class TrainPlan:
    train_dir: Path
    config_path: Path
    log_path: Path
    command: list[str]
    max_steps: int | None
    skip: bool  # the same config already trained to its last step


def nproc_per_node(train: TrainParams) -> int:
    if train.nproc_per_node == "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    return train.nproc_per_node


def train_config(params: Params, model_path: str, train_file: Path, output_dir: Path) -> dict:
    """The flat YAML handed to `sftlab.train`: ScriptArguments fields + SFTConfig fields."""
    train = params.train
    config = {
        # sftlab.train.ScriptArguments
        "model_name_or_path": model_path,
        "train_file": str(train_file),
        "collator": train.collator,
        "pad_token_choice": train.pad_token,
        "use_reentrant": train.use_reentrant,
        "resume": train.resume,
        "model_dtype": params.model.dtype if params.model.dtype in ("bfloat16", "float16") else "float32",
        # SFTConfig: what sftlab decides...
        "output_dir": str(output_dir),
        "seed": params.seed,
        "completion_only_loss": train.loss == "completion",
        "packing": train.packing is not False,
        "report_to": "none",
        "logging_first_step": True,  # the first loss is the baseline the curves are read against
        "disable_tqdm": True,  # sftlab.train prints one line per logging step instead
        "save_strategy": "steps",
        # Batches of rows of similar length: far less padding computed for nothing (bench/train.py measures it).
        "train_sampling_strategy": "group_by_length",
    }
    if train.packing:
        config["packing_strategy"] = train.packing
    # ...and what the params say (declared SFTConfig fields that are set, then any other SFTConfig key).
    config.update({k: v for k, v in train.model_dump(exclude=_OWN_KEYS).items() if v is not None})
    world_size = nproc_per_node(train) * train.nnodes
    if world_size > 1 and "fsdp" not in config:
        # The origin's ACCELERATE_USE_FSDP=1 FSDP_CPU_RAM_EFFICIENT_LOADING=1, through the trainer's arguments.
        # Full state dicts: every checkpoint loads with from_pretrained, with no conversion step.
        config["fsdp"] = True
        config["fsdp_config"] = {"cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT"}
        config["env"] = {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    return config


def torchrun_command(train: TrainParams, config_path: Path) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node(train))]
    if train.nnodes == 1 and not train.rdzv_endpoint:
        command += ["--standalone"]  # a free local port, no clash between experiments run side by side
    else:
        if not train.rdzv_endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint (host:port of node 0)")
        command += ["--nnodes", str(train.nnodes), "--node_rank", str(train.node_rank),
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", train.rdzv_endpoint]
    return command + ["-m", "sftlab.train", "--config", str(config_path)]


def write_train_rows(examples, path: Path) -> None:
    """The validated rows as chat prompt/completion pairs: the loss mask follows the completion."""
    lines = [json.dumps({"id": ex.id, "prompt": ex.prompt, "completion": ex.messages[-1:]}, ensure_ascii=False)
             for ex in examples]
    atomic_write_text(path, "\n".join(lines) + "\n")


def prepare(params: Params, examples, model_path: str) -> TrainPlan:
    """Write the rows and the flat config; decide whether there is anything left to train."""
    train_dir = params.output_dir / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    config_path = train_dir / "train_config.yaml"
    config = train_config(params, model_path, train_dir / "train.jsonl", train_dir)
    previous = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    existing = checkpoints.list_checkpoints(train_dir, complete_only=False)

    if existing and previous != config:
        if params.train.resume == "never":
            # Start over, but keep the earlier run: nothing already computed is deleted.
            aside = train_dir.with_name(f"train.previous-{time.strftime('%Y%m%d-%H%M%S')}")
            train_dir.rename(aside)
            train_dir.mkdir()
        else:
            changed = sorted(k for k in set(config) | set(previous or {}) if (previous or {}).get(k) != config.get(k))
            raise ValueError(
                f"{train_dir} holds checkpoints of a different train config (changed: {', '.join(changed)}). "
                "Resuming would mix two runs: use a new experiment name, or set train.resume: never to start "
                "over (the old folder is kept as train.previous-<time>).")
    write_train_rows(examples, train_dir / "train.jsonl")
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))

    max_steps = config.get("max_steps")
    newest = checkpoints.newest_complete(train_dir)
    skip = bool(params.train.resume == "auto" and max_steps and max_steps > 0 and newest is not None
                and checkpoints.step_of(newest) >= max_steps)
    return TrainPlan(train_dir=train_dir, config_path=config_path, log_path=train_dir / "train.log",
                     command=torchrun_command(params.train, config_path), max_steps=max_steps, skip=skip)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the notebook as they are printed
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_training(plan: TrainPlan, echo: Callable[[str], None] = print) -> None:
    """Run torchrun, streaming its output to `echo` and to train.log; raise TrainingFailed on error."""
    if plan.skip:
        echo(f"[sftlab] {plan.train_dir} is already trained to step {plan.max_steps} with this config: nothing to do")
        return
    for partial in remove_partial_checkpoints(plan.train_dir):
        echo(f"[sftlab] removed {partial.name}: a save interrupted by a kill (no trainer_state.json)")
    with open(plan.log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(plan.command)}\n")
        log.flush()
        code, tail = stream(plan.command, log, echo)
    if code != 0:
        raise TrainingFailed(f"training exited with code {code}; last {LOG_TAIL_LINES} lines of {plan.log_path}:\n"
                             + "\n".join(tail))


def stream(command: list[str], log, echo: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run `command` in its own process group; each line (or carriage-return update) goes to echo and log."""
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
                               start_new_session=True)
    pending = b""
    try:
        while chunk := os.read(process.stdout.fileno(), 65536):
            pending += chunk
            *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", errors="replace")
                if line.strip():
                    log.write(line + "\n")
                    tail.append(line)
                    echo(line)
            log.flush()
        if pending.strip():
            line = pending.decode("utf-8", errors="replace")
            log.write(line + "\n")
            tail.append(line)
            echo(line)
        return process.wait(), list(tail)
    except BaseException:
        # Interrupting the cell stops every training process, not only torchrun itself.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise


def training_curves(train_dir: Path):
    """Loss, grad_norm and learning rate per logged step, from the newest trainer state."""
    import pandas as pd

    history = checkpoints.trainer_state(train_dir).get("log_history", [])
    rows = [{k: entry.get(k) for k in ("step", "loss", "grad_norm", "learning_rate")} for entry in history
            if "loss" in entry]
    return pd.DataFrame(rows, columns=["step", "loss", "grad_norm", "learning_rate"])


def plot_curves(curves, path: Path | None = None, title: str = ""):
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, column in zip(axes, ("loss", "grad_norm", "learning_rate")):
        sns.lineplot(data=curves, x="step", y=column, marker="o", ax=ax)
        ax.set_title(column)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def remove_partial_checkpoints(train_dir: Path) -> list[Path]:
    """Folders a kill left in the middle of a save; they are never resumed from, so clear them."""
    partial = [p for p in checkpoints.list_checkpoints(train_dir, complete_only=False) if not checkpoints.is_complete(p)]
    for path in partial:
        shutil.rmtree(path)
    return partial
