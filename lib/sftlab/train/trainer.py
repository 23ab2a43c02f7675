"""The training script: one flat YAML -> (ScriptArguments, SFTArguments) -> TRL's SFTTrainer.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m sftlab.train --config train_config.yaml
    python -m sftlab.train --config train_config.yaml                       # one process

The train stage writes `outputs/<exp>/train/train_config.yaml` (see `sftlab.train.launch`) and the rows
to train on (`train.jsonl`, prompt/completion in chat form), but any flat YAML whose keys are fields
of `ScriptArguments` or `trl.SFTConfig` works: `TrlParser` maps each key onto its dataclass.

Device defaults, applied only where the YAML is silent: on CPU, fp32 (`bf16: false`) and the gloo
backend; on a GPU with bf16 support, bf16 mixed precision.

Writes `checkpoint-<step>/` folders (model + tokenizer + generation config, loadable with
`from_pretrained`; the last step is always saved), `trainer_state.json` and `train_summary.json` into
`output_dir`. A resumed launch continues the token counters (`num_tokens` of the log history, the
summary's counts) from the checkpoint's, so they read as those of one uninterrupted run.
Raises ValueError for unsupported knob combinations (see `build_trainer`).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from trl import SFTConfig

from sftlab import jsonl, models, progress
from sftlab.checkpoints import check_resumable, newest_complete, prune_resume_state, step_of
from sftlab.knobs import Collator, DType, Overlong, Turns, collator_conflict
from sftlab.paths import TRAIN_SUMMARY_FILE
from sftlab.train import supervision

ADDED_PAD_TOKEN = "<|pad|>"


@dataclass
class ScriptArguments:
    """sftlab's own arguments, named as in the params file; every other key of the YAML is SFTConfig's."""

    model_name_or_path: str = field(metadata={"help": "base model: a local folder or a hub id"})
    train_file: str = field(metadata={"help": "JSONL of {id, messages, untrained, tools} conversations"})
    collator: Collator = field(default="trl", metadata={"help": "trl | legacy_pad_masked (pad-id labels set to -100)"})
    pad_token: str = field(default="eos", metadata={"help": "eos | add | a token of the vocabulary"})
    use_reentrant: bool = field(default=False, metadata={"help": "gradient_checkpointing_kwargs use_reentrant"})
    resume: str = field(default="auto", metadata={"help": "auto (newest complete checkpoint) | never | a path"})
    dtype: DType = field(default="auto", metadata={"help": "model.dtype; weights dtype by models.weights_dtype"})
    turns: Turns = field(default="all", metadata={"help": "all | last: which assistant turns carry loss"})
    overlong: Overlong = field(default="error", metadata={"help": "error | drop | keep_start | keep_end"})
    chat_template: str | None = field(default=None, metadata={"help": "a Jinja chat template file to use"})
    eval_file: str | None = field(default=None, metadata={"help": "conversations for eval loss (data.test)"})
    keep_optimizer: str = field(default="newest",
                                metadata={"help": "newest | all | until_done: checkpoints keeping resume state"})


@dataclass
class SFTArguments(SFTConfig):
    """SFTConfig without its deprecated `pad_token` field: the pad token is ScriptArguments.pad_token
    (`eos | add | <token>`), applied to the tokenizer before the trainer is built."""

    pad_token: str | None = field(default=None, init=False)


# --------------------------------------------------------------------------------------------
# Pieces shared with the label audit (sftlab.audit), so that it sees exactly what training sees
# --------------------------------------------------------------------------------------------


def device_defaults(config: dict) -> list[str]:
    """Command-line args for the device-dependent settings the config leaves unset."""
    args = []
    cuda = torch.cuda.is_available()
    if "bf16" not in config:
        # SFTConfig turns bf16 on by default; on CPU that is slow and not what the origin trained with.
        args += ["--bf16", str(cuda and torch.cuda.is_bf16_supported())]
    if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several CPU processes: accelerate treats them as one distributed job only with use_cpu.
        if "use_cpu" not in config:
            args += ["--use_cpu", "True"]
        if "ddp_backend" not in config:
            args += ["--ddp_backend", "gloo"]  # NCCL needs GPUs
    return args


def parse_args(argv: list[str] | None = None):
    import yaml
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    config = {}
    if "--config" in argv:
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text(encoding="utf-8")) or {}
    parser = TrlParser((ScriptArguments, SFTArguments))
    script_args, training_args = parser.parse_args_and_config(argv + device_defaults(config))
    if training_args.gradient_checkpointing:
        training_args.gradient_checkpointing_kwargs = {
            **(training_args.gradient_checkpointing_kwargs or {}), "use_reentrant": script_args.use_reentrant}
    return script_args, training_args


def load_tokenizer_and_model(script_args: ScriptArguments, training_args, weights: bool = True):
    """`weights=False` builds the model on the meta device: enough to prepare data, nothing to train."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    if script_args.chat_template:  # before the stop tokens are derived from it
        tokenizer.chat_template = Path(script_args.chat_template).read_text(encoding="utf-8")
    dtype = getattr(torch, models.weights_dtype(script_args.dtype, training=True))
    if weights:
        model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path, dtype=dtype)
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(script_args.model_name_or_path),
                                                     dtype=dtype)
    set_pad_token(tokenizer, model, script_args.pad_token)
    # Generation stops on the chat template's end-of-turn token (and on EOS), in every checkpoint.
    model.generation_config.eos_token_id = models.stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if training_args.gradient_checkpointing:
        model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    return tokenizer, model


def set_pad_token(tokenizer, model, choice: str) -> None:
    """`eos`: pad = EOS (the origin's set-up); `add`: a new dedicated pad token; else a vocabulary token."""
    if choice == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    elif choice == "add":
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
            # Rounded up so the embedding matrix keeps an efficient shape. The new rows start at the mean
            # embedding (not noise) so the pad token never becomes a likely prediction; a meta-device
            # model (the label audit's) has no values to average.
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64,
                                          mean_resizing=model.device.type != "meta")
    else:
        if choice not in tokenizer.get_vocab():
            raise ValueError(f"pad_token: {choice!r} is not a token of the vocabulary (use eos, add, or a token)")
        tokenizer.pad_token = choice
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def legacy_pad_masked_collator(pad_token_id: int, pad_to_multiple_of: int | None = None):
    """The old collator's behaviour, kept to reproduce its failure: every pad-id token loses its label.

    When pad == EOS this also masks every EOS, so the model is never taught to stop.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class LegacyPadMaskedCollator(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)
            batch["labels"][batch["input_ids"] == self.pad_token_id] = -100
            return batch

    return LegacyPadMaskedCollator(pad_token_id=pad_token_id, pad_to_multiple_of=pad_to_multiple_of)


def build_trainer(script_args: ScriptArguments, training_args, tokenizer, model, dataset, callbacks=(),
                  trainer_class=None, eval_dataset=None):
    from trl import SFTTrainer

    trainer_class = trainer_class or SFTTrainer

    # The schema refuses these combinations already; a hand-written config meets the same rule here.
    padding_free = training_args.padding_free or (
        training_args.packing and training_args.packing_strategy in ("bfd", "bfd_split"))
    conflict = collator_conflict(script_args.collator, padding_free)
    if conflict:
        raise ValueError(conflict)
    collator = None
    if script_args.collator == "legacy_pad_masked":
        collator = legacy_pad_masked_collator(tokenizer.pad_token_id, training_args.pad_to_multiple_of)
    return trainer_class(model=model, args=training_args, train_dataset=dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, data_collator=collator, callbacks=list(callbacks))


def read_conversations(path: str) -> list[dict]:
    """The rows the train stage wrote (sftlab.train.launch.write_train_rows)."""
    return jsonl.read_rows(Path(path))


def load_rows(script_args: ScriptArguments, training_args, tokenizer, path: str | None = None):
    """The rows to train (or `path`'s, e.g. the eval rows) as `input_ids` + `completion_mask`, cut to
    max_length by the overlong policy (sftlab.train.supervision), and the report over all of them."""
    from datasets import Dataset

    rows, report = supervision.tokenize(
        read_conversations(path or script_args.train_file), tokenizer, turns=script_args.turns,
        loss="all" if training_args.completion_only_loss is False else "completion",
        max_length=training_args.max_length, overlong=script_args.overlong)
    dataset = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                                 "completion_mask": [r["completion_mask"] for r in rows]})
    return dataset, report


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class ProgressPrinter(TrainerCallback):
    """One line per logging step (rank 0): readable live in a notebook cell and in train.log. Under
    `sftlab run` (sftlab.progress text mode) also a short step line when `EVERY_S` seconds passed without
    one, so the terminal never goes quiet between two logging steps."""

    def __init__(self):
        self.started = self.last_line = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        numbers = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
        self._print(state, numbers + " ")

    def on_step_end(self, args, state, control, **kwargs):
        if (state.is_world_process_zero and progress.text_mode()
                and time.time() - self.last_line >= progress.EVERY_S):
            self._print(state, "")

    def _print(self, state, numbers: str) -> None:
        elapsed = time.time() - self.started
        done = state.global_step / max(state.max_steps, 1)
        eta = elapsed / done * (1 - done) if done > 0 else float("nan")
        print(f"[sftlab] step {state.global_step}/{state.max_steps} ({done:.0%}) {numbers}"
              f"elapsed={elapsed:.0f}s eta={eta:.0f}s", flush=True)
        self.last_line = time.time()


class SaveLastStep(TrainerCallback):
    """The last step is always a checkpoint, whatever save_steps is, so the final model is evaluated."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = True
        return control


class PruneResumeState(TrainerCallback):
    """`keep_optimizer: newest` (and `until_done`): once a checkpoint is complete (the trainer calls on_save after
    writing its trainer_state.json), the older checkpoints lose their optimizer, scheduler and RNG state and keep
    weights, tokenizer, configs and trainer state: all that infer and score read (sftlab.checkpoints).
    `until_done`: when the run has reached its last step and saved it, the last checkpoint loses it too. Run by
    the process that saved them: rank 0, or each node's first process with save_on_each_node."""

    def __init__(self, keep_optimizer: str):
        if keep_optimizer not in ("newest", "all", "until_done"):
            raise ValueError(f"keep_optimizer: {keep_optimizer!r} is not one of newest, all, until_done")
        self.keep_optimizer = keep_optimizer
        self.said = False

    @staticmethod
    def _saver(args, state) -> bool:
        return state.is_local_process_zero if args.save_on_each_node else state.is_world_process_zero

    def on_save(self, args, state, control, **kwargs):
        if self.keep_optimizer in ("newest", "until_done") and self._saver(args, state):
            pruned = prune_resume_state(Path(args.output_dir))
            if pruned and not self.said:  # once a launch: the rule, not a line per save
                print(f"[sftlab] {pruned[-1].name} and older checkpoints keep weights only; the optimizer state "
                      f"is in the newest one (train.keep_optimizer: {self.keep_optimizer})", flush=True)
                self.said = True

    def on_train_end(self, args, state, control, **kwargs):
        if self.keep_optimizer != "until_done" or not self._saver(args, state):
            return
        newest = newest_complete(Path(args.output_dir))
        if newest is None or state.global_step < state.max_steps or step_of(newest) != state.global_step:
            return  # stopped early (or the last step was not saved): the newest checkpoint may still be resumed
        removed = prune_resume_state(Path(args.output_dir), including_newest=True)
        if removed:
            print(f"[sftlab] the run reached step {state.global_step}: {newest.name} keeps weights only too, no "
                  "optimizer state (train.keep_optimizer: until_done); it cannot be resumed or extended", flush=True)


def resume_from(script_args: ScriptArguments, output_dir: str) -> str | None:
    if script_args.resume == "never":
        return None
    if script_args.resume == "auto":
        newest = newest_complete(Path(output_dir))
        if newest:
            check_resumable(newest)
        return str(newest) if newest else None
    if not Path(script_args.resume).is_dir():
        raise ValueError(f"resume: {script_args.resume} is not a checkpoint folder")
    check_resumable(Path(script_args.resume))
    return script_args.resume


def main(script_args: ScriptArguments, training_args) -> None:
    from transformers import set_seed

    set_seed(training_args.seed)

    # Load the model and tokenizer
    tokenizer, model = load_tokenizer_and_model(script_args, training_args)

    # Load the dataset: every row tokenized and masked by sftlab, cut to max_length by the overlong policy
    dataset, report = load_rows(script_args, training_args, tokenizer)
    eval_dataset = None
    if script_args.eval_file:
        eval_dataset, eval_report = load_rows(script_args, training_args, tokenizer, script_args.eval_file)
        if training_args.process_index == 0:
            print(f"[sftlab] eval rows: {eval_report.summary()}", flush=True)
    if training_args.process_index == 0:
        print(f"[sftlab] training rows: {report.summary()}", flush=True)

    # Initialize the trainer
    trainer = build_trainer(script_args, training_args, tokenizer, model, dataset,
                            callbacks=[ProgressPrinter(), SaveLastStep()], eval_dataset=eval_dataset)
    if len(trainer.train_dataset) != report.trained and not training_args.packing:
        raise RuntimeError(f"the trainer prepared {len(trainer.train_dataset)} rows of the {report.trained} "
                           "sftlab handed it: it dropped rows on its own")

    trainer.remove_callback(PrinterCallback)  # ProgressPrinter says the same in one line
    trainer.add_callback(PruneResumeState(script_args.keep_optimizer))
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)

    # Train, resuming after a crash or a kill: the token counters go on from the checkpoint's.
    checkpoint = resume_from(script_args, training_args.output_dir)
    before = token_totals_at(checkpoint) if checkpoint else TokenTotals.NONE
    trainer._total_train_tokens = before["num_tokens"]  # TRL's num_tokens; it starts at 0 in every launch
    trainer.add_callback(TokenTotals(trainer, counter, before))
    if checkpoint and trainer.is_world_process_zero():
        print(f"[sftlab] resuming from {checkpoint}", flush=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_state()
    if trainer.is_world_process_zero():
        summary = write_summary(trainer, Path(training_args.output_dir), before, counter, report)
        print(f"[sftlab] done: {json.dumps(summary)}", flush=True)
    end_process_group()


def end_process_group() -> None:
    """Destroys the process group before the interpreter shuts down: left alive, gloo's worker threads may
    still hold tensors while Python is torn down, and a finished run aborts (SIGABRT, "terminate called
    without an active exception") after writing everything, failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank has finished with the group (rank 0 wrote the summary)
        dist.destroy_process_group()


def trainer_state_at(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))


def _logged(state: dict, key: str):
    """The last value of `key` in a trainer state's log history (None if never logged)."""
    values = [entry[key] for entry in state.get("log_history", []) if key in entry]
    return values[-1] if values else None


class TokenCounter:
    """Wraps the collator to count, on this rank, the tokens it hands to the model: supervised ones
    (label != -100) and all positions including padding, the waste that length grouping and packing cut."""

    def __init__(self, collator):
        self.collator = collator
        self.cumulative: list[tuple[int, int]] = []  # (supervised, positions) up to each collated batch

    def __call__(self, examples):
        batch = self.collator(examples)
        supervised, positions = self.cumulative[-1] if self.cumulative else (0, 0)
        self.cumulative.append((supervised + int((batch["labels"] != -100).sum()),
                                positions + batch["input_ids"].numel()))
        return batch

    def totals(self, batches_trained: int) -> tuple[int, int]:
        """Sums over the batches actually trained on: the data loader collates one batch ahead."""
        n = min(batches_trained, len(self.cumulative))
        return self.cumulative[n - 1] if n > 0 else (0, 0)


class TokenTotals(TrainerCallback):
    """The run's token counters at every step, kept in the trainer state that each checkpoint saves
    (`stateful_callbacks["sftlab_token_totals"]` of its trainer_state.json), so a resumed launch goes on
    from the exact counts of the step it resumes from, whatever `logging_steps` is:

        step         the optimizer step these counts are at
        num_tokens   TRL's count: input tokens, padding excluded, all ranks
        supervised   tokens that carry loss (rank 0's count times the world size)
        positions    all positions including padding (the same way)

    A checkpoint written before these counters existed gives num_tokens from its last logged value, and
    no supervised or positions counts (None)."""

    KEY = "sftlab_token_totals"
    NONE = {"step": 0, "num_tokens": 0, "supervised": 0, "positions": 0}

    def __init__(self, trainer, counter: TokenCounter, before: dict):
        self.trainer, self.counter, self.before = trainer, counter, before

    def totals(self, global_step: int) -> dict:
        args = self.trainer.args
        steps = global_step - self.before["step"]
        batches = steps * args.gradient_accumulation_steps
        supervised, positions = (args.world_size * n for n in self.counter.totals(batches))
        return {"step": global_step, "num_tokens": int(self.trainer._total_train_tokens),
                "supervised": None if self.before["supervised"] is None else self.before["supervised"] + supervised,
                "positions": None if self.before["positions"] is None else self.before["positions"] + positions}

    def on_step_end(self, args, state, control, **kwargs):
        # Before the step's log and save: a checkpoint of this step holds the counts of this step.
        state.stateful_callbacks[self.KEY] = self.totals(state.global_step)


def token_totals_at(checkpoint: str) -> dict:
    state = trainer_state_at(checkpoint)
    saved = (state.get("stateful_callbacks") or {}).get(TokenTotals.KEY)
    if saved:
        return saved
    return {"step": state.get("global_step", 0), "num_tokens": int(_logged(state, "num_tokens") or 0),
            "supervised": None, "positions": None}


def write_summary(trainer, output_dir: Path, before: dict, counter: TokenCounter,
                  report: supervision.Report | None = None) -> dict:
    """train_summary.json (rank 0): the run's token counts from its first step (a resumed run included),
    this launch's wall time and throughput, and its peak memory."""
    state = {"log_history": trainer.state.log_history}
    runtime = _logged(state, "train_runtime") or float("nan")
    totals = TokenTotals(trainer, counter, before).totals(trainer.state.global_step)
    launch_tokens = totals["num_tokens"] - before["num_tokens"]
    supervised, positions = (trainer.args.world_size * n for n in counter.totals(
        (trainer.state.global_step - before["step"]) * trainer.args.gradient_accumulation_steps))
    if totals["positions"] is not None:  # the whole run's padding, as an uninterrupted run would count it
        padding = 1 - totals["num_tokens"] / totals["positions"] if totals["positions"] else None
    else:  # resumed from a checkpoint without counters: this launch's
        padding = 1 - launch_tokens / positions if positions else None
    summary = {
        "global_step": trainer.state.global_step,
        # The rows the trainer saw (every row sftlab counted as trained; see the label audit) and the epochs
        # over them that the steps make.
        "rows_trained": report.trained if report else None,
        "rows_read": report.rows if report else None,
        "epochs": round(trainer.state.epoch, 4) if trainer.state.epoch is not None else None,
        "resumed_from_step": before["step"] or None,
        "train_runtime_s": round(runtime, 2),  # this launch
        "tokens": totals["num_tokens"],  # input tokens of the whole run, padding excluded, as counted by TRL
        "tokens_per_s": round(launch_tokens / runtime, 1) if runtime > 0 else None,  # this launch
        "supervised_tokens": totals["supervised"],  # of the whole run (None: unknown before the resume)
        "supervised_tokens_per_s": round(supervised / runtime, 1) if runtime > 0 else None,
        "padding_fraction": round(padding, 4) if padding is not None else None,
        "first_loss": next((e["loss"] for e in trainer.state.log_history if "loss" in e), None),
        "last_loss": _logged(state, "loss"),
        "world_size": trainer.args.world_size,
        # ru_maxrss is in KiB on Linux: the peak resident memory of this (rank-0) process.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }
    (output_dir / TRAIN_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
