"""The judge stage against a real HTTP server (tests/judge_server.py on 127.0.0.1): structured outputs
and their fallback, every fault mode, retries, budget, cache and resume, secrets, and the notebook."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from judge_server import KEY, KEY_ENV, FakeJudgeServer
from sftlab import config, judge, jsonl

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "judged"
MARK = "(FAULTY)"  # the row whose answer carries this is the one a scripted fault hits


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def demo_rows(n: int) -> list[dict]:
    with open(ROOT / "data" / "demo" / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


def generation_row(sample: dict, checkpoint: str, output: str) -> dict:
    """A row as the infer stage writes it."""
    return {"id": sample["id"], "checkpoint": checkpoint, "prompt": [{"role": "user", "content": sample["question"]}],
            "reference": sample["answer"], "output": output, "n_tokens": 12, "finish_reason": "eos",
            "eos_terminated": True, "rep_2": 0.0, "rep_3": 0.0, "rep_4": 0.0, "seq_rep_4": 0.0, "distinct_1": 1.0,
            "distinct_2": 1.0, "length_ratio": 1.0, "meta": {"lang": sample["lang"], "category": sample["category"]}}


def write_generations(outputs: Path, checkpoint: str, rows: list[dict], experiment: str = EXPERIMENT) -> Path:
    folder = outputs / experiment / "generations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{checkpoint}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare(outputs: Path, n: int = 4, faulty: int | None = None) -> int:
    """base (reference answers) and checkpoint-10 (answers with a suffix): 2n rows. Returns 2n."""
    samples = demo_rows(n)
    write_generations(outputs, "base", [generation_row(s, "base", s["answer"]) for s in samples])
    write_generations(outputs, "checkpoint-10", [
        generation_row(s, "checkpoint-10", s["answer"] + (f" {MARK}" if i == faulty else " 끝."))
        for i, s in enumerate(samples)])
    return 2 * n


def make_params(server: FakeJudgeServer | None = None, experiment: str = EXPERIMENT, **judge_settings):
    settings = {"backend": "openai", "api_key_env": KEY_ENV, "concurrency": 4, "timeout_s": 5.0, "max_retries": 2,
                "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    if server is not None:
        settings["base_url"] = server.base_url
    return config.validate({"experiment": experiment, "judge": {**settings, **judge_settings}})


def judge_lines(outputs: Path, experiment: str = EXPERIMENT) -> int:
    return sum(len(jsonl.read_rows(p)) for p in (outputs / experiment / "judge").glob("*.jsonl"))


def files_containing(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module", autouse=True)
def kiwi_loaded():
    """Kiwi's model takes ~2 s to load, once per process; load it here rather than inside one test."""
    from sftlab.judge import reference

    reference.tokenize("한국어")


# --------------------------------------------------------------------------------------------
# Rubric
# --------------------------------------------------------------------------------------------


def test_the_rubric_builds_an_evaluation_model_with_a_reason_before_each_score():
    rubric = judge.load_rubric("params/rubrics/qa_ko.yaml")
    assert [c.name for c in rubric.criteria] == ["정확성", "완전성", "관련성", "한국어 유창성", "간결성", "반복·종결"]
    model = rubric.evaluation_model
    assert list(model.model_fields) == rubric.keys
    assert list(model.model_fields["accuracy"].annotation.model_fields) == ["reason", "score"]
    schema = rubric.response_schema()
    assert schema["additionalProperties"] is False and schema["required"] == rubric.keys
    assert all(p["additionalProperties"] is False and p["required"] == ["reason", "score"]
               for p in schema["properties"].values())
    assert "길다고 점수를 올리지" in rubric.system_prompt and "한국어가 아닌 다른 언어" in rubric.system_prompt
    english = judge.load_rubric("params/rubrics/qa_en.yaml")
    assert english.keys == rubric.keys and english.language == "en"
    assert "Length must never raise a score" in english.system_prompt


def test_parse_takes_fenced_json_and_explains_what_is_wrong():
    rubric = judge.load_rubric("params/rubrics/qa_en.yaml")
    answer = {k: {"reason": "ok", "score": 4} for k in rubric.keys}
    scores, reasons = rubric.parse("```json\n" + json.dumps(answer) + "\n```")
    assert scores == {k: 4 for k in rubric.keys} and reasons["accuracy"] == "ok"
    assert rubric.parse("Here it is: " + json.dumps(answer))[0] == scores
    assert rubric.overall(scores) == pytest.approx(0.75)
    answer["fluency"]["score"] = 9
    with pytest.raises(judge.InvalidJudgment, match="fluency.score: Input should be less than or equal to 5"):
        rubric.parse(json.dumps(answer))


def test_a_broken_rubric_is_reported_with_its_file_and_field(tmp_path):
    data = yaml.safe_load((ROOT / "params" / "rubrics" / "qa_en.yaml").read_text(encoding="utf-8"))
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({**data, "user_template": "{conversation} {output}"}), encoding="utf-8")
    with pytest.raises(judge.RubricError, match="user_template: missing placeholder\\(s\\) \\{reference\\}") as error:
        judge.load_rubric(path)
    assert str(error.value).startswith(f"{path}: ")
    data["criteria"][1]["key"] = "accuracy"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(judge.RubricError, match="criteria: duplicate key\\(s\\) accuracy"):
        judge.load_rubric(path)


# --------------------------------------------------------------------------------------------
# OpenAI backend over HTTP
# --------------------------------------------------------------------------------------------


def test_structured_requests_carry_the_strict_schema_and_the_key_from_the_environment(outputs, server, key):
    rows = prepare(outputs)
    params = make_params(server)
    summary = judge.run(judge.plan(params), progress=False)

    assert (summary.judged, summary.errors, summary.requests) == (rows, 0, rows)
    assert server.authorization == {f"Bearer {key}"}
    response_format = server.requests[0]["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    frame = judge.load_judgments(params)
    assert len(frame) == rows and set(frame["status"]) == {"judged"}
    first = frame.iloc[0]
    assert first["judge"] == {"backend": "openai", "model": "gpt-4o-mini", "rubric": "qa_en"}
    assert json.loads(first["raw"])["accuracy"]["score"] == first["scores"]["accuracy"] == first["score_accuracy"]
    assert first["usage"]["prompt_tokens"] > 0 and first["cost_usd"] > 0  # gpt-4o-mini is in the price table
    assert 0 <= first["overall"] <= 1
    ko = frame[frame["id"].str.startswith("ko-")].iloc[0]
    assert ko["judge"]["rubric"] == "qa_ko" and ko["meta"]["lang"] == "ko"
    korean_request = next(r for r in server.requests if "[평가할 답변]" in r["messages"][1]["content"])
    assert "정확성" in korean_request["messages"][0]["content"]


def test_the_estimate_comes_before_any_request(outputs, server, key):
    rows = prepare(outputs)
    planned = judge.plan(make_params(server))
    estimate = planned.estimate()
    assert (estimate["requests"], estimate["to_judge"], estimate["rows"]) == (rows, rows, rows)
    assert estimate["cost_usd"] > 0 and estimate["prompt_tokens"] > estimate["completion_tokens"] > 0
    assert server.request_count == 0 and server.probes == []  # planning sends nothing, not even the probe
    assert estimate["probe_requests"] == 0 and "not asked yet" in estimate["structured"]
    assert not (outputs / EXPERIMENT / "judge").exists()  # and writes nothing


def test_the_same_plan_run_twice_sends_and_writes_nothing_the_second_time(outputs, server, key):
    rows = prepare(outputs)
    planned = judge.plan(make_params(server))
    first = judge.run(planned, progress=False)
    assert (first.judged, first.requests, server.request_count, len(server.probes)) == (rows, rows, rows, 1)
    folder = outputs / EXPERIMENT / "judge"
    written = {p.name: p.read_bytes() for p in folder.iterdir()}
    said = []
    second = judge.run(planned, progress=False, echo=said.append)  # Ctrl+Enter on the run cell again
    assert (second.judged, second.from_cache, second.requests, second.up_to_date) == (0, 0, 0, rows)
    assert server.request_count == rows and len(server.probes) == 1  # not one request more, probe included
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == written  # no row appended, nothing rewritten
    assert said == [f"judge: nothing to do — all {rows} rows of the plan are judged in {folder}"]
    assert planned.estimate()["to_judge"] == 0  # the plan, refreshed by the run, says the same


def test_the_same_plan_run_twice_with_the_reference_judge_writes_nothing_the_second_time(outputs):
    rows = prepare(outputs, n=2)
    planned = judge.plan(make_params(None, backend="reference"))
    assert judge.run(planned, progress=False).judged == rows
    before = {p: p.read_bytes() for p in (outputs / EXPERIMENT / "judge").iterdir()}
    assert judge.run(planned, progress=False, echo=lambda line: None).judged == 0
    assert {p: p.read_bytes() for p in (outputs / EXPERIMENT / "judge").iterdir()} == before


TRANSIENT = ["rate_limit", "server_error", "malformed_body", "drop", "malformed_json", "schema_violation",
             "reject_response_format", pytest.param("slow", marks=pytest.mark.slow)]
PERSISTENT = TRANSIENT + ["refusal"]


def fault_params(fault: str, server: FakeJudgeServer):
    # Only the timeout test needs a short timeout; elsewhere a busy machine must not fake one.
    return make_params(server, timeout_s=0.4 if fault == "slow" else 5.0)


@pytest.mark.parametrize("fault", TRANSIENT)
def test_a_passing_fault_is_retried_or_repaired_within_the_run(fault, outputs, server, key):
    rows = prepare(outputs)
    server.add_fault(fault, times=2 if fault not in ("malformed_json", "schema_violation") else 1)
    params = fault_params(fault, server)
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.judged == rows and summary.errors == 0, judge.load_judgments(params)[["error"]]
    assert server.faults_served and summary.requests > rows

    server.reset_counts()
    assert judge.run(judge.plan(params), progress=False).requests == 0 and server.request_count == 0


@pytest.mark.parametrize("fault", PERSISTENT)
def test_a_lasting_fault_leaves_error_rows_that_a_rerun_repairs_alone(fault, outputs, server, key):
    rows = prepare(outputs, faulty=1)
    server.add_fault(fault, match=MARK)
    params = fault_params(fault, server)
    judge.run(judge.plan(params), progress=False)

    frame = judge.load_judgments(params)
    assert len(frame) == rows and set(frame["status"]) <= {"judged", "error"}  # nothing lost, nothing skipped
    failed = frame[frame["status"] == "error"]
    if fault == "reject_response_format":
        assert failed.empty  # structured: auto fell back to JSON in the prompt
    else:
        assert list(failed["id"]) == [demo_rows(2)[1]["id"]] and list(failed["checkpoint"]) == ["checkpoint-10"]
        row = failed.iloc[0]
        assert row["scores"] is None and pd.isna(row["overall"]) and row["error"]  # unscored, never a zero
        if fault in ("malformed_json", "schema_violation", "refusal"):
            assert row["raw"]  # the judge's own words, to see why
            assert row["requests"] == (1 if fault == "refusal" else 2)  # one repair request, no more
        else:
            assert row["requests"] == 3  # max_retries 2

    server.clear_faults()
    server.reset_counts()
    summary = judge.run(judge.plan(params), progress=False)
    assert server.request_count == len(failed) == summary.requests
    assert all(MARK in r["messages"][1]["content"] for r in server.requests)
    repaired = judge.load_judgments(params)
    assert len(repaired) == rows and set(repaired["status"]) == {"judged"}
    assert judge_lines(outputs) == rows + len(failed)  # the repaired row is appended after the failed one


def test_without_structured_outputs_the_judge_asks_for_json_in_the_prompt(outputs, server, key):
    rows = prepare(outputs)
    server.add_fault("reject_response_format")
    params = make_params(server, concurrency=1)
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.judged == rows
    # The first judgment tries json_schema, then json_object, then the prompt; the rest go straight there.
    assert summary.requests == rows + 2
    assert [("response_format" in r) for r in server.requests[:3]] == [True, True, False]
    assert "```json" in server.requests[2]["messages"][0]["content"]
    assert set(judge.load_judgments(params)["structured"]) == {"prompt"}


def test_an_explicit_structured_mode_does_not_fall_back(outputs, server, key):
    rows = prepare(outputs)
    server.add_fault("reject_response_format")
    with pytest.raises(judge.JudgeFailed, match=rf"{rows}/{rows} rows failed — HTTP 400"):  # all failed
        judge.run(judge.plan(make_params(server, structured="json_schema")), progress=False)
    frame = judge.load_judgments(make_params(server))
    assert set(frame["status"]) == {"error"} and frame["error"].str.contains("HTTP 400").all()
    server.reset_counts()
    judge.run(judge.plan(make_params(server, structured="prompt")), progress=False)
    assert server.request_count == rows and not any("response_format" in r for r in server.requests)


def test_retry_after_is_honoured(outputs, server, key):
    write_generations(outputs, "base", [generation_row(demo_rows(1)[0], "base", "London.")])
    server.retry_after = "0.4"
    server.add_fault("rate_limit", times=1)
    started = time.monotonic()
    summary = judge.run(judge.plan(make_params(server, backoff_base_s=0.001, backoff_max_s=5.0)), progress=False)
    assert summary.judged == 1 and time.monotonic() - started >= 0.4
    server.reset_counts()
    server.retry_after = "30"  # a wait beyond backoff_max_s is cut to it
    server.add_fault("rate_limit", times=1)
    write_generations(outputs, "base", [generation_row(demo_rows(1)[0], "base", "London!")])
    started = time.monotonic()
    assert judge.run(judge.plan(make_params(server, backoff_max_s=0.2)), progress=False).judged == 1
    assert time.monotonic() - started < 5


def test_concurrency_is_bounded(outputs, key):
    with FakeJudgeServer(latency_s=0.05) as server:
        samples = demo_rows(12)
        write_generations(outputs, "base", [generation_row(s, "base", s["answer"]) for s in samples])
        judge.run(judge.plan(make_params(server, concurrency=3)), progress=False)
        assert server.request_count == 12 and server.max_in_flight == 3


def test_the_budget_stops_new_requests_and_a_rerun_finishes_the_rest(outputs, server, key):
    rows = prepare(outputs)
    prices = {"fake-judge": {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}}
    probe = make_params(server, experiment="probe", model="fake-judge", prices=prices, concurrency=1)
    write_generations(outputs, "base", [generation_row(demo_rows(1)[0], "base", "London.")], experiment="probe")
    one = judge.run(judge.plan(probe), progress=False).cost_usd
    server.reset_counts()

    params = make_params(server, model="fake-judge", prices=prices, concurrency=1, max_cost_usd=2.5 * one)
    summary = judge.run(judge.plan(params), progress=False)
    frame = judge.load_judgments(params)
    assert summary.stopped and "budget reached" in summary.stopped
    assert 2 <= summary.judged <= 4 and summary.judged + summary.not_judged == rows
    assert server.request_count == summary.judged
    waiting = frame[frame["status"] == "not_judged"]
    assert len(waiting) == summary.not_judged and waiting["overall"].isna().all()
    assert waiting["error"].str.contains("budget reached").all()

    server.reset_counts()
    judge.run(judge.plan(make_params(server, model="fake-judge", prices=prices)), progress=False)
    assert server.request_count == len(waiting)
    assert set(judge.load_judgments(params)["status"]) == {"judged"}


def test_a_budget_without_a_price_is_refused_before_sending(outputs, server, key):
    prepare(outputs, n=1)
    with pytest.raises(judge.JudgeConfigError, match="judge.prices.my-model"):
        judge.run(judge.plan(make_params(server, model="my-model", max_cost_usd=1.0)), progress=False)
    assert server.request_count == 0


def test_identical_answers_are_judged_once(outputs, server, key):
    samples = demo_rows(3)
    for checkpoint in ("base", "checkpoint-5"):
        write_generations(outputs, checkpoint, [generation_row(s, checkpoint, s["answer"]) for s in samples])
    params = make_params(server)
    summary = judge.run(judge.plan(params), progress=False)
    assert server.request_count == 3 and summary.judged == 6
    frame = judge.load_judgments(params)
    later = frame[frame["checkpoint"] == "checkpoint-5"]
    assert later["reused_from"].str.startswith("base/").all() and (later["cost_usd"] == 0).all()
    assert list(frame["scores"][frame["checkpoint"] == "base"]) == list(later["scores"])


def test_a_new_judge_model_or_rubric_judges_again_and_the_old_judgments_stay_cached(outputs, server, key, tmp_path):
    rows = prepare(outputs, n=2)
    judge.run(judge.plan(make_params(server)), progress=False)
    server.reset_counts()
    judge.run(judge.plan(make_params(server, model="gpt-4.1-mini")), progress=False)
    assert server.request_count == rows
    edited = yaml.safe_load((ROOT / "params" / "rubrics" / "qa_en.yaml").read_text(encoding="utf-8"))
    edited["criteria"][0]["description"] += " Dates must be exact."
    (tmp_path / "qa_en.yaml").write_text(yaml.safe_dump(edited, allow_unicode=True), encoding="utf-8")
    server.reset_counts()
    judge.run(judge.plan(make_params(server, model="gpt-4.1-mini", rubric_by_lang={"en": str(tmp_path / "qa_en.yaml")},
                          rubric="params/rubrics/qa_ko.yaml")), progress=False)
    assert server.request_count == rows // 2  # only the English rows have a new rubric
    server.reset_counts()
    summary = judge.run(judge.plan(make_params(server)), progress=False)  # back to the first settings: all cached
    assert server.request_count == 0 and summary.from_cache == rows


def test_a_rejected_key_stops_the_run_and_never_leaks(outputs, server, key):
    rows = prepare(outputs)
    server.add_fault("unauthorized")
    params = make_params(server, concurrency=1)
    with pytest.raises(judge.JudgeStopped, match=f"rejected the API key from \\${KEY_ENV}") as stopped:
        judge.run(judge.plan(params), progress=False)
    assert KEY not in str(stopped.value)
    frame = judge.load_judgments(params)
    assert len(frame) == rows and server.request_count == 1  # no request after the first refusal
    assert list(frame["status"]).count("error") == 1 and list(frame["status"]).count("not_judged") == rows - 1
    assert files_containing(outputs, KEY) == []


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_endpoint_trips_the_breaker_in_seconds_and_a_rerun_resumes(outputs, server, key):
    rows = prepare(outputs)
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    params = make_params(None, base_url=dead, concurrency=2, max_retries=5, backoff_base_s=0.2, backoff_max_s=1.0)
    started = time.monotonic()
    with pytest.raises(judge.JudgeStopped) as stopped:
        judge.run(judge.plan(params), progress=False)
    assert time.monotonic() - started < 10  # not rows x retries x backoff
    message = str(stopped.value)
    assert f"the judge endpoint {dead} is unreachable" in message and "connection failed" in message
    assert "--set judge.backend=reference" in message and "proxy" in message
    frame = judge.load_judgments(params)
    assert len(frame) == rows and set(frame["status"]) <= {"error", "not_judged"}  # every row written, none lost
    assert (frame["status"] == "not_judged").sum() >= rows - 3  # the rest were never sent

    summary = judge.run(judge.plan(make_params(server)), progress=False)  # the endpoint is back: a re-run resumes
    assert summary.judged == rows and server.request_count == rows


def test_a_live_endpoint_that_drops_connections_is_retried_not_tripped(outputs, server, key):
    rows = prepare(outputs)
    server.add_fault("drop", times=5)  # the connection is made, then dropped: the endpoint is there
    summary = judge.run(judge.plan(make_params(server, concurrency=1, max_retries=6)), progress=False)
    assert summary.judged == rows and summary.stopped is None


def test_a_run_where_every_row_fails_raises_after_writing_them_and_says_why(outputs, server, key):
    rows = prepare(outputs)
    server.add_fault("refusal")
    params = make_params(server)
    with pytest.raises(judge.JudgeFailed, match=rf"judge: {rows}/{rows} rows failed — the judge refused"):
        judge.run(judge.plan(params), progress=False)
    assert len(judge.load_judgments(params)) == rows
    server.clear_faults()
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.judged == rows and summary.failure_line() is None


def test_a_partial_failure_is_a_line_nobody_can_miss(outputs, server, key):
    rows = prepare(outputs, faulty=1)
    server.add_fault("refusal", match=MARK)
    summary = judge.run(judge.plan(make_params(server)), progress=False)
    assert summary.failure_line() == f"judge: 1/{rows} rows failed — the judge refused: I'm sorry, I can't help with that."
    assert summary.failure_line() in str(summary)


def test_the_openai_backend_without_a_key_or_endpoint_says_what_to_set(outputs, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    prepare(outputs, n=1)
    with pytest.raises(judge.JudgeConfigError, match=f"set the environment variable {KEY_ENV}"):
        judge.run(judge.plan(make_params(None)), progress=False)


def test_auto_picks_openai_only_when_an_endpoint_is_configured(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert judge.resolve_backend(make_params(None, backend="auto").judge) == "reference"
    assert judge.resolve_backend(make_params(None, backend="auto", base_url="http://127.0.0.1:9/v1").judge) == "openai"
    monkeypatch.setenv(KEY_ENV, KEY)
    assert judge.resolve_backend(make_params(None, backend="auto").judge) == "openai"
    backend, why = judge.backend_choice(make_params(None, backend="auto").judge)
    assert backend == "openai" and f"${KEY_ENV} is set" in why and "cost money" in why
    assert judge.backend_choice(make_params(None, backend="reference").judge) == (
        "reference", "judge.backend is reference")


# --------------------------------------------------------------------------------------------
# Reference backend, rows on disk, inputs
# --------------------------------------------------------------------------------------------


def test_the_reference_judge_runs_offline_and_a_rerun_writes_nothing(outputs, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    rows = prepare(outputs)
    params = make_params(None, backend="auto")
    summary = judge.run(judge.plan(params), progress=False)
    assert (summary.backend, summary.judged, summary.requests) == ("reference", rows, 0)
    frame = judge.load_judgments(params)
    assert set(frame["judge"].map(lambda j: j["backend"])) == {"reference"}
    assert set(frame["judge"].map(lambda j: j["rubric"])) == {"qa_ko", "qa_en"}
    assert (frame[frame["checkpoint"] == "base"]["score_accuracy"] == 5).all()  # the reference answers themselves
    assert frame["metrics"].iloc[0]["tokenizer"] == "kiwi"
    lines = judge_lines(outputs)
    assert judge.run(judge.plan(params), progress=False).up_to_date == rows and judge_lines(outputs) == lines
    saved = json.loads((outputs / EXPERIMENT / "judge" / "summary.json").read_text(encoding="utf-8"))
    assert saved["backend"] == "reference" and saved["model"].startswith("reference-v1")


def test_a_row_cut_short_by_a_kill_is_judged_again(outputs, monkeypatch, caplog):
    monkeypatch.delenv(KEY_ENV, raising=False)
    rows = prepare(outputs, n=2)
    params = make_params(None, backend="reference")
    judge.run(judge.plan(params), progress=False)
    path = outputs / EXPERIMENT / "judge" / "checkpoint-10.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2], encoding="utf-8")  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="sftlab.jsonl"):
        summary = judge.run(judge.plan(params), progress=False)
    assert summary.judged + summary.from_cache == 1
    assert f"{path}: cut off its torn last line" in caplog.text
    assert [row["id"] for row in jsonl.read_rows(path)] == [
        json.loads(lines[0])["id"], json.loads(lines[1][:len(lines[1])])["id"]]  # whole rows only, none lost
    frame = judge.load_judgments(params)
    assert len(frame) == rows and set(frame["status"]) == {"judged"}


def test_bad_generations_are_reported_with_file_line_and_field(outputs):
    sample = demo_rows(2)
    good = generation_row(sample[0], "base", "x")
    bad = {k: v for k, v in generation_row(sample[1], "base", "y").items() if k != "reference"}
    path = write_generations(outputs, "base", [good, bad, good])
    with pytest.raises(judge.GenerationsError) as error:
        judge.plan(make_params(None, backend="reference"))
    assert f"{path}:2: field 'reference' is missing" in str(error.value)
    assert f"{path}:3: field 'id': '{good['id']}' appears twice" in str(error.value)


def test_no_generations_means_run_the_infer_stage_first(outputs):
    with pytest.raises(judge.GenerationsError, match="run the infer stage first"):
        judge.plan(make_params(None, backend="reference"))


def test_the_sync_entry_point_works_inside_a_running_event_loop(outputs, server, key):
    rows = prepare(outputs, n=2)

    async def notebook_cell():  # what ipykernel does: a loop is already running when the cell calls run()
        return judge.run(judge.plan(make_params(server)), progress=False)

    assert asyncio.run(notebook_cell()).judged == rows


# --------------------------------------------------------------------------------------------
# The notebook
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_notebook_judges_shows_errors_and_never_writes_the_key(outputs, server, key, tmp_path):
    import nbformat

    from sftlab import runner

    rows = prepare(outputs, faulty=0)
    server.add_fault("refusal", match=MARK)
    params_file = tmp_path / "nb.yaml"
    params_file.write_text(yaml.safe_dump({"experiment": EXPERIMENT, "judge": {
        "backend": "openai", "base_url": server.base_url, "api_key_env": KEY_ENV, "max_retries": 1,
        "backoff_base_s": 0.01}}), encoding="utf-8")

    runner.run(params_file, stages=["judge"])

    [executed] = (outputs / EXPERIMENT / "runs").glob("*-judge/judge.ipynb")  # the run's record
    executed = nbformat.read(executed, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells], ensure_ascii=False)
    assert "Scores by an LLM judge" in text and "gpt-4o-mini" in text
    assert "structured output: json_schema (probed now, 1 request" in text  # the run's probe, shown
    assert "the judge refused" in text and "I'm sorry, I can't help with that." in text  # the error row, raw text
    assert "image/png" in text  # the score distributions
    assert server.authorization == {f"Bearer {key}"}
    assert len(judge.load_judgments(make_params(server))) == rows
    assert (outputs / EXPERIMENT / "reports" / "judge.html").exists()
    assert files_containing(outputs, KEY) == []
    # One refused row: the stage is not plain `done`, and the report and the index say why.
    failure = f"judge: 1/{rows} rows failed — the judge refused"
    status = json.loads((outputs / EXPERIMENT / "status.json").read_text(encoding="utf-8"))["stages"]["judge"]
    assert status["status"] == "done with errors" and status["problems"][0].startswith(failure)
    assert failure in text
    index = (outputs / "index.html").read_text(encoding="utf-8")
    assert 'class="done-with-errors"' in index and html.escape(failure) in index


@pytest.mark.slow
def test_the_notebooks_run_cell_run_twice_in_a_kernel_sends_nothing_the_second_time(outputs, server, key, tmp_path):
    """The judge notebook's cells up to its run cell, then the run cell again, in a real kernel (by hand in
    Jupyter: Ctrl+Enter a second time)."""
    import nbformat
    import papermill

    from sftlab import kernel

    rows = prepare(outputs)
    template = nbformat.read(ROOT / "notebooks" / "judge.ipynb", as_version=4)
    code = [cell for cell in template.cells if cell.cell_type == "code"]
    run_cell = next(cell for cell in code if "judge_stage.run(planned)" in cell.source)
    twice = nbformat.v4.new_notebook(metadata={"kernelspec": kernel.kernelspec_metadata()})
    twice.cells = code[:code.index(run_cell) + 1] + [nbformat.v4.new_code_cell(run_cell.source)]
    source, executed = tmp_path / "twice.ipynb", tmp_path / "twice-executed.ipynb"
    nbformat.write(twice, source)
    settings = {"backend": "openai", "base_url": server.base_url, "api_key_env": KEY_ENV, "max_retries": 1}
    papermill.execute_notebook(str(source), str(executed), parameters={"experiment": EXPERIMENT, "judge": settings},
                               kernel_name=kernel.ensure(), cwd=str(ROOT), progress_bar=False)

    cells = nbformat.read(executed, as_version=4).cells
    first, second = (json.dumps(cell.get("outputs", []), ensure_ascii=False) for cell in cells[-2:])
    assert f"judged now {rows}" in first and f"requests: {rows}" in first
    assert "judge: nothing to do" in second and f"up to date {rows}" in second and "requests: 0" in second
    assert server.request_count == rows and len(server.probes) == 1  # the second run sent nothing
    assert judge_lines(outputs) == rows  # and appended nothing


@pytest.mark.slow
def test_a_dead_endpoint_fails_the_run_fast_and_the_index_says_so(tmp_path, outputs, key):
    from sftlab import cli

    prepare(outputs)
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    params_file = tmp_path / "dead.yaml"
    params_file.write_text(yaml.safe_dump({"experiment": EXPERIMENT, "judge": {
        "backend": "openai", "base_url": dead, "api_key_env": KEY_ENV}}), encoding="utf-8")
    started = time.monotonic()
    assert cli.main(["run", str(params_file), "--stages", "judge"]) == 1  # non-zero: nothing was judged
    assert time.monotonic() - started < 30
    status = json.loads((outputs / EXPERIMENT / "status.json").read_text(encoding="utf-8"))["stages"]["judge"]
    assert status["status"] == "failed" and f"{dead} is unreachable" in status["error"]
    index = (outputs / "index.html").read_text(encoding="utf-8")
    assert "judge failed" in index and "is unreachable" in index
