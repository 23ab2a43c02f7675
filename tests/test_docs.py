"""The docs: the params reference names every field of the schema (it is generated from it), the site builds
in strict mode, and the README keeps the test command CI runs."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]


def reference_module():
    spec = importlib.util.spec_from_file_location("params_reference", ROOT / "docs" / "hooks" / "params_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of the schema, walked here on its own (not by the generator)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += schema_keys(field.annotation, f"{prefix}{name}.")
    return keys


def test_params_reference_names_every_schema_field():
    from sftlab.config import Params

    page = reference_module().render()
    keys = schema_keys(Params)
    assert len(keys) > 60
    sections = [name for name, field in Params.model_fields.items() if issubclass(field.annotation, BaseModel)]
    missing = [key for key in keys if f"| `{key}` |" not in page and f"## `{key}`" not in page]
    assert all(f"## `{name}`" in page for name in sections)
    assert missing == [], f"fields of sftlab.config missing from the params reference: {missing}"
    # the keys a newcomer looks for, with what the schema says of them
    for key, words in (("infer.engine", "`hf` \\| `vllm`"), ("judge.backend", "`local`"), ("score.compare", "side by side"),
                       ("judge.api_key_env", "NAME of the variable"), ("train.packing", "`bfd`")):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{key}` |"))
        assert words in row, (key, row)
    assert "(≥ 1)" in next(line for line in page.splitlines() if line.startswith("| `infer.batch_size` |"))
    source = (ROOT / "docs" / "params-reference.md").read_text(encoding="utf-8")
    assert reference_module().MARKER in source


def test_params_reference_follows_the_schema():
    """A field added to a section appears with its comment, type and default: nothing is listed by hand."""
    module = reference_module()
    from sftlab.config import InferParams

    class Wider(InferParams):
        beams: int = Field(4, ge=1)  # beams of a beam search

    rows = {key: (kind, default, meaning) for key, kind, default, meaning in module.rows(Wider, "infer.")}
    assert rows["infer.beams"] == ("int (≥ 1)", "`4`", "beams of a beam search")
    assert set(rows) == {f"infer.{name}" for name in Wider.model_fields}


@pytest.mark.slow
def test_docs_site_builds_in_strict_mode(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (tmp_path / "site" / "params-reference.html").read_text(encoding="utf-8")
    assert "judge.local_model" in reference and "<table>" in reference
    assert not list((tmp_path / "site").rglob("*.py")), "the build hooks are not published"


def test_readme_is_a_front_page_whose_test_command_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert len(readme.splitlines()) < 200
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert len(links) > 10
    assert [link for link in links if not (ROOT / link).exists()] == []
