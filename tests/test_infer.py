"""Infer stage: checkpoint and sample selection, rows and metrics, resuming (also after SIGKILL), errors,
batched generation against one prompt at a time, the HTML side-by-side view, and the notebook."""

import html
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_params
from transformers import AutoTokenizer

from sftlab import data, infer, jsonl, models, runner
from sftlab.infer import views as infer_views
from sftlab.config import load_params

ROW_FIELDS = {"id", "checkpoint", "prompt", "reference", "output", "n_tokens", "finish_reason", "meta",
              "eos_terminated", "rep_2", "rep_3", "rep_4", "seq_rep_4", "distinct_1", "distinct_2", "length_ratio"}


def params_file(tmp_path: Path, model_path: Path, **infer_settings) -> Path:
    """The tiny params file with an infer section."""
    path = tiny_params(tmp_path, model_path)
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params["infer"] = {"num_samples": 6, "batch_size": 4, "max_new_tokens": 8, **infer_settings}
    path.write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return path


def make_params(tmp_path, model_path, **infer_settings):
    return load_params(params_file(tmp_path, model_path, **infer_settings))


def add_checkpoints(params, model_path: Path, steps=(1, 2)) -> list[Path]:
    """Trained checkpoints, cheaply: copies of the tiny model with the trainer's state file."""
    made = []
    for step in steps:
        folder = params.output_dir / "train" / f"checkpoint-{step}"
        shutil.copytree(model_path, folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        made.append(folder)
    return made


class FakeEngine:
    """Answers every prompt with the same text and stops; records the batches it was given."""

    def __init__(self, tokenizer, answer="The capital is Seoul. 수도는 서울입니다."):
        self.tokenizer, self.answer, self.batches = tokenizer, answer, []

    def generate(self, prompts, settings):
        self.batches.append(len(prompts))
        ids = self.tokenizer(self.answer, add_special_tokens=False)["input_ids"]
        return [infer.Generation(token_ids=ids, text=self.answer, finish_reason="eos") for _ in prompts]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def fake_engines(tokenizer, answer=FakeEngine("").answer):
    made = {}

    def make(path):
        made[path] = FakeEngine(tokenizer, answer)
        return made[path]

    return make, made


def run_inference(params, **kwargs) -> dict[str, Path]:
    """Plan and run the infer stage; {checkpoint: generations file}."""
    return infer.run(infer.plan(params), **kwargs).files


def refuse_to_load(path):
    raise AssertionError(f"the model {path} should not have been loaded")


def read_jsonl(path: Path) -> list[dict]:
    return jsonl.read_rows(path)


# ----------------------------------------------------------------------------------------------
# What runs
# ----------------------------------------------------------------------------------------------


def test_checkpoint_selection_always_starts_with_the_base_model(tmp_path, outputs, tiny_model_path):
    params = make_params(tmp_path, tiny_model_path)
    assert [t.name for t in infer.select_checkpoints(params)] == ["base"]  # nothing trained yet
    add_checkpoints(params, tiny_model_path, steps=(10, 2))
    (params.output_dir / "train" / "checkpoint-30").mkdir()  # a save cut by a kill: never selected

    def names(choice):
        params.infer.checkpoints = choice
        return [t.name for t in infer.select_checkpoints(params)]

    assert names("all") == ["base", "checkpoint-2", "checkpoint-10"]  # step order, not name order
    assert names("last") == ["base", "checkpoint-10"]
    assert names(["checkpoint-10"]) == ["base", "checkpoint-10"]
    assert names(["base", "checkpoint-2"]) == ["base", "checkpoint-2"]
    assert infer.select_checkpoints(params)[0].path == str(tiny_model_path)  # model.name_or_path
    with pytest.raises(ValueError) as e:
        names(["checkpoint-2", "checkpoint-148", "checkpoint-30"])
    message = str(e.value)
    assert "'checkpoint-148', 'checkpoint-30' not found" in message
    assert "available: checkpoint-2, checkpoint-10" in message and str(params.output_dir / "train") in message


def test_sample_selection_is_seeded_nested_and_in_file_order(tmp_path, outputs, tiny_model_path):
    params = make_params(tmp_path, tiny_model_path, num_samples=10)
    ten = infer.select_examples(params)
    assert [e.id for e in ten] == [e.id for e in infer.select_examples(params)]  # deterministic
    _, test = data.load_splits(params.data, params.seed)
    file_order = [e.id for e in test]
    assert sorted((e.id for e in ten), key=file_order.index) == [e.id for e in ten]
    params.infer.num_samples = 20
    assert {e.id for e in ten} < {e.id for e in infer.select_examples(params)}  # growing N keeps the first N
    params.infer.num_samples = None
    assert len(infer.select_examples(params)) == len(test) == 96
    assert {e.meta["lang"] for e in ten} == {"ko", "en"}


# ----------------------------------------------------------------------------------------------
# Rows, resuming
# ----------------------------------------------------------------------------------------------


def test_rows_for_the_base_model_and_every_checkpoint(tmp_path, outputs, tiny_model_path, tokenizer):
    params = make_params(tmp_path, tiny_model_path, num_samples=6, batch_size=4)
    add_checkpoints(params, tiny_model_path)
    make, engines = fake_engines(tokenizer)
    lines = []
    files = run_inference(params, echo=lines.append, make_engine=make)

    assert list(files) == ["base", "checkpoint-1", "checkpoint-2"]
    assert all(e.batches == [4, 2] for e in engines.values())  # batch_size 4, six samples
    chosen = {e.id: e for e in infer.select_examples(params)}
    for name, path in files.items():
        assert path == outputs / "tiny" / "generations" / f"{name}.jsonl"
        rows = read_jsonl(path)
        assert sorted(r["id"] for r in rows) == sorted(chosen)
        for row in rows:
            assert set(row) == ROW_FIELDS and row["checkpoint"] == name
            example = chosen[row["id"]]
            assert row["prompt"] == example.prompt and row["reference"] == example.reference
            assert row["meta"] == example.meta and row["meta"]["lang"] in ("ko", "en")
            assert row["finish_reason"] == "eos" and row["eos_terminated"] is True
            assert row["n_tokens"] == len(tokenizer(row["output"], add_special_tokens=False)["input_ids"])
        settings = json.loads(path.with_name(f"{name}.settings.json").read_text())
        assert settings["fingerprint"]["settings"] == {"max_new_tokens": 8, "do_sample": False, "repetition_penalty": 1.0}
    assert any("base: 6 samples" in line for line in lines)

    generations = infer_views.load_generations(params)
    assert list(dict.fromkeys(generations["checkpoint"])) == ["base", "checkpoint-1", "checkpoint-2"]
    assert list(generations["id"][:6]) == list(chosen)  # test-set order within a checkpoint
    assert {"lang", "category"} <= set(generations.columns)
    summary = infer_views.summarize(generations)
    assert list(summary.index) == ["base", "checkpoint-1", "checkpoint-2"]
    assert list(summary.columns) == ["termination_rate", "rep_2", "rep_3", "rep_4", "seq_rep_4", "distinct_1",
                                     "distinct_2", "mean_tokens", "length_ratio", "samples"]
    assert (summary["termination_rate"] == 1.0).all() and (summary["samples"] == 6).all()
    by_lang = infer_views.summarize(generations, by=["checkpoint", "lang"])
    assert by_lang.loc[("base", "ko"), "samples"] + by_lang.loc[("base", "en"), "samples"] == 6


def test_rerun_generates_only_missing_rows_and_loads_no_model_when_complete(tmp_path, outputs, tiny_model_path,
                                                                             tokenizer):
    params = make_params(tmp_path, tiny_model_path, num_samples=6)
    make, _ = fake_engines(tokenizer)
    path = run_inference(params, echo=lambda _: None, make_engine=make)["base"]
    before = path.read_bytes()

    lines = []
    run_inference(params, echo=lines.append, make_engine=refuse_to_load)
    assert path.read_bytes() == before
    assert lines == ["[sftlab] base: all 6 samples already in base.jsonl"]

    # A kill in the middle of a write leaves a torn last line; earlier rows stay.
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(rows[:3]) + rows[3][:25], encoding="utf-8")
    make, engines = fake_engines(tokenizer)
    run_inference(params, echo=lambda _: None, make_engine=make)
    assert sum(e.batches[0] for e in engines.values()) == 3  # only the three lost rows
    ids = [r["id"] for r in read_jsonl(path)]
    assert len(ids) == len(set(ids)) == 6

    # Growing num_samples keeps the rows already written.
    params.infer.num_samples = 9
    make, engines = fake_engines(tokenizer)
    run_inference(params, echo=lambda _: None, make_engine=make)
    assert [e.batches for e in engines.values()] == [[3]]
    assert len(read_jsonl(path)) == 9


def test_the_same_plan_run_twice_generates_and_moves_nothing_the_second_time(tmp_path, outputs, tiny_model_path,
                                                                             tokenizer):
    params = make_params(tmp_path, tiny_model_path, num_samples=4)
    make, _ = fake_engines(tokenizer)
    run_inference(params, echo=lambda _: None, make_engine=make)
    params.infer.max_new_tokens = 16  # the rows on disk are stale now: run sets them aside and generates again
    planned = infer.plan(params)
    assert not list(outputs.rglob("previous-*")) and planned.estimate()["to_generate"] == 4  # planning moved nothing
    make, engines = fake_engines(tokenizer)
    infer.run(planned, echo=lambda _: None, make_engine=make)
    path = planned.jobs[0].path
    before = path.read_bytes()
    lines = []
    summary = infer.run(planned, echo=lines.append, make_engine=refuse_to_load)  # a notebook cell run again
    assert path.read_bytes() == before and summary.generated == {}
    assert len(list(path.parent.glob("previous-*/base.jsonl"))) == 1  # the new rows were not set aside again
    assert lines == ["[sftlab] base: all 4 samples already in base.jsonl"]


def test_changed_settings_move_old_rows_aside(tmp_path, outputs, tiny_model_path, tokenizer):
    params = make_params(tmp_path, tiny_model_path, num_samples=4)
    make, _ = fake_engines(tokenizer)
    path = run_inference(params, echo=lambda _: None, make_engine=make)["base"]
    params.infer.max_new_tokens = 16
    make, engines = fake_engines(tokenizer)
    lines = []
    run_inference(params, echo=lines.append, make_engine=make)
    assert [e.batches for e in engines.values()] == [[4]]  # generated again
    aside = list((path.parent).glob("previous-*/base.jsonl"))
    assert len(aside) == 1 and len(read_jsonl(aside[0])) == 4
    assert any("generated with other settings" in line for line in lines)
    # Sampling settings do not matter to greedy rows, nor does the batch size.
    params.infer.temperature, params.infer.batch_size = 0.7, 1
    run_inference(params, echo=lambda _: None, make_engine=refuse_to_load)


def test_a_corrupt_row_in_the_middle_is_an_error_naming_file_and_line(tmp_path, outputs, tiny_model_path, tokenizer):
    params = make_params(tmp_path, tiny_model_path, num_samples=4)
    make, _ = fake_engines(tokenizer)
    path = run_inference(params, echo=lambda _: None, make_engine=make)["base"]
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text(rows[0] + "{not json\n" + "".join(rows[1:]), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON row"):
        run_inference(params, echo=lambda _: None, make_engine=make)


@pytest.mark.slow
def test_sigkill_loses_at_most_the_batch_in_flight_and_never_duplicates(tmp_path, outputs, tiny_model_path):
    file = params_file(tmp_path, tiny_model_path, num_samples=40, batch_size=2, max_new_tokens=16)
    path = outputs / "tiny" / "generations" / "base.jsonl"
    # The real stage and engine in a child process; a short pause per batch keeps the kill inside the run.
    code = f"""
import time
from sftlab import config, infer

class Slow(infer.HFEngine):
    def generate(self, prompts, settings):
        time.sleep(0.1)
        return super().generate(prompts, settings)

infer.run(infer.plan(config.load_params({str(file)!r})), make_engine=Slow)
"""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (path.exists() and path.read_bytes().count(b"\n") >= 6):
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = path.read_bytes().count(b"\n")
    assert 6 <= written < 40, "the kill should land in the middle of the run"

    run_inference(load_params(file), echo=lambda _: None)
    rows = read_jsonl(path)  # every line is valid JSON
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 40
    assert set(ids) == {e.id for e in infer.select_examples(load_params(file))}


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_a_checkpoint_that_does_not_load_is_an_error_naming_it(tmp_path, outputs, tiny_model_path):
    params = make_params(tmp_path, tiny_model_path, num_samples=2, max_new_tokens=2)
    [broken] = add_checkpoints(params, tiny_model_path, steps=(5,))
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(models.ModelError, match=rf"{broken}: cannot load"):
        run_inference(params, echo=lambda _: None)
    assert len(read_jsonl(outputs / "tiny" / "generations" / "base.jsonl")) == 2  # the base model ran first


def test_an_empty_test_set_is_an_error_naming_the_file(tmp_path, outputs, tiny_model_path):
    empty = tmp_path / "empty-test.jsonl"
    empty.write_text("\n", encoding="utf-8")
    params = load_params(params_file(tmp_path, tiny_model_path), [f"data.test={empty}"])
    with pytest.raises(data.DataError, match=rf"{empty}: no rows"):
        run_inference(params, echo=lambda _: None, make_engine=refuse_to_load)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_batched_greedy_equals_one_at_a_time_and_stops_on_end_of_turn(builtin_model_path):
    """On the real model: the tiny random one answers every prompt with the same token, which proves little."""
    engine = infer.HFEngine(str(builtin_model_path))
    prompts = [[{"role": "user", "content": q}] for q in
               ("What is the capital of France?", "영국의 수도는 어디인가요?",
                "Name three colours of the rainbow, please.")]
    settings = infer.GenerationSettings(max_new_tokens=24)
    batched = engine.generate(prompts, settings)
    assert batched == [engine.generate([p], settings)[0] for p in prompts]
    france, korean, _ = batched
    assert france.finish_reason == "eos" and "Paris" in france.text and "<|im_end|>" not in france.text
    assert len(france.token_ids) < 24 and engine.stop_ids[0] not in france.token_ids
    assert korean.finish_reason == "length" and len(korean.token_ids) == 24  # byte-level Korean: long


def test_sampling_is_seeded(tiny_model_path):
    engine = infer.HFEngine(str(tiny_model_path))
    prompts = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "안녕하세요"}]]
    settings = infer.GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=100, top_p=0.95,
                                        repetition_penalty=1.2, seed=3)
    first = engine.generate(prompts, settings)
    assert first == engine.generate(prompts, settings)
    assert first != engine.generate(prompts, infer.GenerationSettings(**{**settings.__dict__, "seed": 4}))


# ----------------------------------------------------------------------------------------------
# Replicas (infer.data_parallel)
# ----------------------------------------------------------------------------------------------


def test_replicas_answer_in_batch_order_and_a_failure_stops_after_the_answers_before_it():
    from sftlab.infer import parallel

    def slow(batch):  # the first replica is slow: batches finish out of order
        time.sleep(0.05 * len(batch))
        return [x * 10 for x in batch]

    def fast(batch):
        if 99 in batch:
            raise RuntimeError("replica lost")
        return [x * 10 for x in batch]

    batches = [[1, 2, 3], [4], [5], [6, 7]]
    assert list(parallel.in_batch_order(batches, [slow, fast])) == [(0, [10, 20, 30]), (1, [40]), (2, [50]),
                                                                    (3, [60, 70])]
    seen = []
    with pytest.raises(RuntimeError, match="replica lost"):
        for index, answer in parallel.in_batch_order([[1], [2], [99], [3]], [fast]):
            seen.append(index)
    assert seen == [0, 1]


@pytest.mark.slow
def test_two_replica_processes_write_the_same_rows_as_one(tmp_path, outputs, tiny_model_path):
    """Sampling (seeded per batch) on the tiny model gives every batch rows of its own: equal files prove each
    batch is answered as one engine answers it, and written in the same order."""
    settings = {"num_samples": 10, "batch_size": 3, "do_sample": True, "temperature": 1.5, "max_new_tokens": 6}
    one = make_params(tmp_path, tiny_model_path, **settings)
    add_checkpoints(one, tiny_model_path, steps=(2,))
    infer.run(infer.plan(one), echo=lambda line: None)
    first = {p.name: p.read_text() for p in (one.output_dir / "generations").glob("*.jsonl")}
    assert len(first) == 2 and len({r["output"] for r in read_jsonl(one.output_dir / "generations" / "base.jsonl")}) > 1

    two = load_params(params_file(tmp_path, tiny_model_path, **settings, data_parallel=2))
    shutil.rmtree(one.output_dir / "generations")
    summary = infer.run(infer.plan(two), echo=lambda line: None)
    assert summary.generated == {"base": 10, "checkpoint-2": 10}
    assert {p.name: p.read_text() for p in (two.output_dir / "generations").glob("*.jsonl")} == first


def test_a_replica_that_fails_is_an_error_naming_it(tmp_path):
    from sftlab.infer import parallel

    replicas = parallel.HFReplicas(2, dtype="float32")
    try:
        with pytest.raises(models.ModelError, match=r"infer replica 0 \(cpu\), loading .*nowhere"):
            replicas(str(tmp_path / "nowhere"))
    finally:
        replicas.close()
    assert replicas.processes == []


def test_replica_settings_are_checked_against_the_engine_and_the_job(tmp_path):
    from sftlab import executor
    from sftlab.config import ParamsError, validate

    with pytest.raises(ParamsError, match="infer.tensor_parallel: 2: the HF engine holds one whole model per device"):
        validate({"experiment": "x", "infer": {"tensor_parallel": 2}})
    with pytest.raises(ParamsError, match=r"executor.infer.gpus_per_node: 2 GPUs for .* = 8: ask for 8"):
        validate({"experiment": "x", "infer": {"engine": "vllm", "data_parallel": 4, "tensor_parallel": 2},
                  "executor": {"backend": "slurm", "infer": {"gpus_per_node": 2}}})
    params = validate({"experiment": "x", "infer": {"engine": "vllm", "data_parallel": 2, "tensor_parallel": 2},
                       "executor": {"backend": "slurm", "gpus_per_node": 8}})
    assert executor.submitit_parameters(params, "infer", [])["gpus_per_node"] == 4  # its replicas' GPUs
    assert executor.submitit_parameters(params, "train", [])["gpus_per_node"] == 8
    text = executor.sbatch_text(params, "infer", tmp_path / "run")
    assert "#SBATCH --gpus-per-node=4" in text


# ----------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------


def test_side_by_side_escapes_model_output_and_keeps_korean():
    rows = [{"id": "ko-1", "checkpoint": name, "prompt": [{"role": "user", "content": "영국의 수도는?"}],
             "reference": "런던입니다.", "output": output, "finish_reason": reason, "n_tokens": 7}
            for name, output, reason in (("base", "<script>alert('x')</script>", "length"),
                                         ("checkpoint-1", "런던 & <b>파리</b>", "eos"))]
    page = infer_views.side_by_side(pd.DataFrame(rows))
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "런던 &amp; &lt;b&gt;파리&lt;/b&gt;" in page
    assert "영국의 수도는?" in page and "런던입니다." in page  # UTF-8 text, not entities
    assert '<div class="finish length">length · 7 tokens</div>' in page
    assert page.index("<th>base</th>") < page.index("<th>checkpoint-1</th>")


@pytest.mark.slow
def test_notebook_runs_through_the_runner(tmp_path, outputs, tiny_model_path, tokenizer, caplog, monkeypatch):
    file = params_file(tmp_path, tiny_model_path, num_samples=4, batch_size=2, max_new_tokens=8)
    params = load_params(file)
    # The base model's rows come first from a fake engine that answers with markup; the notebook
    # generates the checkpoints' rows itself and must show that markup as text.
    make, _ = fake_engines(tokenizer, answer="<script>alert('sftlab')</script> 답")
    run_inference(params, echo=lambda _: None, make_engine=make)
    add_checkpoints(params, tiny_model_path)

    caplog.set_level(logging.INFO)  # what `sftlab run` shows in the terminal: papermill's log
    monkeypatch.setenv("SFTLAB_PROGRESS_EVERY_S", "0")  # a progress line per batch (default: one per 10 s)
    runner.run(file, stages=["infer"])

    terminal = "\n".join(r.getMessage() for r in caplog.records)
    assert f"[sftlab] infer checkpoint-1: loading {params.output_dir / 'train' / 'checkpoint-1'} for 4 samples" in terminal
    assert "infer checkpoint-1: 0/4 samples (0%), 0s elapsed, ETA unknown" in terminal
    assert re.search(r"infer checkpoint-2: 2/4 samples \(50%\), [\d.]+ samples/s, \d+s elapsed, ETA \d+s", terminal)
    assert re.search(r"infer checkpoint-2: 4/4 samples \(100%\), [\d.]+ samples/s, done in \d+s", terminal)
    assert "base: all 4 samples already in base.jsonl" in terminal

    generations = outputs / "tiny" / "generations"
    for name in ("base", "checkpoint-1", "checkpoint-2"):
        assert len(read_jsonl(generations / f"{name}.jsonl")) == 4
    report = (outputs / "tiny" / "reports" / "infer.html").read_text(encoding="utf-8")
    assert "<script>alert(" not in report
    # nbconvert re-serializes HTML outputs: the quotes come back as ', the markup stays escaped.
    assert "&lt;script&gt;alert('sftlab')&lt;/script&gt; 답" in report
    assert "termination_rate" in report and "sftlab-side-by-side" in report
    reference = read_jsonl(generations / "checkpoint-1.jsonl")
    assert any(r["meta"]["lang"] == "ko" for r in reference)
    for row in reference:
        assert html.escape(row["reference"]) in report  # Korean as written, not as entities
    assert "checkpoint-2: 4 samples" in report
