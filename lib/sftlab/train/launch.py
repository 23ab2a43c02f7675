"""Launching training: the flat config, the torchrun command, its live output.

    config = launch.train_config(params, model_path, train_file, train_dir)   # the flat YAML's content
    launch.torchrun_command(params.train, config_path)                        # ... -m sftlab.train --config
    code, tail = launch.stream(command, log, echo)                            # live output into a cell + log
    launch.portable(config)                                                   # for comparing, wherever it lies

The train stage (sftlab.train.stage) uses these; `sftlab prepare-train` prints the same command for
launching by hand. Raises `ValueError` for launch settings that cannot work (multi-node without an
endpoint).

The torchrun agent dies with the process that streams it (a parent-death signal), and its workers with
the agent and with that process (sftlab.lifeline): killing the runner, or the kernel, stops the training.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import posixpath
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from sftlab import lifeline
from sftlab.models import chat_template_text
from sftlab.config import OWN_TRAIN_KEYS, Params, TrainParams
from sftlab.files import atomic_write_text

LOG_TAIL_LINES = 50
# The sftlab knobs that sftlab.train.ScriptArguments takes, under the same names.
SCRIPT_KNOBS = ("collator", "pad_token", "use_reentrant", "resume", "turns", "overlong", "keep_optimizer")
# Knobs of what the disk keeps, not of what is trained: changing them over existing checkpoints is no new run.
NOT_THE_RUN = ("keep_optimizer",)


def nproc_per_node(train: TrainParams) -> int:
    if train.nproc_per_node == "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    return train.nproc_per_node


def train_config(params: Params, model_path: str, train_file: Path, output_dir: Path) -> dict:
    """The flat YAML handed to `sftlab.train`: ScriptArguments fields + SFTConfig fields."""
    train = params.train
    config = {
        # sftlab.train.ScriptArguments: the knobs keep their params names
        "model_name_or_path": model_path,
        "train_file": str(train_file),
        **{knob: getattr(train, knob) for knob in SCRIPT_KNOBS},
        "dtype": params.model.dtype,
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
    if wants_eval(train):  # eval loss on the held-out rows (data.test, or the split of data.test_size)
        config["eval_file"] = str(output_dir / "eval.jsonl")
    if params.model.chat_template:
        config["chat_template"] = str(output_dir / "chat_template.jinja")
    # ...and what the params say (declared SFTConfig fields that are set, then any other SFTConfig key).
    config.update({k: v for k, v in train.model_dump(exclude=OWN_TRAIN_KEYS).items() if v is not None})
    world_size = nproc_per_node(train) * max(train.nnodes, len(slurm_nodes()))  # srun: every node of the job
    if world_size > 1 and "fsdp" not in config:
        # The origin's ACCELERATE_USE_FSDP=1 FSDP_CPU_RAM_EFFICIENT_LOADING=1, through the trainer's arguments.
        # Full state dicts: every checkpoint loads with from_pretrained, with no conversion step.
        config["fsdp"] = True
        config["fsdp_config"] = {"cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT"}
        config["env"] = {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    return config


def wants_eval(train: TrainParams) -> bool:
    extra = train.model_extra or {}
    return bool(extra.get("do_eval")) or str(extra.get("eval_strategy", "no")).lower() not in ("no", "none")


def portable(config: dict) -> dict:
    """`config` as it identifies a run wherever the experiment lies: every absolute path inside the experiment
    folder, the outputs folder or the folder above that (the checkout, by default) is written relative to it
    (`<experiment>/train/train.jsonl`, `<outputs>/models/...`, `<outputs>/../models/...`). The anchors come
    from the config's own `output_dir` (<outputs>/<experiment>/train), so two configs written in different
    places compare equal when they differ only by where the experiment was, or by a knob of `NOT_THE_RUN`. What
    train_config.yaml itself holds stays absolute: the file is launched as it is."""
    config = {key: value for key, value in config.items() if key not in NOT_THE_RUN}
    output_dir = config.get("output_dir")
    if not isinstance(output_dir, str) or not posixpath.isabs(output_dir):
        return config
    experiment = posixpath.dirname(posixpath.normpath(output_dir))
    outputs = posixpath.dirname(experiment)
    anchors = [(experiment, "<experiment>"), (outputs, "<outputs>"), (posixpath.dirname(outputs), "<outputs>/..")]

    def rewrite(value):
        if isinstance(value, str) and posixpath.isabs(value):
            path = posixpath.normpath(value)
            for anchor, name in anchors:
                if anchor != "/" and (path == anchor or path.startswith(anchor + "/")):
                    return name + path[len(anchor):]
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return {key: rewrite(value) for key, value in config.items()}


RDZV_PORT_BASE = 29500  # the c10d rendezvous of a Slurm job listens on this + job id % 10000 (two jobs on a node differ)


def slurm_nodes(environ: dict | None = None) -> list[str]:
    """The hosts of the Slurm allocation this process runs in (SLURM_JOB_NODELIST, as submitit parses it), or []
    outside one."""
    environ = os.environ if environ is None else environ
    if not environ.get("SLURM_JOB_ID") or not environ.get("SLURM_JOB_NODELIST"):
        return []
    from submitit.slurm.slurm import _parse_node_list

    return _parse_node_list(environ["SLURM_JOB_NODELIST"])


def torchrun_command(train: TrainParams, config_path: Path, environ: dict | None = None) -> list[str]:
    """The launch of the training: torchrun on this node; inside a Slurm job of several nodes, `srun` starting
    one torchrun agent per node, which meet in a c10d rendezvous on the job's first node."""
    environ = os.environ if environ is None else environ
    nodes = slurm_nodes(environ)
    if len(nodes) > 1:
        return srun_torchrun_command(train, config_path, nodes, environ)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node(train))]
    if train.nnodes == 1 and not train.rdzv_endpoint:
        command += ["--standalone"]  # a free local port, no clash between experiments run side by side
    else:
        if not train.rdzv_endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint (host:port of node 0)")
        command += ["--nnodes", str(train.nnodes), "--node_rank", str(train.node_rank),
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", train.rdzv_endpoint]
    return command + ["-m", "sftlab.train", "--config", str(config_path)]


def write_inputs(params: Params, train_examples, test_examples, train_dir: Path) -> None:
    """What the launch reads besides its config: the training rows, the eval rows when the trainer evaluates,
    the chat template when the params give one."""
    write_train_rows(train_examples, train_dir / "train.jsonl")
    if wants_eval(params.train):
        write_train_rows(test_examples, train_dir / "eval.jsonl")
    if params.model.chat_template:
        atomic_write_text(train_dir / "chat_template.jinja", chat_template_text(params.model.chat_template))


def srun_torchrun_command(train: TrainParams, config_path: Path, nodes: list[str], environ: dict) -> list[str]:
    """srun: one task per node of the allocation, each a torchrun agent with as many workers as the node has
    GPUs (SLURM_GPUS_ON_NODE, else train.nproc_per_node); the agents meet at a c10d rendezvous on the first node
    (torchrun then numbers the nodes itself). --kill-on-bad-exit: one node failing stops every node."""
    if train.nnodes not in (1, len(nodes)) or train.rdzv_endpoint:
        raise ValueError(f"train.nnodes {train.nnodes} / train.rdzv_endpoint {train.rdzv_endpoint} are set, but this Slurm "
                         f"job has {len(nodes)} nodes and sftlab sets the rendezvous itself: leave them unset "
                         f"(the executor's train.nodes decides)")
    gpus = environ.get("SLURM_GPUS_ON_NODE")
    per_node = int(gpus) if gpus and gpus.isdigit() and int(gpus) > 0 else nproc_per_node(train)
    port = RDZV_PORT_BASE + int(environ["SLURM_JOB_ID"]) % 10000
    return ["srun", "--nodes", str(len(nodes)), "--ntasks", str(len(nodes)), "--ntasks-per-node", "1",
            "--kill-on-bad-exit=1", "--unbuffered",
            sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(nodes)),
            "--nproc_per_node", str(per_node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{nodes[0]}:{port}",
            "--rdzv_id", f"sftlab-{environ['SLURM_JOB_ID']}", "-m", "sftlab.train", "--config", str(config_path)]


def write_train_rows(examples, path: Path) -> None:
    """The validated rows as whole conversations; which turns carry loss is decided when they are tokenized
    (sftlab.train.supervision): `untrained` lists the assistant turns a row marks with weight 0."""
    lines = []
    for ex in examples:
        row = {"id": ex.id, "messages": ex.messages, "untrained": list(getattr(ex, "untrained", ()))}
        if ex.meta.get("tools"):
            row["tools"] = ex.meta["tools"]
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the notebook as they are printed
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(lifeline.launcher_env())  # the workers watch this process: they end when it does
    return env


def stream(command: list[str], log, echo: Callable[[str], None],
           keep_fds: tuple[int, ...] = ()) -> tuple[int, list[str]]:
    """Run `command` in its own process group; each line (or carriage-return update) goes to echo and log.

    The child gets SIGTERM when this process dies, however it dies (Linux; torchrun then stops its workers),
    and inherits `keep_fds` (the train lock). Call it from a thread that lives until it returns (the
    parent-death signal follows the thread that started the child)."""
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
                               start_new_session=True, pass_fds=keep_fds,
                               preexec_fn=lifeline.parent_death_signal(signal.SIGTERM))
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
