"""The judge through the OpenAI Batch API (judge.batch: true), against the test server's /v1/files and
/v1/batches: a full run at batch prices, a kill while polling (the re-run creates no batch), partial
failures, expiry, the structured-output fallback and the repair in batch rounds, the budget, and the
fallback to direct requests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from test_judge import EXPERIMENT, KEY, MARK, files_containing, make_params, prepare
from sftlab import judge

BATCH = {"batch": True, "batch_poll_s": 0.02}


pytestmark = pytest.mark.usefixtures("key")  # the judge's key in the environment (conftest)


def batch_params(server, **settings):
    return make_params(server, **{**BATCH, **settings})


def state(outputs) -> list[dict]:
    return json.loads((outputs / EXPERIMENT / "judge" / "batches.json").read_text(encoding="utf-8"))


def test_a_batch_run_judges_every_row_at_half_the_price(outputs, server):
    rows = prepare(outputs)
    planned = judge.plan(batch_params(server))
    summary = judge.run(planned, progress=False)
    assert summary.judged == rows and summary.batches == 1 and summary.errors == 0
    assert server.request_count == 0 and len(server.batch_lines) == rows  # no direct request at all
    [record] = state(outputs)
    assert record["processed"] and set(record["lines"]) == {key for key in planned.jobs}  # custom_id = cache key
    frame = judge.load_judgments(batch_params(server))
    assert set(frame["status"]) == {"judged"} and (frame["structured"] == "json_schema").all()

    # The same rows judged directly cost twice as much: batch prices, in the estimate and in the rows.
    direct = make_params(server, experiment="direct")
    for path in (outputs / EXPERIMENT / "generations").glob("*.jsonl"):
        target = outputs / "direct" / "generations" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    assert judge.plan(direct).estimate()["cost_usd"] == pytest.approx(2 * planned.estimate()["cost_usd"])
    assert judge.run(judge.plan(direct), progress=False).cost_usd == pytest.approx(2 * summary.cost_usd, rel=0.01)

    server.reset_counts()
    again = judge.run(judge.plan(batch_params(server)), progress=False)
    assert again.up_to_date == rows and again.batches == 0 and len(server.batches) == 1


@pytest.mark.slow
def test_a_kill_while_polling_then_a_rerun_polls_the_same_batch(tmp_path, outputs, server):
    rows = prepare(outputs)
    server.batch_delay_s = 3.0
    params_file = tmp_path / "batch.yaml"
    params_file.write_text(yaml.safe_dump(batch_params(server).to_dict()), encoding="utf-8")
    code = ("from sftlab import config, judge\n"
            f"params = config.load_params({str(params_file)!r})\n"
            "judge.run(judge.plan(params), progress=False)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    batches_json = outputs / EXPERIMENT / "judge" / "batches.json"
    deadline = time.time() + 60
    while time.time() < deadline and not batches_json.exists():
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    time.sleep(0.2)  # polling now
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(server.batches) == 1 and not state(outputs)[0]["processed"]

    summary = judge.run(judge.plan(batch_params(server)), progress=False)
    assert summary.judged == rows and summary.batches == 0  # polled the batch the killed run created
    assert len(server.batches) == 1 and len(server.batch_lines) == rows  # no request was paid twice
    assert files_containing(outputs, KEY) == []


def test_failed_lines_are_sent_again_and_only_they(outputs, server):
    rows = prepare(outputs)
    planned = judge.plan(batch_params(server))
    failing = sorted(planned.jobs)[:2]
    for key in failing:
        server.batch_failures[key] = 1  # fails in the first batch, answers in the second
    summary = judge.run(planned, progress=False)
    assert summary.judged == rows and summary.batches == 2
    second = server.batches[sorted(server.batches, key=lambda b: int(b.split("-")[1]))[-1]]
    assert second["request_counts"]["total"] == 2

    # A line that keeps failing ends as an error row after max_retries rounds; a re-run sends it alone.
    prepare(outputs, n=4)
    for path in (outputs / EXPERIMENT / "judge").glob("*"):
        path.unlink()
    params = batch_params(server, max_retries=1)
    [stubborn] = sorted(judge.plan(params).jobs)[:1]
    server.batch_failures[stubborn] = 10
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.errors == 1 and summary.judged == rows - 1
    assert "server_error" in judge.load_judgments(params).set_index("key").loc[stubborn, "error"]
    server.batch_failures.clear()
    lines_before = len(server.batch_lines)
    assert judge.run(judge.plan(params), progress=False).judged == 1
    assert len(server.batch_lines) == lines_before + 1


def test_an_expired_batch_resubmits_what_it_did_not_answer(outputs, server):
    rows = prepare(outputs)
    server.batch_expire_after = 3  # every batch answers 3 lines, then expires: 8 rows take 3 batches
    summary = judge.run(judge.plan(batch_params(server)), progress=False)
    assert summary.judged == rows and summary.batches == 3
    assert [b["status"] for b in server.batches.values()] == ["expired", "expired", "completed"]
    assert len(server.batch_lines) == rows  # each row answered once; expired lines were never answered


def test_the_structured_output_fallback_works_in_batch_rounds(outputs, server):
    rows = prepare(outputs)
    server.add_fault("reject_response_format")  # any response_format is refused with a 400 line
    summary = judge.run(judge.plan(batch_params(server)), progress=False)
    assert summary.judged == rows and summary.errors == 0 and summary.batches == 3
    frame = judge.load_judgments(batch_params(server))
    assert set(frame["structured"]) == {"prompt"}  # json_schema, json_object, then JSON asked for in the prompt


def test_an_invalid_answer_is_repaired_in_the_next_round(outputs, server):
    rows = prepare(outputs, faulty=0)
    server.add_fault("schema_violation", times=1, match=MARK)
    summary = judge.run(judge.plan(batch_params(server)), progress=False)
    assert summary.judged == rows and summary.errors == 0 and summary.batches == 2
    frame = judge.load_judgments(batch_params(server))
    assert sorted(frame["requests"]) == [1] * (rows - 1) + [2]  # the repair is the faulty row's second request
    repair = server.batch_lines[-1]["body"]["messages"]
    assert repair[-1]["content"].startswith("Your reply is not a valid evaluation")


def test_the_budget_stops_a_batch_before_it_is_created(outputs, server):
    rows = prepare(outputs)
    params = batch_params(server, model="fake-judge", max_cost_usd=1e-9,
                          prices={"fake-judge": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}})
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.batches == 0 and server.batches == {} and summary.not_judged == rows
    assert "was not created" in summary.stopped


def test_a_batch_past_the_fallback_time_is_cancelled_and_the_rest_judged_directly(outputs, server):
    rows = prepare(outputs)
    server.batch_delay_s = 30.0
    started = time.monotonic()
    summary = judge.run(judge.plan(batch_params(server, batch_fallback_after_s=0.3)), progress=False)
    assert time.monotonic() - started < 10
    assert summary.judged == rows and server.request_count == rows  # direct requests for the open rows
    [batch] = server.batches.values()
    assert batch["status"] in ("cancelling", "cancelled")
