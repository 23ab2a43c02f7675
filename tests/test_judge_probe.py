"""The capability probe (sftlab.judge.probe) against the test server's flavours — llama.cpp's server (HTTP 500
to a json_schema), `transformers serve` (200, response_format ignored), a server that refuses response_format —
what it remembers per (base_url, model), a forced mode, and a repair that fails at HTTP level keeping the
first answer."""

from __future__ import annotations

import json

import pytest

from judge_server import FakeJudgeServer
from test_judge import EXPERIMENT, KEY, MARK, demo_rows, generation_row, make_params, prepare, write_generations
from sftlab import judge, jsonl
from sftlab.judge import probe


pytestmark = pytest.mark.usefixtures("key")  # the judge's key in the environment (conftest)


def remembered(outputs) -> list[dict]:
    return json.loads((outputs / EXPERIMENT / "judge" / probe.PROBE_FILE).read_text(encoding="utf-8"))


def test_an_openai_like_server_is_probed_once_in_json_schema_before_the_first_row_not_at_plan_time(outputs):
    with FakeJudgeServer() as server:
        rows = prepare(outputs)
        planned = judge.plan(make_params(server))
        assert server.probes == [] and planned.structured.how == probe.NOT_ASKED  # planning sends nothing
        judge.preflight(planned)
        assert server.request_count == 0 and len(server.probes) == 1  # one tiny request, no row
        probed = server.probes[0]
        assert probed["response_format"]["type"] == "json_schema"
        assert "```json" not in probed["messages"][0]["content"]  # only an enforced schema can answer it
        assert planned.structured.mode == "json_schema" and planned.structured.how == "probed"
        estimate = planned.estimate()
        assert estimate["structured"].startswith("json_schema (probed now, 1 request") and estimate["probe_requests"] == 1
        summary = judge.run(planned, progress=False)
        assert summary.judged == rows and summary.requests == rows
        assert "structured output: json_schema (probed now" in str(summary)
        [entry] = remembered(outputs)
        assert (entry["base_url"], entry["model"], entry["mode"]) == (server.base_url, "gpt-4o-mini", "json_schema")


def test_llama_cpp_500_on_json_schema_means_json_object_remembered_per_server_and_model(outputs):
    with FakeJudgeServer(flavour="llamacpp") as server:
        rows = prepare(outputs)
        params = make_params(server)
        planned = judge.plan(params)
        judge.preflight(planned)
        # json_schema answered 500: unsupported at once (no retries), then json_object worked.
        assert [p["response_format"]["type"] for p in server.probes] == ["json_schema", "json_object"]
        assert planned.structured.mode == "json_object"
        assert "json_schema: HTTP 500" in str(planned.structured)
        summary = judge.run(planned, progress=False)
        assert (summary.judged, summary.errors, summary.requests) == (rows, 0, rows)  # not one 500 during the run
        assert {r["response_format"]["type"] for r in server.requests} == {"json_object"}
        assert set(judge.load_judgments(params)["structured"]) == {"json_object"}

        # A re-run with new rows does not ask again: the answer is remembered for (base_url, model).
        write_generations(outputs, "checkpoint-20", [generation_row(s, "checkpoint-20", "new") for s in demo_rows(2)])
        server.reset_counts()
        again = judge.plan(params)
        assert server.probes == [] and again.structured.how == "remembered" and again.structured.mode == "json_object"
        assert "json_schema: HTTP 500" in str(again.structured) and "judge.probe=always" in str(again.structured)
        judge.run(again, progress=False)
        assert server.request_count == 2 and {r["response_format"]["type"] for r in server.requests} == {"json_object"}

        # Another model at the same address is another entry.
        write_generations(outputs, "checkpoint-30", [generation_row(s, "checkpoint-30", "x") for s in demo_rows(1)])
        judge.preflight(judge.plan(make_params(server, model="other-model")))
        assert len(server.probes) == 2
        assert {(e["model"], e["mode"]) for e in remembered(outputs)} == {("gpt-4o-mini", "json_object"),
                                                                         ("other-model", "json_object")}


def test_a_changed_server_is_probed_again_with_probe_always(outputs):
    rows = prepare(outputs, n=2)
    with FakeJudgeServer(flavour="llamacpp") as server:
        params = make_params(server)
        judge.preflight(judge.plan(params))
        url = server.base_url
    with FakeJudgeServer() as server:  # a different server: the remembered mode is stale, but still used
        remembered_plan = judge.plan(make_params(server, base_url=url))
        assert remembered_plan.structured.mode == "json_object" and server.probes == []  # (nothing listens at url)
        fresh = judge.plan(make_params(server, probe="always"))
        judge.preflight(fresh)
        assert fresh.structured.how == "probed" and fresh.structured.mode == "json_schema"
        assert judge.run(fresh, progress=False).judged == rows
        assert {e["mode"] for e in remembered(outputs) if e["base_url"] == server.base_url} == {"json_schema"}


def test_transformers_serve_ignoring_response_format_still_gets_valid_answers(outputs):
    with FakeJudgeServer(flavour="transformers") as server:
        rows = prepare(outputs)
        params = make_params(server)
        planned = judge.plan(params)
        judge.preflight(planned)
        # 200 to json_schema, but the answer ignored it (prose: the probe leaves the shape out of that prompt).
        json_schema, json_object = planned.structured.tried
        assert json_schema.result == "answered" and "the schema was ignored" in json_schema.detail
        assert json_object.result == "valid" and planned.structured.mode == "json_object"
        summary = judge.run(planned, progress=False)
        assert (summary.judged, summary.errors) == (rows, 0)

        # Every mode states the shape: even json_schema, which this server ignores, gets valid answers.
        forced = make_params(server, experiment="forced", structured="json_schema")
        for path in (outputs / EXPERIMENT / "generations").glob("*.jsonl"):
            write_generations(outputs, path.stem, jsonl.read_rows(path), experiment="forced")
        server.reset_counts()
        forced_plan = judge.plan(forced)
        assert server.probes == [] and forced_plan.structured.how == "forced"  # a forced mode is not probed
        assert judge.run(forced_plan, progress=False).judged == rows
        assert all("```json" in r["messages"][0]["content"] for r in server.requests)


def test_transformers_serve_in_pairwise_mode_gets_valid_verdicts(outputs):
    with FakeJudgeServer(flavour="transformers") as server:
        n = prepare(outputs, n=2) // 2
        params = make_params(server, mode="pairwise", structured="json_schema")
        summary = judge.run(judge.plan(params), progress=False)
        assert (summary.judged, summary.errors) == (2 * n, 0)
        assert all("```json" in r["messages"][0]["content"] for r in server.requests)


def test_a_server_refusing_response_format_ends_in_prompt_only_json(outputs):
    with FakeJudgeServer() as server:
        rows = prepare(outputs)
        server.add_fault("reject_response_format", probe=True)
        planned = judge.plan(make_params(server))
        judge.preflight(planned)
        assert planned.structured.mode == "prompt" and len(server.probes) == 3
        assert [t.detail.startswith("HTTP 400") for t in planned.structured.tried] == [True, True, False]
        assert judge.run(planned, progress=False).judged == rows
        assert not any("response_format" in r for r in server.requests)


def test_a_rate_limited_probe_is_retried_and_an_unanswered_one_is_not_remembered(outputs):
    with FakeJudgeServer() as server:
        prepare(outputs, n=1)
        server.add_fault("rate_limit", times=1, probe=True)
        planned = judge.plan(make_params(server))
        judge.preflight(planned)
        assert planned.structured.mode == "json_schema" and len(server.probes) == 2
    with FakeJudgeServer() as server:
        server.add_fault("unauthorized", probe=True)  # the run meets the same refusal, and stops as always
        write_generations(outputs, "base", [generation_row(demo_rows(1)[0], "base", "4")], experiment="other")
        planned = judge.plan(make_params(server, experiment="other"))
        judge.preflight(planned)
        assert planned.structured.how == "undecided" and len(server.probes) == 1
        assert KEY not in str(planned.structured) and "rejected the API key" in str(planned.structured)
        assert not (outputs / "other" / "judge" / probe.PROBE_FILE).exists()


def test_a_forced_mode_is_used_and_probe_always_only_reports(outputs):
    with FakeJudgeServer(flavour="llamacpp") as server:
        rows = prepare(outputs, n=1)
        params = make_params(server, structured="json_schema", probe="always", max_retries=0)
        planned = judge.plan(params)
        judge.preflight(planned)
        assert planned.structured.how == "forced" and planned.structured.mode == "json_schema"
        assert "the probe would pick json_object" in str(planned.structured) and len(server.probes) == 2
        with pytest.raises(judge.JudgeFailed, match="HTTP 500"):  # what the user asked for, no fallback
            judge.run(planned, progress=False)
        assert {r["response_format"]["type"] for r in server.requests} == {"json_schema"}
        assert server.request_count == rows


def test_probe_off_starts_at_json_schema_and_falls_back_on_400(outputs):
    with FakeJudgeServer() as server:
        rows = prepare(outputs, n=1)
        server.add_fault("reject_response_format")
        planned = judge.plan(make_params(server, probe="off", concurrency=1))
        assert server.probes == [] and planned.structured.how == "not probed"
        assert judge.run(planned, progress=False).judged == rows
        assert set(judge.load_judgments(make_params(server))["structured"]) == {"prompt"}


# --------------------------------------------------------------------------------------------
# Every byte that came back
# --------------------------------------------------------------------------------------------


REPAIR_FAILURES = ["server_error", "context_length", pytest.param("slow", marks=pytest.mark.slow)]


@pytest.mark.parametrize("failure", REPAIR_FAILURES)
def test_a_repair_that_fails_at_http_level_keeps_the_first_answer(failure, outputs):
    with FakeJudgeServer(slow_s=1.0) as server:
        rows = prepare(outputs, faulty=1)
        server.add_fault("malformed_json", times=1, match=MARK)  # the first answer: invalid
        server.add_fault(failure, match=MARK)  # the repair request, and any retry of it, fail
        params = make_params(server, timeout_s=0.4 if failure == "slow" else 5.0, max_retries=1)
        summary = judge.run(judge.plan(params), progress=False)
        assert (summary.judged, summary.errors) == (rows - 1, 1)
        row = judge.load_judgments(params).set_index("status").loc["error"]
        assert row["raw"] == '{"accuracy": {"reason": "unterminated'  # the first answer, kept
        assert pd_none(row["first_raw"]) and row["scores"] is None
        assert "on the repair request" in row["error"]


def test_a_repair_answered_invalid_again_keeps_both_answers(outputs):
    with FakeJudgeServer() as server:
        prepare(outputs, faulty=1)
        server.add_fault("malformed_json", times=1, match=MARK)
        server.add_fault("schema_violation", match=MARK)
        params = make_params(server)
        judge.run(judge.plan(params), progress=False)
        row = judge.load_judgments(params).set_index("status").loc["error"]
        assert row["first_raw"] == '{"accuracy": {"reason": "unterminated'
        assert json.loads(row["raw"]) == {"accuracy": {"reason": "only one criterion", "score": 99}}
        assert "invalid judgment after one repair" in row["error"]


def test_a_batch_repair_line_refused_keeps_the_first_answer(outputs):
    with FakeJudgeServer() as server:
        rows = prepare(outputs, faulty=1)
        server.add_fault("malformed_json", times=1, match=MARK)
        server.add_fault("context_length", match=MARK)
        params = make_params(server, batch=True, batch_poll_s=0.02)
        summary = judge.run(judge.plan(params), progress=False)
        assert (summary.judged, summary.errors) == (rows - 1, 1)
        row = judge.load_judgments(params).set_index("status").loc["error"]
        assert row["raw"] == '{"accuracy": {"reason": "unterminated'
        assert "HTTP 400" in row["error"] and "maximum context length" in row["error"]


def pd_none(value) -> bool:
    import pandas as pd

    return value is None or pd.isna(value)
