"""Pairwise judging and its aggregation: both orders sent, a position flip counted as a tie (and as a
flip), schema violations as error rows (never a silent tie), the offline pairwise judge, and the
Bradley-Terry ranking, separability and length-controlled win rate on data with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from judge_server import _ANSWERS
from test_judge import MARK, demo_rows, generation_row, make_params, prepare
from sftlab import judge, score
from sftlab.judge.pairwise import model_pairs, reference_verdict
from sftlab.score import pairwise


pytestmark = pytest.mark.usefixtures("key")  # the judge's key in the environment (conftest)


def pairwise_params(server, **settings):
    return make_params(server, mode="pairwise", **settings)


def test_model_pairs():
    models = ["base", "checkpoint-10", "checkpoint-20"]
    assert model_pairs(models, "baseline", "base") == [("base", "checkpoint-10"), ("base", "checkpoint-20")]
    assert model_pairs(models, "adjacent", "base") == [("base", "checkpoint-10"), ("checkpoint-10", "checkpoint-20")]
    assert len(model_pairs(models, "all", "base")) == 3


def test_both_orders_are_sent_and_a_rerun_sends_nothing(outputs, server):
    n = prepare(outputs) // 2
    params = pairwise_params(server)
    planned = judge.plan(params)
    assert planned.estimate()["requests"] == 2 * n  # both orders, counted in the estimate
    summary = judge.run(planned, progress=False)
    assert summary.judged == 2 * n and server.request_count == 2 * n
    sample = demo_rows(1)[0]
    shown = [r["messages"][1]["content"] for r in server.requests if sample["question"] in r["messages"][1]["content"]]
    assert len(shown) == 2
    first_shown = {_ANSWERS.search(text).group(1).strip() for text in shown}
    assert first_shown == {sample["answer"], sample["answer"] + " 끝."}  # each answer shown first once

    server.reset_counts()
    assert judge.run(judge.plan(params), progress=False).up_to_date == 2 * n and server.request_count == 0
    tables = score.run(score.plan(params)).tables
    versus = tables["pairwise"].set_index("model")
    assert versus.loc["checkpoint-10", "loss"] == 1.0  # the fake judge prefers the shorter answer: base's
    assert versus.loc["checkpoint-10", "flip_rate"] == 0.0
    assert list(tables["ranking"]["model"]) == ["base", "checkpoint-10"]


def test_a_position_flip_is_a_tie_and_is_counted(outputs, server):
    n = prepare(outputs) // 2
    server.add_fault("position_bias")  # "A>B" whatever is shown first: the two orders disagree
    params = pairwise_params(server)
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.flips == (n, n) and f"position flips: {n} of {n} pairs" in str(summary)
    versus = score.run(score.plan(params)).tables["pairwise"].set_index("model")
    assert versus.loc["checkpoint-10", "tie"] == 1.0 and versus.loc["checkpoint-10", "flip_rate"] == 1.0
    assert versus.loc["checkpoint-10", "n"] == n


def test_a_schema_violation_is_an_error_row_never_a_tie(outputs, server):
    n = prepare(outputs, faulty=0) // 2
    server.add_fault("schema_violation", match=MARK)  # both orders of the faulty sample, repair included
    params = pairwise_params(server)
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.errors == 2 and summary.judged == 2 * n - 2
    frame = judge.load_judgments(params)
    assert frame[frame["status"] == "error"]["error"].str.contains("invalid judgment after one repair").all()
    versus = score.run(score.plan(params)).tables["pairwise"].set_index("model")
    assert versus.loc["checkpoint-10", "n"] == n - 1  # left out, not counted as a tie


def test_the_offline_pairwise_judge_prefers_the_reference_and_an_answer_that_stops(outputs):
    from sftlab.judge import load_rubric

    rubric = load_rubric("params/rubrics/qa_en.yaml")
    sample = [s for s in demo_rows(8) if s["lang"] == "en"][0]
    right = generation_row(sample, "base", sample["answer"])
    wrong = generation_row(sample, "checkpoint-10", "I do not know anything about that topic at all.")
    assert reference_verdict(right, wrong, rubric)[0] > 0 and reference_verdict(wrong, right, rubric)[0] < 0
    looping = {**right, "finish_reason": "length"}
    verdict, reason, _ = reference_verdict(right, looping, rubric)
    assert verdict > 0 and "did not stop" in reason
    assert reference_verdict(right, dict(right), rubric)[0] == 0


def battles_frame(results: dict[tuple[str, str], list[int]]) -> pd.DataFrame:
    rows = []
    for (first, second), verdicts in results.items():
        for i, verdict in enumerate(verdicts):
            rows.append({"experiment": "e", "id": f"s{i}", "first": first, "second": second, "status": "judged",
                         "error": None, "verdict": verdict, "first_tokens": 10, "second_tokens": 10})
    return pd.DataFrame(rows)


def test_bradley_terry_ranks_a_clear_order_and_marks_overlaps():
    rng = np.random.default_rng(0)
    # strong > mid by a lot; mid and weak almost alike.
    results = {}
    for a, b, p in (("strong", "mid", 0.9), ("mid", "weak", 0.52), ("strong", "weak", 0.92)):
        verdicts = [int(v) for v in np.where(rng.random(120) < p, 1, -1)]
        results[(a, b)] = verdicts
        results[(b, a)] = [-v for v in verdicts]
    table, share = pairwise.ranking(battles_frame(results), baseline="weak", n_boot=60)
    assert list(table["model"])[0] == "strong"
    assert table.set_index("model").loc["weak", "score"] == pytest.approx(1000)
    separable = dict(zip(table["model"], table["separable"]))
    assert separable["strong"] is True and separable[table["model"][1]] is False
    assert share == pytest.approx(0.5)


def test_the_length_controlled_win_rate_discounts_winning_by_length():
    length = np.concatenate([np.full(50, 40.0), np.full(50, -40.0)])
    won = np.concatenate([np.ones(45), np.zeros(5), np.ones(5), np.zeros(45)])  # longer wins, mostly
    assert won.mean() == pytest.approx(0.5)
    assert pairwise.lc_win_rate(won, length) == pytest.approx(0.5, abs=0.02)
    # A judge that only prefers the longer answer, and a model that is longer on 80 of 100 prompts: its raw
    # win rate is 0.68, all of it length; controlled for length it is even.
    length = np.concatenate([np.full(80, 40.0), np.full(20, -40.0)])
    won = np.concatenate([np.ones(64), np.zeros(16), np.ones(4), np.zeros(16)])
    assert won.mean() == pytest.approx(0.68)
    assert pairwise.lc_win_rate(won, length) == pytest.approx(0.5, abs=0.03)


def test_pairwise_through_the_batch_api(outputs, server):
    n = prepare(outputs) // 2
    summary = judge.run(judge.plan(pairwise_params(server, batch=True, batch_poll_s=0.02)), progress=False)
    assert summary.judged == 2 * n and summary.batches == 1 and server.request_count == 0
    assert summary.flips == (n, 0)
