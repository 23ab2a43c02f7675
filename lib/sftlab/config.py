"""Params files: one experiment = one YAML file, validated by the schema below.

A params file is also a papermill parameter file (`papermill nb.ipynb out.ipynb -f params/demo.yaml`),
so its top-level keys are the notebooks' parameters: `experiment`, `seed`, `base`, `model`, `data`,
`train`, `infer`, `judge`, `score`, `executor`.

Loading (`load_params`):
    1. read the file with a safe YAML loader;
    2. if it names `base: other.yaml` (relative to itself), load that first, recursively, and deep-merge
       this file over it (mappings merge key by key; lists and scalars replace);
    3. apply `--set dotted.key=value` overrides (values parsed as YAML: `5` is an int, `true` a bool);
    4. validate with pydantic, then what the schema cannot see (sftlab.checks): the trainer's pass-through
       values as the training process will parse them, whether the model exists or can be fetched, the pad
       token against the model's vocabulary, the rubric files.

The allowed values of the train knobs are declared in sftlab.knobs (the training script uses them too);
files are written through sftlab.files.

`experiment` is never inherited from a base: it defaults to the loaded file's own name. Every experiment
name (`experiment`, `score.experiments`, ...) must be a folder directly under outputs/.

Raises `ParamsError` naming the file (or `--set`) that set the offending key: an unknown key comes with
the closest valid key, a wrong type with the field and the expected type.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sftlab import checks, paths, trainer_fields
from sftlab.files import atomic_write_text
from sftlab.knobs import Collator, DType, Loss, Overlong, Packing, Resume, Turns, collator_conflict
from sftlab.errors import SftlabError

TOP_LEVEL_KEYS = ("experiment", "seed", "base", "model", "data", "train", "infer", "judge", "score", "executor")


class ParamsError(SftlabError, ValueError):
    """A params file (or an override) that cannot be used; the message says where and why."""


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# An experiment is a folder directly under outputs/: whatever names one (`experiment`, `score.experiments`,
# the experiment part of `score.baseline`, `score.observations`' keys) must not reach outside it.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def experiment_name_problem(name: str) -> str | None:
    if EXPERIMENT_NAME.fullmatch(name):
        return None
    return (f"{name!r} is not an experiment name: experiments are folders directly under outputs/, named with "
            "letters, digits, '.', '_' and '-', not starting with '.', '_' or '-'")


def _experiment_name(name: str) -> str:
    problem = experiment_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


ExperimentName = Annotated[str, AfterValidator(_experiment_name)]



class ModelParams(_Section):
    name_or_path: str = "builtin:smollm2-135m-instruct"  # builtin:NAME, a hub id, or a local folder
    revision: str | None = None  # a hub revision (branch, tag or commit) of name_or_path
    dtype: DType = "auto"  # auto: bf16 on GPU, fp32 on CPU for inference; fp32 weights for training
    trust_remote_code: bool = False  # run the model repository's own code (only for models you trust)
    chat_template: str | None = None  # a Jinja template file, or the text itself: replaces the tokenizer's own


class ColumnMap(_Section):
    """Which columns of the dataset hold what. A row is `messages`, ShareGPT `conversations`, or
    question/answer (+ input); TRL's prompt/completion and Alpaca's instruction/input/output are recognised
    by those names (docs/data.md)."""

    id: str = "id"  # a unique id per row (without one: made up from the file and row number)
    messages: str = "messages"  # a list of {role, content} turns
    conversations: str = "conversations"  # ShareGPT: [{from, value}, ...], used when a row has no messages
    question: str = "question"  # with `answer`: one user turn and one assistant turn
    answer: str = "answer"  # the reference answer the model is trained on and judged against
    input: str = "input"  # when not empty: appended to the question after a blank line (Alpaca's input)
    system: str = "system"  # an optional system message per row


class MixtureSource(_Section):
    """One source of a training mixture (the alignment-handbook's `dataset_mixture` entries)."""

    source: str  # a file, a save_to_disk folder, or a hub dataset id
    split: str | None = None  # None: data.train_split
    weight: float = Field(1.0, gt=0, le=1)  # the fraction of this source's rows taken (seeded); 1.0: all


class DataParams(_Section):
    # A .jsonl/.json (also .gz)/.csv/.parquet file, a save_to_disk folder, a hub dataset id, or a mixture:
    # a list of {source, split, weight} (docs/data.md).
    train: str | list[MixtureSource] = "data/demo/train.jsonl"
    train_split: str = "train"  # split name when `train` is a hub dataset or a DatasetDict folder
    test: str | None = "data/demo/test.jsonl"  # None: split `test_size` off the training rows
    test_split: str = "test"  # split name when `test` is a hub dataset
    test_size: float = Field(0.1, gt=0)  # fraction (<1) or number of rows (>=1) for the seeded split
    columns: ColumnMap = ColumnMap()
    system_prompt: str | None = None  # added to rows that have no system message of their own
    # Test rows whose prompt is also a training prompt: error (list them), or drop them from train (counted).
    overlap: Literal["error", "drop"] = "error"

    @field_validator("train", mode="before")
    @classmethod
    def _mixture(cls, value: Any) -> Any:
        """A mixture's sources, checked here so that each problem is one line naming the source's position
        (left to the union, a list would also be reported as "expected a string")."""
        shape = "a list of {source, split, weight}"
        if isinstance(value, dict):
            raise ValueError(f"a mapping; a mixture is {shape} (the alignment-handbook's dataset_mixture "
                             "{datasets: [{id, split, weight}]} becomes [{source: <id>, split, weight}, ...])")
        if not isinstance(value, list):
            return value
        if not value:
            raise ValueError(f"an empty mixture: {shape}, or one source")
        sources, problems = [], []
        for i, item in enumerate(value):
            if isinstance(item, MixtureSource):
                sources.append(item)
                continue
            if not isinstance(item, dict):
                problems.append(f"[{i}]: expected a mapping {{source, split, weight}}, got {item!r}")
                continue
            try:
                sources.append(MixtureSource.model_validate(item))
            except ValidationError as e:
                for err in e.errors():
                    key = ".".join(map(str, err["loc"]))
                    if err["type"] == "extra_forbidden":
                        hint = " (the dataset is `source`)" if key in ("id", "path", "name", "dataset") else ""
                        problems.append(f"[{i}].{key}: unknown key{hint}; a source has source, split, weight")
                    else:
                        problems.append(f"[{i}].{key}: {err['msg']}, got {err.get('input')!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return sources


class TrainKnobs(BaseModel):
    """sftlab's own train knobs: not fields of trl.SFTConfig. `collator`, `pad_token`, `use_reentrant` and
    `resume` reach `sftlab.train.ScriptArguments` under the same names; `loss` and `packing` become
    SFTConfig's `completion_only_loss`, `packing` and `packing_strategy`; the rest steer the launch and
    the label audit."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    # What the origin's collator study varies.
    loss: Loss = "completion"  # completion: loss on the answers only; all: on the whole conversation
    turns: Turns = "all"  # every assistant turn carries loss (weight: 0 turns excepted); last: only the final one
    overlong: Overlong = "error"  # rows longer than max_length: refuse, drop, or cut (keep_start / keep_end)
    packing: Packing = False  # TRL packing of several rows per sequence; bfd trains padding-free
    collator: Collator = "trl"  # legacy_pad_masked: the old collator that masks every pad id (reproduces its bug)
    pad_token: str = "eos"  # eos | add | a token of the model's vocabulary
    allow_unsupervised_eos: bool = False  # True only to reproduce the never-stops failure on purpose
    audit_rows: int = Field(8, ge=1)  # rows tokenized by the label audit before launch
    use_reentrant: bool = False  # gradient_checkpointing_kwargs={"use_reentrant": ...}

    # Launch.
    nproc_per_node: int | Literal["auto"] = "auto"  # auto: number of GPUs, else 1
    nnodes: int = 1  # machines taking part in one training run
    node_rank: int = 0  # this machine's place among them (0 holds the rendezvous)
    rdzv_endpoint: str | None = None  # host:port of node 0 for multi-node runs
    resume: Resume = "auto"  # auto: the newest complete checkpoint; never: start over; or a checkpoint path
    # Which checkpoints keep the optimizer/scheduler state: the newest complete one; every one; or the newest
    # while the run goes on and none once it has reached its last step (a finished run keeps weights only).
    keep_optimizer: Literal["newest", "all", "until_done"] = "newest"


class TrainParams(TrainKnobs):
    """The train section is handed flat to `sftlab.train` and parsed there by TrlParser.

    Our own knobs are `TrainKnobs`; any other key must be a field of `trl.SFTConfig` (checked by name
    here, by type in TrlParser). Keys left at None are not passed on.
    """

    # The SFTConfig fields every experiment touches (None = the trainer's default).
    max_steps: int | None = None
    num_train_epochs: float | None = None
    learning_rate: float | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    max_length: int | None = None
    logging_steps: float | None = None
    save_steps: float | None = None
    gradient_checkpointing: bool | None = None
    report_to: str | list[str] | None = None

    @model_validator(mode="after")
    def _collator_fits_packing(self) -> "TrainParams":
        padding_free = self.packing == "bfd" or bool((self.model_extra or {}).get("padding_free"))
        conflict = collator_conflict(self.collator, padding_free)
        if conflict:
            raise ValueError(conflict)
        return self


OWN_TRAIN_KEYS = frozenset(TrainKnobs.model_fields)  # not SFTConfig fields: never passed to it as such

_NO_HUB = ("sftlab does not push to the Hub (the label audit and every launch stay offline); upload a "
           "checkpoint of outputs/<experiment>/train/ yourself, e.g. `hf upload REPO outputs/EXP/train/checkpoint-N`")
# trl.SFTConfig fields that sftlab decides itself: a value in the train section would be half-applied (or
# silently overridden), so it is refused with the key that does the job.
OWNED_TRAINER_KEYS = {
    "output_dir": "checkpoints always go to outputs/<experiment>/train/: choose the folder with `experiment:`",
    "seed": "use the top-level `seed:`; it seeds the data split, the trainer and sampling alike",
    "completion_only_loss": "use train.loss: completion (answers only) or all (every token)",
    "assistant_only_loss": "use train.turns: all (every assistant turn) or last; sftlab masks turns itself, "
                           "no {% generation %} markers needed",
    "packing_strategy": "use train.packing: bfd or wrapped",
    "truncation_mode": "use train.overlong: keep_start or keep_end (or drop, or error: the default)",
    "chat_template_path": "use model.chat_template (a template file or the template text); it is applied "
                          "before the stop tokens are derived",
    "gradient_checkpointing_kwargs": "its one setting is train.use_reentrant (true/false)",
    "model_init_kwargs": "sftlab loads the model itself: use model.dtype, model.revision, model.trust_remote_code",
    "dataset_text_field": "sftlab renders every row with the chat template itself (see the data section)",
    "dataset_kwargs": "sftlab prepares the rows itself (see the data section)",
    "eval_dataset_name": "the eval rows are data.test (or the split of data.test_size)",
    "push_to_hub": _NO_HUB,
    **{key: _NO_HUB for key in ("hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
                                "hub_always_push", "hub_revision")},
}
# Keys of TRL/alignment-handbook recipes and scripts that are not (or no longer) trainer fields, with the
# params key that means the same thing (`sftlab import-recipe` maps them for you).
FOREIGN_KEYS = {
    "model_name_or_path": "model.name_or_path",
    "model_revision": "model.revision",
    "torch_dtype": "model.dtype",
    "dtype": "model.dtype",
    "trust_remote_code": "model.trust_remote_code",
    "attn_implementation": "nothing yet: sftlab loads the model with transformers' default attention; remove it",
    "use_flash_attention_2": "nothing yet: sftlab loads the model with transformers' default attention; remove it",
    "chat_template": "model.chat_template",
    "dataset_name": "data.train (a file, a saved dataset folder or a hub id)",
    "dataset_mixture": "data.train as a list of {source, split, weight}",
    "dataset_splits": "data.train_split and data.test_split",
    "dataset_config": "data.train (one source per entry)",
    "dataset_configs": "data.train (one source per entry)",
    "dataset_train_split": "data.train_split",
    "dataset_test_split": "data.test_split",
    "preprocessing_num_workers": "train.dataset_num_proc",
    "max_seq_length": "train.max_length",
    "warmup_ratio": "train.warmup_steps (a value below 1 is a fraction of the steps)",
    "evaluation_strategy": "train.eval_strategy",
    "overwrite_output_dir": "nothing: a changed config over existing checkpoints is refused; train.resume: never "
                            "starts over (the old run is kept aside)",
    "hub_model_revision": "nothing: " + _NO_HUB,
}


def train_key_problems(train: Any) -> list[tuple[str, str]]:
    """(key, message) for every key of a raw train section that cannot be used as given: keys sftlab owns,
    keys of recipes with their params name, and unknown keys — all at once, not one per round."""
    if not isinstance(train, dict):
        return []
    valid = sft_config_fields()
    own = set(TrainParams.model_fields)
    problems = []
    for key in map(str, train):
        if key in own:
            continue
        if key in OWNED_TRAINER_KEYS:
            problems.append((key, f"train.{key}: set by sftlab, not here: {OWNED_TRAINER_KEYS[key]}"))
        elif key not in valid:
            problems.append((key, _unknown_key_message(key, own | valid, prefix="train.")))
    return problems


class InferParams(_Section):
    # hf: transformers with sftlab's own batched decode loop (the default; nothing else to install);
    # vllm: vLLM in its own environment (`make setup-vllm`), one engine for every checkpoint (sftlab.infer.vllm_engine)
    engine: Literal["hf", "vllm"] = "hf"
    checkpoints: Literal["all", "last"] | list[str] = "all"  # the base model is always added
    num_samples: int | None = Field(None, ge=1)  # None: the whole test set
    batch_size: int = Field(16, ge=1)  # prompts generated together (length-sorted)
    max_new_tokens: int = Field(128, ge=1)  # an answer still going here ends with finish_reason: length
    do_sample: bool = False  # greedy by default
    temperature: float = Field(1.0, gt=0)  # with do_sample
    top_p: float = Field(1.0, gt=0, le=1)  # with do_sample: nucleus sampling
    top_k: int | None = None  # with do_sample: only the k likeliest tokens
    repetition_penalty: float = Field(1.0, gt=0)  # 1.0: none; > 1 discourages tokens already in prompt or answer
    seed: int | None = None  # None: the experiment's seed
    # Engine replicas, each answering its share of the batches (sftlab.infer.parallel): the HF engine runs one
    # process per GPU (without GPUs, N processes share the CPU cores); vLLM one engine per tensor_parallel GPUs.
    # The rows are the same as with one replica. A Slurm infer job asks for data_parallel x tensor_parallel GPUs.
    data_parallel: int = Field(1, ge=1)
    tensor_parallel: int = Field(1, ge=1)  # GPUs per replica, vLLM only (its tensor_parallel_size)


class JudgeParams(_Section):
    backend: Literal["auto", "openai", "reference", "local"] = "auto"  # auto: openai if an endpoint is configured
    # local: `vllm serve` this model on 127.0.0.1 for the run (needs `make setup-vllm`), served as judge.model
    local_model: str = "builtin:smollm2-135m-instruct"
    # single: each answer graded alone on the rubric; pairwise: two answers to the same prompt compared, in
    # both orders (sftlab.judge.pairwise), for "is B better than A?".
    mode: Literal["single", "pairwise"] = "single"
    repeats: int = Field(1, ge=1)  # judge every row this many times: the reliability card's self-consistency
    pairs: Literal["baseline", "adjacent", "all"] = "baseline"  # pairwise: which models are compared
    pairwise_rubric: str = "params/rubrics/pairwise_ko.yaml"  # pairwise: for rows without a rubric of their language
    # pairwise: the rubric of each language (meta.lang), as rubric_by_lang
    pairwise_rubric_by_lang: dict[str, str] | None = {"ko": "params/rubrics/pairwise_ko.yaml",
                                                      "en": "params/rubrics/pairwise_en.yaml"}
    rubric: str = "params/rubrics/qa_ko.yaml"  # for rows whose meta.lang has no entry in rubric_by_lang
    # A row is judged by the rubric of its language (meta.lang): a Korean rubric would mark every English
    # answer down on fluency. null or {} judges every row with `rubric`.
    rubric_by_lang: dict[str, str] | None = {"ko": "params/rubrics/qa_ko.yaml", "en": "params/rubrics/qa_en.yaml"}
    model: str = "gpt-4o-mini"  # the judge model, as the server names it
    base_url: str | None = None  # any OpenAI-compatible server
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key itself never goes in a file
    # auto: the mode the capability probe finds (sftlab.judge.probe), falling back on 400/422 during the run
    structured: Literal["auto", "json_schema", "json_object", "prompt"] = "auto"
    # The probe, at plan time, is remembered per (base_url, model) in judge/probes.json. auto: ask once;
    # always: ask again (the server behind the address changed; with a forced `structured`, only to report);
    # off: no probe, json_schema first.
    probe: Literal["auto", "always", "off"] = "auto"
    temperature: float | None = 0.0  # None: the server's default (some reasoning models accept no other)
    # Cap on each answer's tokens, sent as max_tokens; None sends none (the server's default; OpenAI's
    # reasoning models accept only their own max_completion_tokens). A small local judge can run on to its
    # context limit without one: minutes per row on CPU.
    max_tokens: int | None = Field(None, ge=1)
    concurrency: int = Field(8, ge=1)  # requests in flight at once
    timeout_s: float = Field(60.0, gt=0)  # per request; a timeout is retried
    max_retries: int = Field(5, ge=0)  # retries of a 429, 5xx, timeout or dropped connection
    backoff_base_s: float = Field(1.0, gt=0)  # retry n waits ~base * 2**n (jittered), or what retry-after says
    backoff_max_s: float = Field(60.0, gt=0)  # cap on any one wait, retry-after included
    max_cost_usd: float | None = None  # no new request once this is spent; the rest stay not_judged
    prices: dict[str, dict[str, float]] = {}  # model -> {input_per_mtok, output_per_mtok}; over the built-in table
    # The OpenAI Batch API: half price, results within 24 h; a killed or re-run stage polls the batches it
    # already created (judge/batches.json) instead of paying twice.
    batch: bool = False
    batch_poll_s: float = Field(30.0, gt=0)  # seconds between two looks at a running batch
    # A batch still running after this long is cancelled and its open rows judged the normal way (None: wait).
    batch_fallback_after_s: float | None = Field(None, gt=0)


class ScoreParams(_Section):
    experiments: list[ExperimentName] = []  # other experiments to compare with this one
    baseline: str | None = None  # "<experiment>/<checkpoint>" or "<checkpoint>"; default: the base model
    bootstrap: int = Field(2000, ge=100)  # bootstrap resamples per interval
    confidence: float = Field(0.95, gt=0, lt=1)  # of every interval
    # When the judge's self-consistency (Krippendorff's α over judge.repeats passes) falls below this, the
    # score report says its ranking is not trustworthy instead of naming a winner. None: off.
    min_alpha: float | None = Field(None, ge=-1, le=1)
    # Every figure of the reliability card (and every ranking interval) computed from fewer items than this
    # is flagged "small sample": a handful of labels or units does not support a confident number.
    min_n: int = Field(30, ge=1)
    # The pairwise ranking also controls for style (Arena-Hard-Auto's style control: length in tokens and
    # characters, markdown headers, lists, bold, share of Hangul) and makes that the headline ranking; the
    # raw Bradley-Terry ranking is shown beside it. False: the raw ranking only.
    style_control: bool = True
    # What was observed of each experiment outside sftlab (e.g. by eye, in an earlier study): shown beside
    # the measured numbers in the study table. experiment -> text.
    observations: dict[ExperimentName, str] = {}
    # The two models the report shows side by side on the same prompts, largest score difference first:
    # "<checkpoint>" or "<experiment>/<checkpoint>" (A, then B). Empty: the first and the last model scored.
    compare: list[str] = []

    @field_validator("baseline")
    @classmethod
    def _baseline_experiment_stays_in_outputs(cls, baseline: str | None) -> str | None:
        if baseline and "/" in baseline:
            _experiment_name(baseline.rsplit("/", 1)[0])
        return baseline

    @field_validator("compare")
    @classmethod
    def _two_models(cls, value: list[str]) -> list[str]:
        if value and len(value) != 2:
            raise ValueError(f"name two models (A and B) or none, got {len(value)}: {value}")
        for model in value:
            if "/" in model:
                _experiment_name(model.rsplit("/", 1)[0])
        return value


# A Slurm time limit: minutes, or "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS" (sbatch --time).
SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_time_minutes(value: str | int) -> int:
    """A Slurm time limit in whole minutes (rounded up), as sbatch reads it: "90" = 90 min, "30:00" = 30 min,
    "4:00:00" = 240 min, "1-12" = 36 h. Raises ValueError for anything else."""
    if isinstance(value, int):
        minutes = value
    else:
        match = SLURM_TIME.fullmatch(str(value).strip())
        if not match:
            raise ValueError(f"{value!r} is not a Slurm time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                             f"D-HH:MM:SS (e.g. 90, \"4:00:00\", \"1-12:00:00\")")
        days, first, second, third = match.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
        elif third is not None:  # HH:MM:SS
            seconds = int(first) * 3600 + int(second) * 60 + int(third)
        elif second is not None:  # MM:SS
            seconds = int(first) * 60 + int(second)
        else:  # MM
            seconds = int(first) * 60
        minutes = -(-seconds // 60)
    if minutes < 1:
        raise ValueError(f"{value!r}: a job needs at least one minute")
    return minutes


def _slurm_time(value: str | int | None) -> str | int | None:
    if value is not None:
        slurm_time_minutes(value)
    return value


class JobResources(_Section):
    """What a stage's cluster job asks of the scheduler (sbatch's options of the same names). None: not
    asked here (the executor's value, else the cluster's default). sftlab.executor resolves them per stage."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: Annotated[str | int | None, AfterValidator(_slurm_time)] = None  # minutes, or "HH:MM:SS", "D-HH:MM:SS"
    nodes: int | None = Field(None, ge=1)  # only the train job spans nodes (srun + torchrun)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem: str | None = None  # per node, as sbatch --mem reads it: "64G", "0" (all of the node's)
    # More #SBATCH directives, as sbatch spells them: {constraint: h100, exclusive: true, mail-type: END}.
    extra: dict[str, str | int | bool] = {}


class ExecutorParams(JobResources):
    """Where the stages run (sftlab.executor). local: here, one after another (the default). slurm: each
    stage of each experiment is a job, in dependency order. The keys above are every job's; each stage's
    own section overrides them key by key (`extra` merges). Without its own section, a judge or score job
    asks for one node and no GPU, and an infer job for one node."""

    backend: Literal["local", "slurm"] = "local"
    time: Annotated[str | int | None, AfterValidator(_slurm_time)] = "4:00:00"  # every job's, unless its stage's says
    train: JobResources = JobResources()
    infer: JobResources = JobResources()
    judge: JobResources = JobResources()
    score: JobResources = JobResources()
    # The job gets SIGUSR2 this long before its time limit, checkpoints its state and is requeued; the train
    # stage then resumes from its newest complete checkpoint.
    signal_before_s: int = Field(120, ge=10)
    max_requeues: int = Field(10, ge=0)  # requeues on reaching the time limit (preemptions are not counted)


class Params(_Section):
    experiment: ExperimentName  # the folder outputs/<experiment>/; default: the params file's own name
    seed: int = 42  # the experiment's seed: data split, training, sampling
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    infer: InferParams = InferParams()
    judge: JudgeParams = JudgeParams()
    score: ScoreParams = ScoreParams()
    executor: ExecutorParams = ExecutorParams()

    @property
    def layout(self) -> paths.ExperimentLayout:
        """This experiment's folders (sftlab.paths.ExperimentLayout)."""
        return paths.ExperimentLayout.of(self.experiment)

    @property
    def output_dir(self) -> Path:
        return self.layout.root

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-safe), with every default spelled out."""
        return self.model_dump(mode="json")


def sft_config_fields() -> set[str]:
    """The trl.SFTConfig fields the train section may set (sftlab.trainer_fields: without importing trl)."""
    return trainer_fields.names()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def deep_merge(under: dict, over: dict) -> dict:
    """`over` wins; nested mappings merge key by key; lists and scalars replace."""
    merged = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _record_sources(data: Any, source: str, sources: dict[tuple, str], prefix: tuple = ()) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            sources[prefix + (key,)] = source
            _record_sources(value, source, sources, prefix + (key,))


def _load_layers(path: Path, sources: dict[tuple, str], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise ParamsError(f"{path}: `base:` chain loops: {chain}")
    data = read_yaml(path)
    base = data.pop("base", None)
    merged: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise ParamsError(f"{path}: base: expected the path of a params file, got {base!r}")
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.exists():
            raise ParamsError(f"{path}: base: {base_path} does not exist")
        merged = _load_layers(base_path, sources, seen + (path,))
        # A name is never inherited: a variant is an experiment of its own, named after its own file
        # unless it says otherwise (else it would write into its base's folder).
        merged.pop("experiment", None)
        sources.pop(("experiment",), None)
    _record_sources(data, str(path), sources)
    return deep_merge(merged, data)


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """`train.max_steps=5` -> (["train", "max_steps"], 5). The value is read as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.max_steps=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ParamsError(f"--set {assignment!r}: value is not valid YAML: {e}") from None
    keys = key.strip().split(".")
    if not all(part.strip() for part in keys):
        raise ParamsError(f"--set {assignment!r}: empty key between dots in {key.strip()!r}; expected "
                          f"dotted keys, e.g. train.max_steps=5")
    return keys, value


def apply_overrides(data: dict, overrides: list[str], sources: dict[tuple, str]) -> dict:
    for assignment in overrides:
        keys, value = parse_override(assignment)
        # Sections that this --set creates are its own: a mistake in them names --set, not the file.
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, dict) and isinstance(node.get(key), dict):
                node = node[key]
                continue
            for end in range(depth + 1, len(keys)):
                sources[tuple(keys[:end])] = "--set"
            break
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        data = deep_merge(data, nested)
        sources[tuple(keys)] = "--set"
        _record_sources(value, "--set", sources, tuple(keys))
    return data


def load_params(path: str | os.PathLike, overrides: list[str] | None = None) -> Params:
    """Load, merge and validate one params file (see the module docstring)."""
    path = Path(path)
    sources: dict[tuple, str] = {}
    data = _load_layers(path, sources)
    data = apply_overrides(data, list(overrides or []), sources)
    if "experiment" not in data:
        # An experiment is named after its file unless it says otherwise.
        data["experiment"] = path.stem
    return validate(data, sources, default_source=str(path))


def validate(data: dict, sources: dict[tuple, str] | None = None, default_source: str = "params") -> Params:
    """The schema, then what it cannot see: the trainer's pass-through values (as the training process
    will parse them), whether the model exists or can be fetched, the pad token against its vocabulary."""
    sources = sources or {}
    keys = [f"{_source_of(('train', key), sources, default_source)}: {message}"
            for key, message in train_key_problems(data.get("train"))]
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        # One round: the schema's problems and the train section's keys together.
        raise ParamsError(_explain(e, data, sources, default_source, keys)) from None
    if keys:
        raise ParamsError("invalid params:\n  " + "\n  ".join(keys))
    problems = checks.problems(params)
    if problems:
        lines = [f"{_source_of(loc, sources, default_source)}: {'.'.join(loc)}: {problem}" for loc, problem in problems]
        raise ParamsError("invalid params:\n  " + "\n  ".join(lines))
    return params


def from_notebook(params_file: str | None = None, **injected: Any) -> Params:
    """Validate a notebook's parameters.

    `params_file` (default params, e.g. params/demo.yaml, or the runner's config.resolved.yaml) is
    loaded first; the sections papermill injected (`-f file.yaml` or `-p`) are merged over it. An
    injected `base:` replaces `params_file` as the layer underneath, as it would in `load_params`.
    Empty sections and None values mean "not given".
    """
    sources: dict[tuple, str] = {}
    base = injected.pop("base", None)
    layer_file = base or params_file
    data: dict[str, Any] = {}
    if layer_file:
        data = _load_layers(paths.resolve(layer_file), sources)
    if base:  # a base layer never names the experiment (see _load_layers)
        data.pop("experiment", None)
        sources.pop(("experiment",), None)
    given = {k: v for k, v in injected.items() if v not in (None, {}, [])}
    unknown = sorted(set(given) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ParamsError(_unknown_key_message(unknown[0], set(TOP_LEVEL_KEYS), "notebook parameters"))
    _record_sources(given, "notebook parameters", sources)
    data = deep_merge(data, given)
    if "experiment" not in data and base:
        # The file that named this base (e.g. `papermill -f variant.yaml`) is not known here, so neither is
        # its name; the base's name would write into the base's folder.
        raise ParamsError(f"notebook parameters: experiment: not given, and never taken from a base (base: {base}); "
                          f"add `experiment: NAME` to the params file or pass -p experiment NAME")
    if "experiment" not in data and layer_file:
        data["experiment"] = Path(layer_file).stem
    return validate(data, sources, default_source=str(layer_file or "notebook parameters"))


def write_resolved(params: Params, directory: str | os.PathLike | None = None,
                   name: str = "config.resolved.yaml") -> Path:
    """Write the params with every default spelled out, atomically, as `directory/name` (default: the
    experiment's config.resolved.yaml, which the runner writes before each stage); return its path."""
    target = Path(directory) / name if directory else params.layout.resolved_params
    target.parent.mkdir(parents=True, exist_ok=True)
    text = "# Resolved by sftlab: the params file, its bases and overrides, with every default.\n"
    text += yaml.safe_dump(params.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write_text(target, text)
    return target


# --------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------


def _unknown_key_message(key: str, valid: set[str], where: str | None = None, prefix: str = "") -> str:
    """`key` is the last part of the dotted name; `prefix` the section it is in ("train.")."""
    if key in FOREIGN_KEYS and key not in valid:
        return f"{where + ': ' if where else ''}unknown key '{prefix}{key}'; in a params file: {FOREIGN_KEYS[key]}"
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys here: {', '.join(sorted(valid))}"
    return f"{where + ': ' if where else ''}unknown key '{prefix}{key}'{hint}"


def _fields_at(loc: tuple) -> set[str]:
    """The valid keys of the schema section at `loc` (a tuple of keys)."""
    model: type[BaseModel] = Params
    for key in loc:
        annotation = getattr(model.model_fields.get(key), "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return set()
        model = annotation
    names = set(model.model_fields)
    if model is TrainParams:
        names |= sft_config_fields()
    if model is Params:
        names.add("base")
    return names


def _source_of(loc: tuple, sources: dict[tuple, str], default: str) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in sources:
            return sources[loc[:end]]
    return default


def _data_loc(data: dict, loc: tuple, missing: bool) -> tuple:
    """The part of pydantic's `loc` that names keys of the data, without its union-member tags."""
    kept, node = [], data
    for part in loc:
        if isinstance(node, dict) and part in node:
            kept.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            kept.append(part)
            node = node[part]
        elif missing and part == loc[-1]:
            kept.append(part)
    return tuple(kept)


def _dotted(loc: tuple) -> str:
    """("score", "experiments", 0) -> "score.experiments[0]"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _explain(error: ValidationError, data: dict, sources: dict[tuple, str], default: str,
             more: list[str] = ()) -> str:
    lines: list[str] = []
    wrong_type: dict[tuple[str, str, str], list[str]] = {}
    for err in error.errors():
        loc = _data_loc(data, err["loc"], missing=err["type"] == "missing")
        dotted = _dotted(loc) or "(top level)"
        where = _source_of(loc, sources, default)
        if err["type"] == "extra_forbidden":
            section = ".".join(map(str, loc[:-1]))
            lines.append(_unknown_key_message(str(loc[-1]), _fields_at(loc[:-1]), where,
                                              f"{section}." if section else ""))
        elif err["type"] == "missing":
            lines.append(f"{where}: {dotted}: required key is missing")
        elif err["type"] == "value_error":
            message = err["msg"].removeprefix("Value error, ")
            if loc == ("train",) and message.startswith("collator:"):  # name every file that set a side of it
                keys = [("train", key) for key in ("collator", "packing", "padding_free") if ("train", key) in sources]
                where = " and ".join(dict.fromkeys(sources[key] for key in keys)) or default
                lines.append(f"{where}: train.{message}")
            else:
                lines.append(f"{where}: {dotted}: {message}")
        else:
            # A union field (e.g. `int | "auto"`) fails once per member: gather them into one line.
            expected = _EXPECTED.get(err["type"]) or err["msg"].removeprefix("Input should be ")
            wrong_type.setdefault((where, dotted, repr(err.get("input"))), []).append(expected)
    for (where, dotted, got), expected in wrong_type.items():
        lines.append(f"{where}: {dotted}: expected {' or '.join(dict.fromkeys(expected))}, got {got}")
    return "invalid params:\n  " + "\n  ".join(dict.fromkeys(lines + list(more)))
