"""The runner executes real notebooks with papermill on this checkout's kernel, keeps every run as a record,
renders it and indexes it; `sftlab notebook` writes hand copies and leaves the templates alone."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from sftlab import config, kernel, runner

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

PARAMETERS = "params_file = None\nexperiment = None\nbase = None\nseed = None\nmodel = {}\ndata = {}\ntrain = {}\ninfer = {}\njudge = {}\nscore = {}"


def make_notebook(folder: Path, stage: str, *sources: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    cells = [new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(s) for s in sources]
    nb.cells = cells
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.ipynb"
    nbformat.write(nb, path)
    return path


def params_file(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text("experiment: tiny\n" + text, encoding="utf-8")
    return path


def run_dirs(exp: Path, stage: str) -> list[Path]:
    return sorted(p for p in (exp / "runs").iterdir() if p.name.split("-", 1)[1].startswith(stage))


def test_runs_a_notebook_with_the_resolved_params_and_renders_it(tmp_path, outputs):
    notebooks = tmp_path / "notebooks"
    make_notebook(notebooks, "train", """\
from sftlab import config, kernel
params = config.from_notebook(params_file, experiment=experiment, seed=seed, train=train)
print("steps", params.train.max_steps, "seed", params.seed, "안녕하세요")
print("<b>not bold</b>")
import os, sys; print("cwd", os.getcwd()); print("run", os.environ["SFTLAB_RUN"]); print("python", sys.executable)
print("package", kernel.check_checkout())""")
    make_notebook(notebooks, "infer", "print('infer ran with', experiment)")

    runner.run(params_file(tmp_path, "train:\n  max_steps: 3\n"), overrides=["seed=11"], notebooks=notebooks)

    exp = outputs / "tiny"
    resolved = (exp / "config.resolved.yaml").read_text()
    assert "max_steps: 3" in resolved and "seed: 11" in resolved
    [train_run] = run_dirs(exp, "train")
    assert (train_run / "config.resolved.yaml").read_text() == resolved  # the record keeps its own params
    executed = nbformat.read(train_run / "train.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "steps 3 seed 11 안녕하세요" in text
    assert f"cwd {ROOT}" in text  # kernels start in the project root, where relative params paths point
    assert f"run {train_run}\n" in text  # the stage code can tell which run it belongs to
    assert f"python {sys.executable}\n" in text  # this checkout's own kernel
    assert f"package {ROOT / 'lib' / 'sftlab'}\n" in text
    assert "SFTLAB_RUN" not in os.environ and kernel.EXPECT_PACKAGE_ENV not in os.environ  # restored
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert executed.metadata.papermill.get("parameters", {}).get("params_file") == str(exp / "config.resolved.yaml")
    assert not (exp / "notebooks").exists()  # that folder is for hand copies

    html = (train_run / "train.html").read_text(encoding="utf-8")
    assert "안녕하세요" in html and 'charset="utf-8"' in html.lower().replace("'", '"')
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    no_input = (train_run / "train.no-input.html").read_text(encoding="utf-8")
    assert "안녕하세요" in no_input and "config.from_notebook" not in no_input
    assert (exp / "reports" / "train.html").read_text(encoding="utf-8") == html  # the latest, copied
    assert (exp / "reports" / "train.no-input.html").read_text(encoding="utf-8") == no_input

    status = json.loads((exp / "status.json").read_text())
    train_entry = status["stages"]["train"]
    assert [status["stages"][s]["status"] for s in ("train", "infer")] == ["done", "done"]
    assert train_entry["run"] == f"runs/{train_run.name}" and train_entry["params_file"].endswith("exp.yaml")
    assert {"started", "finished", "seconds"} <= set(train_entry)
    assert train_entry["history"] == [{k: v for k, v in train_entry.items() if k != "history"}]
    record = json.loads((train_run / "run.json").read_text())
    assert record["status"] == "done" and record["kernel"] == kernel.name()
    index = (outputs / "index.html").read_text(encoding="utf-8")
    assert "tiny/reports/train.html" in index and "tiny/reports/infer.html" in index
    assert f"tiny/runs/{train_run.name}/train.html" in index and "history (1)" in index


def test_a_second_run_adds_a_record_and_the_latest_is_reported(tmp_path, outputs):
    notebooks = tmp_path / "notebooks"
    make_notebook(notebooks, "train", "print('seed is', seed)")
    exp = outputs / "tiny"
    runner.run(params_file(tmp_path), overrides=["seed=1"], notebooks=notebooks)
    [first] = run_dirs(exp, "train")
    first_files = {p.name: p.read_bytes() for p in first.iterdir()}
    runner.run(params_file(tmp_path), overrides=["seed=2"], notebooks=notebooks)
    runner.run(params_file(tmp_path), overrides=["seed=3"], notebooks=notebooks)

    runs = run_dirs(exp, "train")
    assert len(runs) == 3 and runs[0] == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == first_files  # never overwritten
    assert "seed is 1" in (first / "train.html").read_text(encoding="utf-8")
    latest = json.loads((exp / "status.json").read_text())["stages"]["train"]
    assert [e["run"] for e in latest["history"]] == [f"runs/{r.name}" for r in runs]  # oldest first
    assert latest["run"] == latest["history"][-1]["run"]
    assert all(e["status"] == "done" for e in latest["history"])
    assert "seed is 3" in (exp / "reports" / "train.html").read_text(encoding="utf-8")
    index = (outputs / "index.html").read_text(encoding="utf-8")
    assert "history (3)" in index and all(f"tiny/runs/{r.name}/train.html" in index for r in runs)


def test_runs_within_one_second_get_their_own_folders(tmp_path, outputs):
    from sftlab.config import load_params

    layout = load_params(params_file(tmp_path)).layout
    started = 1796049302.0  # 2026-11-30T14:35:02Z
    names = [runner.new_run_dir(layout, "train", started + i / 10).name for i in range(3)]
    assert names == ["20261130T143502Z-train", "20261130T143502Z-train-2", "20261130T143502Z-train-3"]


def test_failing_cell_stops_the_run_with_its_error_and_notebook(tmp_path, outputs):
    notebooks = tmp_path / "notebooks"
    make_notebook(notebooks, "train", "print('before')", "raise ValueError('row 7 of 데이터 is bad')", "print('after')")
    make_notebook(notebooks, "infer", "print('should not run')")

    with pytest.raises(runner.StageFailed) as e:
        runner.run(params_file(tmp_path), notebooks=notebooks)
    message = str(e.value)
    [train_run] = run_dirs(outputs / "tiny", "train")
    executed = train_run / "train.ipynb"
    assert "stage 'train' failed" in message
    assert "ValueError: row 7 of 데이터 is bad" in message
    assert f"executed notebook: {executed}" in message and f"report: {train_run / 'train.html'}" in message
    assert executed.exists() and (outputs / "tiny" / "reports" / "train.html").exists()
    status = json.loads((outputs / "tiny" / "status.json").read_text())
    assert status["stages"]["train"]["status"] == "failed"
    assert "ValueError" in status["stages"]["train"]["history"][0]["error"]
    assert json.loads((train_run / "run.json").read_text())["status"] == "failed"
    assert "infer" not in status["stages"]
    assert [p.name for p in (outputs / "tiny" / "runs").iterdir()] == [train_run.name]
    index = (outputs / "index.html").read_text(encoding="utf-8")
    assert 'class="failed"' in index and "not run" in index


def test_the_executed_notebook_is_written_at_start_end_and_failure_not_at_every_cell(tmp_path, outputs, monkeypatch):
    from papermill.engines import NotebookExecutionManager

    writes = []
    save = NotebookExecutionManager.save
    monkeypatch.setattr(NotebookExecutionManager, "save",
                        lambda self, **kw: (writes.append(self.output_path), save(self, **kw))[-1])
    notebooks = tmp_path / "notebooks"
    # flush=True: the kernel sends the text before the cell ends (a print's newline can otherwise come later)
    make_notebook(notebooks, "train", *[f"print('cell {i}', flush=True)" for i in range(20)])
    make_notebook(notebooks, "infer", "print('one')", "import time; time.sleep(11)", "print('two', flush=True)",
                  "raise ValueError('late')")
    with pytest.raises(runner.StageFailed, match="ValueError: late"):
        runner.run(params_file(tmp_path), notebooks=notebooks)
    [train_run], [infer_run] = run_dirs(outputs / "tiny", "train"), run_dirs(outputs / "tiny", "infer")
    train_writes = [w for w in writes if w and "train.ipynb" in w]
    # papermill alone writes 42 times (every cell's start and end): here, at the start and the end
    assert len(train_writes) == 2, train_writes
    executed = nbformat.read(train_run / "train.ipynb", as_version=4)
    assert ["".join(o["text"] for o in c.outputs).strip() for c in executed.cells[-20:]] == \
        [f"cell {i}" for i in range(20)]
    # A cell ending 10 s after the last write is written; the failure is written with its error.
    assert len([w for w in writes if w and "infer.ipynb" in w]) >= 3
    failed = nbformat.read(infer_run / "infer.ipynb", as_version=4)
    code = [c for c in failed.cells if c.cell_type == "code"]
    assert code[-1].outputs[0]["ename"] == "ValueError" and code[-2].outputs[0]["text"].strip() == "two"


def test_a_study_folder_is_validated_whole_before_anything_runs(tmp_path, outputs):
    notebooks = tmp_path / "notebooks"
    make_notebook(notebooks, "train", "open('ran-' + experiment, 'w').close()")
    study = tmp_path / "study"
    study.mkdir()
    (study / "a.yaml").write_text("train: {max_steps: 1}\n")
    (study / "b.yaml").write_text("train: {max_step: 1}\n")
    with pytest.raises(Exception, match=r"b\.yaml: unknown key 'train.max_step'"):
        runner.run(study, notebooks=notebooks)
    assert not (outputs / "a").exists()


def test_unregistered_kernel_says_what_to_do(tmp_path, outputs, monkeypatch):
    notebooks = tmp_path / "notebooks"
    make_notebook(notebooks, "train", "pass")
    monkeypatch.setenv("SFTLAB_KERNEL", "no-such-kernel-xyz")
    with pytest.raises(kernel.KernelError, match=r"kernel 'no-such-kernel-xyz' is not registered.*make setup"):
        runner.run(params_file(tmp_path), notebooks=notebooks)
    assert not (outputs / "tiny").exists()  # refused before anything was written


def test_unknown_stage_is_refused(tmp_path, outputs):
    notebooks = tmp_path / "notebooks"
    make_notebook(notebooks, "train", "pass")
    with pytest.raises(ValueError, match="unknown stage.*judge"):
        runner.run(params_file(tmp_path), stages=["judge"], notebooks=notebooks)


def sftlab_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftlab", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_reports_bad_params_clearly(outputs):
    env = {**os.environ}
    result = sftlab_cli("run", "params/demo.yaml", "--set", "train.max_step=5", env=env)
    assert result.returncode == 1
    assert "sftlab: error:" in result.stderr
    assert "unknown key 'train.max_step'; did you mean 'train.max_steps'" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_notebook_through_the_cli_and_stock_papermill(tmp_path, outputs, tiny_model_path):
    """The real train notebook: demo params with the tiny model and 2 steps, via `sftlab run`..."""
    env = {**os.environ}
    result = sftlab_cli("run", "params/demo.yaml", "--stages", "train", "--set", f"model.name_or_path={tiny_model_path}",
                        "--set", "train.max_steps=2", "--set", "train.save_steps=1", "--set", "train.logging_steps=1",
                        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = outputs / "demo"
    [train_run] = run_dirs(exp, "train")
    for produced in (f"runs/{train_run.name}/train.ipynb", "reports/train.html", "train/label_audit.html",
                     "train/curves.png", "train/train.log", "train/checkpoint-2/model.safetensors"):
        assert (exp / produced).exists(), produced
    assert json.loads((exp / "status.json").read_text())["stages"]["train"]["status"] == "done"
    assert "index:" in result.stdout and (outputs / "index.html").exists()
    report = (exp / "reports" / "train.html").read_text(encoding="utf-8")
    assert "[sftlab] step 2/2" in report  # the launch cell's live output is part of the record
    assert "data:image/png;base64" in report  # the curves, embedded

    # ...and with the stock papermill CLI, a parameter file that names demo.yaml as its base.
    overrides = tmp_path / "stock.yaml"
    overrides.write_text(f"base: {ROOT / 'params' / 'demo.yaml'}\nexperiment: stock\n"
                         f"model:\n  name_or_path: {tiny_model_path}\ntrain:\n  max_steps: 1\n", encoding="utf-8")
    out = tmp_path / "out.ipynb"
    result = subprocess.run([str(Path(sys.executable).parent / "papermill"), "notebooks/train.ipynb", str(out),
                             "-f", str(overrides)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    executed = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "experiment: stock" in text and "[sftlab] step 1/1" in text
    assert (outputs / "stock" / "train" / "checkpoint-1").is_dir()


def test_the_cli_reads_and_writes_notebooks_without_the_iri_grammar(outputs):
    """jsonschema, under nbformat, imports rfc3987_syntax when it is installed, which builds a grammar for
    about a second; the CLI makes it unimportable (sftlab.imports), and notebooks are still read, validated
    and written."""
    plain = subprocess.run([sys.executable, "-X", "importtime", "-c", "import nbformat"], capture_output=True,
                           text=True, cwd=ROOT)
    grammar = "rfc3987_syntax.syntax_helpers"  # the module that builds the grammar
    assert grammar in plain.stderr  # installed here: what the CLI avoids
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "sftlab", "notebook", "params/demo.yaml",
                             "--stage", "infer", "--set", "experiment=iri"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "nbformat" in imported and "jsonschema" in imported and grammar not in imported
    import nbformat

    nbformat.validate(nbformat.read(outputs / "iri" / "notebooks" / "infer.ipynb", as_version=4))


def template_digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}


def test_notebook_command_writes_a_parameterized_copy_and_leaves_the_templates_alone(outputs):
    templates = template_digests()
    env = {**os.environ}
    result = sftlab_cli("notebook", "params/demo.yaml", "--stage", "infer", "--set", "experiment=hand",
                        "--set", "infer.num_samples=3", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    copy = outputs / "hand" / "notebooks" / "infer.ipynb"
    jupyter = Path(sys.prefix) / "bin" / "jupyter"
    assert result.stdout == f"{jupyter} lab {copy}\n"  # this checkout's Jupyter, the copy's exact path
    nb = nbformat.read(copy, as_version=4)
    assert nb.metadata.kernelspec.name == kernel.name()
    assert nb.metadata.kernelspec.display_name == f"Python (sftlab: {ROOT})"
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and '"num_samples": 3' in injected[0].source
    assert f"params_file = \"{outputs / 'hand' / 'notebooks' / 'infer.params.yaml'}\"" in injected[0].source
    assert "num_samples: 3" in (outputs / "hand" / "notebooks" / "infer.params.yaml").read_text()
    assert not (outputs / "hand" / "config.resolved.yaml").exists()  # the params as run: only a run writes them
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # prepared, not executed
    assert template_digests() == templates
    assert not (outputs / "hand" / "runs").exists()

    copy.write_text(copy.read_text(encoding="utf-8").replace("num_samples", "num_samples_edited"), encoding="utf-8")
    again = sftlab_cli("notebook", "params/demo.yaml", "--stage", "infer", "--set", "experiment=hand", env=env)
    assert again.returncode == 1 and "may hold your edits" in again.stderr and "--force" in again.stderr
    assert "num_samples_edited" in copy.read_text(encoding="utf-8")
    forced = sftlab_cli("notebook", "params/demo.yaml", "--stage", "infer", "--set", "experiment=hand", "--force",
                        env=env)
    assert forced.returncode == 0 and "num_samples_edited" not in copy.read_text(encoding="utf-8")


def test_train_stage_stops_on_the_origin_bug_before_training(tmp_path, outputs, tiny_model_path):
    env = {**os.environ}
    result = sftlab_cli("run", "params/demo.yaml", "--stages", "train", "--set", f"model.name_or_path={tiny_model_path}",
                        "--set", "train.collator=legacy_pad_masked", "--set", "experiment=bug", env=env)
    assert result.returncode == 1
    assert "stage 'train' failed" in result.stderr and "UnsupervisedEOSError" in result.stderr
    assert "never be taught to stop" in result.stderr
    assert (outputs / "bug" / "train" / "label_audit.html").exists()
    assert not (outputs / "bug" / "train" / "train.log").exists()  # nothing was launched


def test_prepare_train_prints_the_command_after_the_audit(tmp_path, outputs, tiny_model_path):
    env = {**os.environ}
    result = sftlab_cli("prepare-train", "params/demo.yaml", "--set", f"model.name_or_path={tiny_model_path}",
                        "--set", "train.nproc_per_node=2", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    config = outputs / "demo" / "train" / "train_config.yaml"
    assert result.stdout.strip().endswith(f"-m sftlab.train --config {config}")
    assert "--nproc_per_node 2" in result.stdout and "fsdp: true" in config.read_text()
    assert "label audit: whole set: " in result.stderr and "8 audited sequences" in result.stderr
    bad = sftlab_cli("prepare-train", "params/demo.yaml", "--set", f"model.name_or_path={tiny_model_path}",
                     "--set", "train.collator=legacy_pad_masked", "--set", "experiment=bad", env=env)
    assert bad.returncode == 1 and "never be taught to stop" in bad.stderr and "Traceback" not in bad.stderr


def test_a_notebook_run_by_hand_leaves_a_run_record_and_not_the_resolved_params(outputs, monkeypatch):
    monkeypatch.setenv(runner.RUN_ENV, "")  # restored after the test: run_record sets it in this process
    monkeypatch.delenv(runner.RUN_ENV)
    params = config.validate({"experiment": "by-hand", "infer": {"num_samples": 2}})
    run = runner.run_record(params, "infer")  # what the validation cell of a copy opened in Jupyter does
    assert run.parent == params.layout.runs and run.name.endswith("-infer")
    assert os.environ[runner.RUN_ENV] == str(run)  # the stage notes into it (made_by.json, problems)
    assert "num_samples: 2" in (run / "config.resolved.yaml").read_text(encoding="utf-8")
    entry = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert entry["status"] == runner.BY_HAND and entry["stage"] == "infer" and entry["kernel"] == kernel.name()
    status = runner.read_status(params.layout.root)["stages"]["infer"]
    assert [e["run"] for e in status["history"]] == [f"runs/{run.name}"]
    assert not params.layout.resolved_params.exists()  # config.resolved.yaml: only the runner writes it
    assert runner.run_record(params, "infer") == run  # the cell run again: the same record


def test_committed_notebooks_carry_no_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        # A generic kernel: the runner and `sftlab notebook` name this checkout's own kernel themselves.
        assert nb.metadata.kernelspec.name == "python3", path
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs"
