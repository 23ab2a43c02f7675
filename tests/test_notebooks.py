"""The notebook templates as a person uses them: re-run any cell, in any order, by hand.

A notebook's parameters are module-level names (`data`, `infer`, `judge`, ...). An import that binds
one of those names replaces the parameter, and re-running the validation cell then fails — so no
import in any cell may bind a parameter's name, and the validation cell must run again after every
import of the notebook, in a real kernel.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pytest

from sftlab import kernel

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _parameters(notebook: Path) -> set[str]:
    cell = next(c for c in _cells(notebook) if "parameters" in c.get("metadata", {}).get("tags", []))
    return {t.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign)
            for t in node.targets}


def _imports(notebook: Path) -> list[ast.stmt]:
    """Every import statement of every code cell, in order."""
    found = []
    for cell in _cells(notebook):
        if cell["cell_type"] == "code":
            found += [node for node in ast.walk(ast.parse("".join(cell["source"])))
                      if isinstance(node, (ast.Import, ast.ImportFrom))]
    return found


def _bound_names(node: ast.stmt) -> set[str]:
    return {(alias.asname or alias.name).split(".")[0] for alias in node.names}


def test_notebooks_exist():
    assert [n.stem for n in NOTEBOOKS] == ["infer", "judge", "score", "train"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_import_hides_a_parameter(notebook):
    parameters = _parameters(notebook)
    for node in _imports(notebook):
        hidden = _bound_names(node) & parameters
        assert not hidden, f"{notebook.name}: `{ast.unparse(node)}` replaces the parameter {hidden}"


@pytest.mark.slow
def test_the_validation_cell_reruns_after_every_import(tmp_path, outputs):
    """In a real kernel: parameters, validation, every import of the notebook, validation again."""
    import papermill

    name = kernel.ensure()
    for notebook in NOTEBOOKS:
        cells = _cells(notebook)
        parameters = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
        validation = cells[cells.index(parameters) + 1]
        imports = "\n".join(ast.unparse(node) for node in _imports(notebook))
        probe = nbformat.v4.new_notebook()
        probe.metadata.kernelspec = kernel.kernelspec_metadata()
        probe.cells = [nbformat.v4.new_code_cell("".join(parameters["source"]), metadata={"tags": ["parameters"]}),
                       nbformat.v4.new_code_cell("".join(validation["source"])),
                       nbformat.v4.new_code_cell(imports),
                       nbformat.v4.new_code_cell("".join(validation["source"]))]
        source, executed = tmp_path / f"{notebook.stem}-probe.ipynb", tmp_path / f"{notebook.stem}-executed.ipynb"
        nbformat.write(probe, source)
        papermill.execute_notebook(str(source), str(executed), parameters={"experiment": "rerun"},
                                   kernel_name=name, cwd=str(ROOT), progress_bar=False)
        outputs_text = json.dumps(nbformat.read(executed, as_version=4).cells[-1].get("outputs", []))
        assert "experiment: rerun" in outputs_text, notebook.name
