"""What a checkpoint keeps (train.keep_optimizer): the optimizer, scheduler and RNG state only in the newest
complete checkpoint, removed from an older one only once a newer one is complete, so a kill at any moment
leaves a checkpoint to resume from exactly; a weights-only checkpoint is refused as a resume point, by name."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import tiny_params
from transformers import AutoModelForCausalLM

from sftlab import checkpoints, data, train
from sftlab.config import load_params
from sftlab.train import launch, trainer
from sftlab.train import stage as train_stage

RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "trainer_state.json")


def fake_checkpoint(train_dir: Path, step: int, complete: bool = True) -> Path:
    folder = train_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(64))
    (folder / "config.json").write_text("{}")
    for name in RESUME_ONLY:
        (folder / name).write_bytes(b"state")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_pruning_keeps_the_newest_complete_checkpoint_resumable(tmp_path):
    train_dir = tmp_path / "train"
    first, second = fake_checkpoint(train_dir, 10), fake_checkpoint(train_dir, 20)
    fingerprint = checkpoints.content_fingerprint(first)
    saving = fake_checkpoint(train_dir, 30, complete=False)  # a save in progress (or killed): not yet a checkpoint

    assert checkpoints.prune_resume_state(train_dir) == [first]
    assert checkpoints.resume_state(first) == [] and (first / "model.safetensors").exists()
    assert checkpoints.is_complete(first) and checkpoints.content_fingerprint(first) == fingerprint
    assert [p.name for p in checkpoints.resume_state(second)] == ["optimizer.pt", "rng_state.pth", "scheduler.pt"]
    assert len(checkpoints.resume_state(saving)) == 3
    assert checkpoints.prune_resume_state(train_dir) == []  # nothing left to do: nothing said

    with pytest.raises(ValueError, match=r"checkpoint-10 holds weights only.*train.resume: auto.*"
                                         r"model.name_or_path: .*checkpoint-10.*keep_optimizer: all"):
        checkpoints.check_resumable(first)
    checkpoints.check_resumable(second)


def test_until_done_removes_the_last_checkpoints_state_once_the_run_has_saved_its_last_step(tmp_path, capsys):
    """keep_optimizer: until_done, on the trainer's own argument and state objects: while the run goes on it
    prunes as `newest` does; a run stopped before its last step, or whose last save is incomplete, keeps its
    newest checkpoint resumable; once the last step is saved, that checkpoint keeps weights only as well."""
    from transformers import TrainerState, TrainingArguments

    train_dir = tmp_path / "train"
    args = TrainingArguments(output_dir=str(train_dir), report_to=[])
    until_done, newest = trainer.PruneResumeState("until_done"), trainer.PruneResumeState("newest")
    first, second = fake_checkpoint(train_dir, 10), fake_checkpoint(train_dir, 20)

    stopped = TrainerState(global_step=20, max_steps=30)  # e.g. a time limit or an early stop at step 20
    until_done.on_save(args, stopped, None)
    until_done.on_train_end(args, stopped, None)
    assert checkpoints.resume_state(first) == [] and checkpoints.has_optimizer_state(second)

    last = fake_checkpoint(train_dir, 30, complete=False)  # the last step, its save not complete
    done = TrainerState(global_step=30, max_steps=30)
    until_done.on_train_end(args, done, None)
    assert checkpoints.has_optimizer_state(second) and checkpoints.has_optimizer_state(last)

    (last / "trainer_state.json").write_text(json.dumps({"global_step": 30, "max_steps": 30}))
    newest.on_save(args, done, None)
    newest.on_train_end(args, done, None)  # the default keeps the last checkpoint resumable, to extend the run
    assert checkpoints.resume_state(second) == [] and checkpoints.has_optimizer_state(last)

    until_done.on_train_end(args, done, None)
    assert checkpoints.resume_state(last) == [] and checkpoints.is_complete(last)
    assert "checkpoint-30 keeps weights only too" in capsys.readouterr().out
    assert train_stage.finished(train_dir)  # re-running the same params trains nothing; extending is refused, by name:
    with pytest.raises(ValueError, match="checkpoint-30 holds weights only.*until_done"):
        checkpoints.check_resumable(last)
    with pytest.raises(ValueError, match="one of newest, all, until_done"):
        trainer.PruneResumeState("last")


@pytest.mark.slow
def test_a_kill_during_the_save_of_a_checkpoint_resumes_from_the_one_before(tmp_path, outputs, tiny_model_path):
    params = load_params(tiny_params(tmp_path, tiny_model_path, max_steps=6, save_steps=2, logging_steps=1))
    examples, _ = data.load_splits(params.data, params.seed)
    plan = train.plan(params, examples, str(tiny_model_path))
    train.preflight(plan, label_audit=False)
    # The save of checkpoint-4 stops where it writes the optimizer state, after the weights: its optimizer file
    # is a named pipe that nothing reads, so opening it blocks, the moment a kill is most harmful.
    saving = plan.train_dir / "checkpoint-4"
    saving.mkdir(parents=True)
    os.mkfifo(saving / "optimizer.pt")
    train.release(plan)
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(plan.command, stdout=log, stderr=subprocess.STDOUT, env=launch.child_env(),
                                   start_new_session=True)
        try:
            deadline = time.time() + 240
            while not (saving / "model.safetensors").exists():
                assert process.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.time() < deadline, "checkpoint-4 was never being saved"
                time.sleep(0.1)
            time.sleep(1)
            assert process.poll() is None  # still in the save of checkpoint-4
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert [c.name for c in checkpoints.list_checkpoints(plan.train_dir)] == ["checkpoint-2"]
    assert checkpoints.has_optimizer_state(plan.train_dir / "checkpoint-2")  # kept: checkpoint-4 never completed

    lines = []
    train.run(train.plan(params, examples, str(tiny_model_path)), echo=lines.append)
    assert any("removed checkpoint-4" in line for line in lines)
    assert any("resuming from" in line and line.endswith("checkpoint-2") for line in lines)
    state = json.loads((plan.train_dir / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 7))

    done = checkpoints.list_checkpoints(plan.train_dir)
    assert [c.name for c in done] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [checkpoints.has_optimizer_state(c) for c in done] == [False, False, True]
    assert any("keep weights only" in line and "keep_optimizer: newest" in line for line in lines)
    for checkpoint in done[:-1]:
        assert checkpoints.resume_state(checkpoint) == []
        assert all((checkpoint / name).exists() for name in MODEL_FILES), sorted(os.listdir(checkpoint))
        AutoModelForCausalLM.from_pretrained(checkpoint)  # what infer reads is all there
    assert {p.name for p in checkpoints.resume_state(done[-1])} >= set(RESUME_ONLY)

    # A weights-only checkpoint is refused as a resume point, with what to do instead: named by path...
    script_args = trainer.ScriptArguments(model_name_or_path=str(tiny_model_path), train_file="x",
                                          resume=str(done[0]))
    with pytest.raises(ValueError, match="checkpoint-2 holds weights only"):
        trainer.resume_from(script_args, str(plan.train_dir))
    # ...or as the newest one left (the newest removed by hand): before anything is launched.
    for path in (done[-1], plan.train_dir / "trainer_state.json"):
        subprocess.run(["rm", "-r", str(path)], check=True)
    with pytest.raises(ValueError, match="checkpoint-4 holds weights only"):
        train.preflight(train.plan(params, examples, str(tiny_model_path)), label_audit=False)
