"""Shared test set-up.

Every test writes its outputs to a temporary folder (SFTLAB_OUTPUTS), but converted builtin models
are cached once per checkout (SFTLAB_MODEL_CACHE = <root>/outputs/models), as `make demo` does,
so the ~15 s GGUF conversion happens once, not per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SFTLAB_MODEL_CACHE", str(ROOT / "outputs" / "models"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two test processes: each (and every process it starts: torchrun, kernels, jobs) gets its
    # share of the cores as torch threads, or their OpenMP threads spin against each other's (a generation loop
    # ran 6x slower so). Set before anything imports torch.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

# The longest files first: `make test` hands whole files to its two processes in this order, so the Slurm
# study (minutes, mostly waiting on jobs) starts at once instead of last.
FIRST = ("test_executor.py", "test_checkouts.py", "test_train.py", "test_runner.py", "test_infer.py",
         "test_train_lifetime.py", "test_checkpoint_pruning.py", "test_supervision.py", "test_labelling.py",
         "test_copies.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the order within a file is kept


@pytest.fixture
def outputs(tmp_path, monkeypatch) -> Path:
    """A fresh outputs folder for the test."""
    folder = tmp_path / "outputs"
    monkeypatch.setenv("SFTLAB_OUTPUTS", str(folder))
    return folder


@pytest.fixture
def server():
    """The OpenAI-compatible test server (tests/judge_server.py) on 127.0.0.1, without faults (a `slow` fault
    added later answers after 1 s)."""
    from judge_server import FakeJudgeServer

    with FakeJudgeServer(slow_s=1.0) as running:
        yield running


@pytest.fixture
def key(monkeypatch) -> str:
    """The judge's API key in the environment variable the judge tests' params name."""
    from judge_server import KEY, KEY_ENV

    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture(scope="session")
def builtin_model_path() -> Path:
    from sftlab.models import builtin_checkpoint

    return builtin_checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_path(builtin_model_path, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with the builtin model's tokenizer and chat template.

    Trains in well under a second per step, so real torchrun runs fit in the test suite.
    """
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), builtin_model_path)


def build_tiny_model(path: Path, builtin_model_path: Path) -> Path:
    """The tiny model of `tiny_model_path`, written into `path` (also used by bench/cluster.py)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id],
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_params(tmp_path: Path, model_path: Path, **train) -> Path:
    """A params file for the tiny model on the first demo rows: a few fast steps."""
    import yaml

    settings = {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
                "save_steps": 2, "max_length": 160, "gradient_checkpointing": False, "audit_rows": 4, **train}
    params = {"experiment": "tiny", "seed": 0, "model": {"name_or_path": str(model_path)},
              "data": {"train": str(ROOT / "data" / "demo" / "train.jsonl"),
                       "test": str(ROOT / "data" / "demo" / "test.jsonl")},
              "train": settings}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path
