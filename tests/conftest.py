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


@pytest.fixture
def outputs(tmp_path, monkeypatch) -> Path:
    """A fresh outputs folder for the test."""
    folder = tmp_path / "outputs"
    monkeypatch.setenv("SFTLAB_OUTPUTS", str(folder))
    return folder


@pytest.fixture(scope="session")
def builtin_model_path() -> Path:
    from sftlab.models import builtin_checkpoint

    return builtin_checkpoint("smollm2-135m-instruct")
