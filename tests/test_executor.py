"""The executor: its settings, the exact job scripts, and runs on a real one-node Slurm (tests/slurm_cluster.py):
a study as jobs in dependency order, equal to a local run; requeue of a training job mid-run; cancel; a
failing stage and its dependants. The Slurm tests skip (with the reason) where no local Slurm can start; under
CI they fail instead, since .ci/run installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_params
from slurm_cluster import LocalSlurm, SlurmUnavailable
from sftlab import executor, paths, runner
from sftlab.config import ParamsError, load_params, slurm_time_minutes, validate

SFTLAB = str(Path(sys.executable).parent / "sftlab")


# --------------------------------------------------------------------------------------------
# Settings and scripts (no Slurm needed)
# --------------------------------------------------------------------------------------------


def test_each_stage_asks_for_its_own_resources():
    params = validate({"experiment": "x", "executor": {
        "backend": "slurm", "partition": "gpu", "account": "lab", "time": "2:00:00", "nodes": 2, "gpus_per_node": 8,
        "cpus_per_task": 16, "mem": "0", "extra": {"constraint": "h100"},
        "infer": {"gpus_per_node": 2}, "judge": {"partition": "cpu", "time": 30, "extra": {"exclusive": False}}}})
    e = params.executor
    assert executor.job_resources(e, "train") == {"partition": "gpu", "account": "lab", "time": "2:00:00", "nodes": 2,
                                                  "gpus_per_node": 8, "cpus_per_task": 16, "mem": "0",
                                                  "extra": {"constraint": "h100"}}
    infer = executor.job_resources(e, "infer")
    assert infer["gpus_per_node"] == 2 and "nodes" not in infer  # one node, its own GPU count
    judge = executor.job_resources(e, "judge")
    assert judge["partition"] == "cpu" and judge["time"] == 30 and "gpus_per_node" not in judge and "nodes" not in judge
    assert judge["extra"] == {"constraint": "h100", "exclusive": False}  # merged, the stage's own last
    assert "gpus_per_node" not in executor.job_resources(e, "score")


def test_time_limits_are_read_as_sbatch_reads_them():
    assert [slurm_time_minutes(t) for t in (90, "90", "30:00", "4:00:00", "1-12", "1-00:00:30", "0:30")] == \
        [90, 90, 30, 240, 2160, 1441, 1]
    with pytest.raises(ParamsError, match=r"executor.time.*not a Slurm time limit"):
        validate({"experiment": "x", "executor": {"time": "four hours"}})


def test_extra_directives_may_not_set_what_sftlab_sets():
    params = validate({"experiment": "x", "executor": {"backend": "slurm", "train": {"extra": {"dependency": "afterany:1"}}}})
    with pytest.raises(ParamsError, match="'dependency' is set by sftlab itself"):
        executor.job_resources(params.executor, "train")
    params = validate({"experiment": "x", "executor": {"extra": {"time": "1:00"}}})
    with pytest.raises(ParamsError, match="use executor.time"):
        executor.job_resources(params.executor, "judge")


def test_executor_flag_takes_a_backend_or_a_profile_file(tmp_path):
    assert executor.executor_overrides("slurm") == ["executor.backend=slurm"]
    profile = tmp_path / "cluster.yaml"
    profile.write_text("executor:\n  partition: gpu\n  train: {nodes: 2, gpus_per_node: 8}\n")
    params = tmp_path / "p.yaml"
    params.write_text("experiment: p\nexecutor: {partition: old, qos: high}\n")
    loaded = load_params(params, executor.executor_overrides(str(profile)) + ["executor.time=60"])
    assert loaded.executor.backend == "slurm"  # a profile is a cluster's
    assert (loaded.executor.partition, loaded.executor.qos, loaded.executor.time) == ("gpu", "high", 60)
    assert loaded.executor.train.nodes == 2
    profile.write_text("partion: gpu\n")
    with pytest.raises(ParamsError, match=f"{profile}: unknown key 'executor.partion'; did you mean 'executor.partition'"):
        executor.executor_overrides(str(profile))


GOLDEN_SBATCH = """\
#!/bin/bash

# Parameters
#SBATCH --account=lab
#SBATCH --cpus-per-task=32
#SBATCH --dependency=afterok:4241
#SBATCH --gpus-per-node=8
#SBATCH --job-name=sftlab-big-train
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mem=0
#SBATCH --nodes=2
#SBATCH --open-mode=append
#SBATCH --output=<run>/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --time=1440

# command
export SUBMITIT_EXECUTOR=slurm
exec <python> -u -m submitit.core._submit <run>
"""

GOLDEN_SRUN = ("srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --kill-on-bad-exit=1 --unbuffered <python> -m "
               "torch.distributed.run --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint gpu01:33742 "
               "--rdzv_id sftlab-4242 -m sftlab.train --config <train>/train_config.yaml")


def test_golden_job_script_and_launch_of_a_two_node_eight_gpu_training(tmp_path, outputs):
    from sftlab.train import launch

    params = validate({"experiment": "big", "executor": {
        "backend": "slurm", "partition": "gpu", "account": "lab", "qos": "high", "time": "1-00:00:00",
        "train": {"nodes": 2, "gpus_per_node": 8, "cpus_per_task": 32, "mem": "0"}}})
    run_dir = tmp_path / "runs" / "20261203T000000Z-train"
    text = executor.sbatch_text(params, "train", run_dir, after=["4241"])
    assert text.replace(str(run_dir), "<run>").replace(sys.executable, "<python>") == GOLDEN_SBATCH

    # In that job, on its first node: srun starts one torchrun agent per node, rendezvous on the first node.
    slurm_env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_GPUS_ON_NODE": "8"}
    command = launch.torchrun_command(params.train, params.layout.train / "train_config.yaml", slurm_env)
    assert " ".join(command).replace(sys.executable, "<python>").replace(str(params.layout.train), "<train>") == GOLDEN_SRUN
    # One node: torchrun alone, as outside Slurm.
    single = launch.torchrun_command(params.train, Path("c.yaml"), {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu05"})
    assert "srun" not in single and "--standalone" in single
    with pytest.raises(ValueError, match="sftlab sets the rendezvous itself"):
        launch.torchrun_command(validate({"experiment": "b", "train": {"nnodes": 4, "rdzv_endpoint": "h:1"}}).train,
                                Path("c.yaml"), slurm_env)


# --------------------------------------------------------------------------------------------
# A real Slurm
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm on this machine for this module's tests (SLURM_CONF set while they run)."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs Slurm (.ci/run), but it does not start: {e}")
        pytest.skip(f"no local Slurm: {e}")
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def sftlab(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([SFTLAB, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def status_of(outputs: Path, experiment: str) -> dict:
    return json.loads((outputs / experiment / "status.json").read_text())["stages"]


def study(tmp_path: Path, tiny_model_path: Path, **train) -> Path:
    """Two experiments of the tiny model that differ by learning rate, a few samples, the reference judge."""
    folder = tmp_path / "mini"
    folder.mkdir()
    base = yaml.safe_load(tiny_params(tmp_path, tiny_model_path, max_steps=2, save_steps=2, **train).read_text())
    base.pop("experiment")
    base["infer"] = {"num_samples": 3, "max_new_tokens": 8, "batch_size": 4, "checkpoints": "last"}
    base["judge"] = {"backend": "reference"}
    base["score"] = {"bootstrap": 100}
    (folder / "_base.yaml").write_text(yaml.safe_dump(base, allow_unicode=True))
    for name, lr in (("fast", 1e-3), ("slow", 1e-4)):
        (folder / f"{name}.yaml").write_text(f"base: _base.yaml\nexperiment: {name}\ntrain:\n  learning_rate: {lr}\n")
    (folder / "_study.yaml").write_text("score:\n  bootstrap: 100\n")
    return folder


def rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in path.read_text().splitlines()]


def outputs_of(folder: Path) -> dict:
    """What a study's run computed: the rows of every stage and the score tables (no times, no paths)."""
    found = {}
    for name in ("fast", "slow"):
        for file in sorted((folder / name / "generations").glob("*.jsonl")):
            found[f"{name}/generations/{file.name}"] = rows(file)
        for file in sorted((folder / name / "judge").glob("*.jsonl")):
            found[f"{name}/judge/{file.name}"] = rows(file, drop=("judged_at",))
        state = json.loads((folder / name / "train" / "trainer_state.json").read_text())
        found[f"{name}/loss"] = [e["loss"] for e in state["log_history"] if "loss" in e]
    for table in ("summary.csv", "study_table.csv"):
        found[f"study/{table}"] = (folder / "mini-study" / "scores" / table).read_text()
    return found


@pytest.mark.slow
def test_a_study_runs_as_jobs_in_dependency_order_and_equals_a_local_run(slurm, tmp_path, outputs, tiny_model_path,
                                                                         request):
    folder = study(tmp_path, tiny_model_path)
    started = time.monotonic()
    submitted = sftlab("run", str(folder), "--executor", "slurm")  # submits and returns; the shell is then gone
    assert time.monotonic() - started < 60
    # The same study here, one stage after another (`sftlab run` with the local executor, into outputs of its
    # own), side by side with the jobs: compared with them below.
    local = tmp_path / "local-outputs"
    local_log = (tmp_path / "local.log").open("w")
    local_run = subprocess.Popen([SFTLAB, "run", str(folder)], cwd=ROOT, stdout=local_log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "SFTLAB_OUTPUTS": str(local)})
    request.addfinalizer(lambda: local_run.poll() is None and (local_run.kill(), local_run.wait()))
    lines = submitted.stdout + submitted.stderr
    for name in ("fast", "slow"):
        for stage in ("train", "infer", "judge"):
            assert f"[{name}] {stage}: job " in lines
    assert "[mini-study] score: job " in lines and "sftlab status" in lines
    waiting = json.loads(sftlab("status", str(folder), "--json", check=False).stdout)
    assert {r["status"] for r in waiting} <= {"queued", "running", "done"} and all(r["job_id"] for r in waiting)

    followed = sftlab("status", str(folder), "--wait", check=False)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    slurm_seconds = time.monotonic() - started
    final = {(r["experiment"], r["stage"]): r for r in json.loads(sftlab("status", str(folder), "--json").stdout)}
    assert {r["status"] for r in final.values()} == {"done"} and len(final) == 7

    # Dependency order, from the records the jobs wrote: each stage started after the one before it ended,
    # and the joint score after both experiments' judges.
    def entry(experiment, stage):
        return status_of(outputs, experiment)[stage]

    for name in ("fast", "slow"):
        for before, after in (("train", "infer"), ("infer", "judge")):
            assert entry(name, before)["finished"] <= entry(name, after)["started"]
            assert entry(name, after)["after"] == [entry(name, before)["job_id"]]
        assert entry(name, "judge")["finished"] <= entry("mini-study", "score")["started"]
        run_dir = outputs / name / entry(name, "train")["run"]
        log = outputs / name / entry(name, "train")["log"]
        assert log.parent == run_dir and "train" in log.read_text()  # the job's output is in its run record
        [script] = run_dir.glob("*_submission.sh")
        params = load_params(folder / f"{name}.yaml", ["executor.backend=slurm"])
        assert script.read_text() == executor.sbatch_text(params, "train", run_dir)  # what the golden test checks
    assert sorted(entry("mini-study", "score")["after"]) == sorted(entry(n, "judge")["job_id"] for n in ("fast", "slow"))
    index = (outputs / "index.html").read_text()
    assert f"job {entry('fast', 'train')['job_id']}" in index

    # The local run: the same rows, losses and scores.
    assert local_run.wait(timeout=900) == 0, (tmp_path / "local.log").read_text()[-3000:]
    local_seconds = time.monotonic() - started
    assert outputs_of(local) == outputs_of(outputs)
    print(f"\nstudy of 2 experiments, side by side: local run {local_seconds:.0f} s, local Slurm {slurm_seconds:.0f} s "
          "(from submission to the end)")


@pytest.mark.slow
def test_a_requeued_training_resumes_from_its_newest_checkpoint(slurm, tmp_path, outputs, tiny_model_path, monkeypatch):
    params = tiny_params(tmp_path, tiny_model_path, max_steps=8, save_steps=2)
    sftlab("run", str(params), "--stages", "train", "--executor", "slurm")
    job = status_of(outputs, "tiny")["train"]["job_id"]
    train_dir = outputs / "tiny" / "train"
    deadline = time.time() + 300
    while not (train_dir / "checkpoint-2" / "trainer_state.json").exists():
        assert time.time() < deadline, sftlab("status", str(params), check=False).stdout
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], check=True)
    before = (train_dir / "train.log").read_text()
    sftlab("status", str(params), "--wait")

    entry = status_of(outputs, "tiny")["train"]
    assert entry["status"] == "done" and entry["job_id"] == job and entry["requeued"] == 1
    assert len(entry["history"]) == 1  # one run record: the requeued job ran into the same one
    summary = json.loads((train_dir / "train_summary.json").read_text())
    resumed = summary["resumed_from_step"]
    assert resumed and resumed % 2 == 0 and resumed < 8, summary
    state = json.loads((train_dir / "trainer_state.json").read_text())
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged == list(range(1, 9))  # every step logged once
    reached = max([int(line.split("[sftlab] step ")[1].split("/")[0]) for line in before.splitlines()
                   if line.startswith("[sftlab] step ")] or [0])
    lost = max(reached - resumed, 0)
    assert lost < 2 + 2  # at most the save interval (and the steps done while the requeue was on its way)

    # The same training uninterrupted: the same loss at every step.
    monkeypatch.setenv("SFTLAB_OUTPUTS", str(tmp_path / "uninterrupted"))
    runner.run(params, stages=["train"])
    whole = json.loads((tmp_path / "uninterrupted" / "tiny" / "train" / "trainer_state.json").read_text())
    assert [e["loss"] for e in state["log_history"] if "loss" in e] == \
        [e["loss"] for e in whole["log_history"] if "loss" in e]
    print(f"\nrequeue: resumed from step {resumed}, steps trained before the requeue {reached}, lost {lost}")


def processes_of(outputs: Path) -> list[str]:
    """Command lines of the processes that run with this test's outputs folder (its jobs and their children)."""
    marker = f"SFTLAB_OUTPUTS={outputs}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_cancel_leaves_no_job_and_no_process(slurm, tmp_path, outputs, tiny_model_path):
    params = tiny_params(tmp_path, tiny_model_path, max_steps=100000, save_steps=100000)
    sftlab("run", str(params), "--stages", "train,infer", "--executor", "slurm")
    deadline = time.time() + 300
    while not any("torch.distributed.run" in p for p in processes_of(outputs)):
        assert time.time() < deadline, sftlab("status", str(params), check=False).stdout
        time.sleep(0.5)
    shown = {r["stage"]: r["status"] for r in json.loads(sftlab("status", str(params), "--json", check=False).stdout)}
    assert shown == {"train": "running", "infer": "queued"}  # asked by a process that did not submit

    cancelled = sftlab("cancel", str(params))
    assert "cancelled" in cancelled.stdout
    jobs = [status_of(outputs, "tiny")[s]["job_id"] for s in ("train", "infer")]
    live = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout
    assert not any(line.split()[0] in jobs for line in live.splitlines()), live
    assert processes_of(outputs) == []
    stages = status_of(outputs, "tiny")
    assert stages["train"]["status"] == "cancelled" and stages["infer"]["status"] == "cancelled"
    assert "before it started" in stages["infer"]["error"]


FAILING_TRAIN = """\
params_file = None
experiment = None
base = None
seed = None
model = {}
data = {}
train = {}
infer = {}
judge = {}
score = {}
executor = {}
"""


def test_a_failing_stage_marks_its_dependants_not_run_with_its_log_in_the_index(slurm, tmp_path, outputs):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for stage in runner.STAGES:
        nb = new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        body = "raise RuntimeError('no GPU left on node 3')" if stage == "infer" else f"print('{stage} ran')"
        nb.cells = [new_code_cell(FAILING_TRAIN, metadata={"tags": ["parameters"]}), new_code_cell(body)]
        nbformat.write(nb, notebooks / f"{stage}.ipynb")
    params = tmp_path / "exp.yaml"
    params.write_text("experiment: broken\nexecutor: {backend: slurm, time: 10}\n")

    executor.run(params, notebooks=notebooks, echo=lambda line: None)
    rows = executor.follow([paths.ExperimentLayout.of("broken")], echo=lambda line: None, poll_s=1)
    shown = {r.stage: r for r in rows}
    assert [shown[s].status for s in runner.STAGES] == ["done", "failed", "not run", "not run"]
    stages = status_of(outputs, "broken")
    assert "RuntimeError: no GPU left on node 3" in stages["infer"]["error"]
    assert "waits for broken infer" in stages["judge"]["error"] and "which failed" in stages["judge"]["error"]
    log = outputs / "broken" / stages["infer"]["log"]
    # `follow` returns once the jobs have left the queue: a failed job records its failure before it rebuilds the
    # index and before submitit prints the exception into its output, and both are read here at once.
    live = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert not set(live) & {stages[s]["job_id"] for s in runner.STAGES}, live
    assert "no GPU left on node 3" in log.read_text()
    index = (outputs / "index.html").read_text()
    assert f'broken/{stages["infer"]["log"]}' in index and index.count('class="not-run"') >= 2
