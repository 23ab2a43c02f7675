"""The judge's reliability card: repeat passes and self-consistency (the offline judge is exactly
self-consistent; a noisy API judge disagrees at its known rate), bias figures, and agreement with human
labels imported from a file. Every label here is a synthetic fixture made up by the test."""

from __future__ import annotations

import csv
import json

import pytest

from judge_server import FakeJudgeServer
from test_judge import EXPERIMENT, make_params, prepare
from sftlab import jsonl, judge, labels, score


pytestmark = pytest.mark.usefixtures("key")  # the judge's key in the environment (conftest)


def card_of(params) -> dict:
    summary = score.run(score.plan(params))
    written = json.loads((params.layout.scores / "reliability.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(summary.reliability))
    return written["experiments"][params.experiment]


def test_the_offline_judge_is_exactly_self_consistent(outputs):
    rows = prepare(outputs)
    params = make_params(None, backend="reference", repeats=2)
    summary = judge.run(judge.plan(params), progress=False)
    assert summary.judged == 2 * rows  # a judgment per row and pass
    assert judge.run(judge.plan(params), progress=False).up_to_date == 2 * rows  # passes are cached too
    card = card_of(params)
    criteria = card["self_consistency"]["criteria"]
    assert card["self_consistency"]["passes"] == 2 and criteria
    assert all(c["alpha"] == 1.0 and c["disagreement_rate"] == 0.0 and c["n"] == rows for c in criteria.values())
    assert card["unscored_share"] == {"estimate": 0.0, "n": rows}
    assert card["length_preference"]["n"] == rows

    pairwise = make_params(None, backend="reference", mode="pairwise", repeats=2)
    judge.run(judge.plan(pairwise), progress=False)
    figures = card_of(pairwise)["pairwise"]
    assert figures["flip_rate"]["estimate"] == 0.0 and figures["verdict_change_rate"]["estimate"] == 0.0


def test_a_noisy_judge_disagrees_with_itself_at_its_known_rate(outputs):
    rows = prepare(outputs, n=20)
    noise = 0.2  # each score moved with probability 0.2 -> two passes differ with 2 * 0.2 * 0.8 = 0.32
    with FakeJudgeServer(noise=noise, seed=7) as server:
        params = make_params(server, repeats=2)
        judge.run(judge.plan(params), progress=False)
        assert server.request_count == 2 * rows
    criteria = card_of(params)["self_consistency"]["criteria"]
    rates = [c["disagreement_rate"] for c in criteria.values()]
    mean_rate = sum(rates) / len(rates)
    assert mean_rate == pytest.approx(2 * noise * (1 - noise), abs=0.08)
    assert all(c["alpha"] < 0.95 for c in criteria.values())


def test_min_alpha_marks_an_inconsistent_judge_untrustworthy(outputs):
    prepare(outputs, n=10)
    with FakeJudgeServer(noise=0.5, seed=1) as server:
        params = make_params(server, repeats=2)
        judge.run(judge.plan(params), progress=False)
    params.score.min_alpha = 0.9
    card = score.run(score.plan(params)).reliability
    assert card["trustworthy"] is False and "below score.min_alpha 0.9" in card["warning"]


def synthetic_labels(path, rows: list[dict], shift: int = 0) -> None:
    """A synthetic label file (made up by the test): the judge's own scores, optionally shifted."""
    keys = sorted(rows[0]["scores"])
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "checkpoint", "labeller", *keys])
        for row in rows:
            writer.writerow([row["id"], row["checkpoint"], "synthetic-fixture",
                             *[min(5, max(1, row["scores"][k] + shift)) for k in keys]])


def test_imported_labels_give_kappa_with_an_interval(tmp_path, outputs):
    rows = prepare(outputs, n=10)
    params = make_params(None, backend="reference")
    judge.run(judge.plan(params), progress=False)
    judged = [row for path in sorted((outputs / EXPERIMENT / "judge").glob("*.jsonl")) for row in jsonl.read_rows(path)]
    file = tmp_path / "labels.csv"
    synthetic_labels(file, judged)
    assert labels.import_file(params, file) == rows
    agreement = card_of(params)["human_agreement"]
    assert agreement["labels"] == rows and agreement["labellers"] == ["synthetic-fixture"]
    assert set(agreement["criteria"]) == set(judged[0]["scores"])  # every criterion, none left out
    for figures in agreement["criteria"].values():
        assert figures["n"] == rows and figures["kappa"]["estimate"] == 1.0  # the labels are the judge's scores
        assert figures["kappa"]["low"] is not None

    # A revised label wins over the earlier one.
    first = judged[0]
    labels.add(params.layout, first["checkpoint"], first["id"], {"accuracy": 1 if first["scores"]["accuracy"] > 1 else 5},
               "synthetic-fixture")
    assert labels.latest(params.layout)[(first["checkpoint"], first["id"])]["scores"].keys() == {"accuracy"}
    assert card_of(params)["human_agreement"]["criteria"]["accuracy"]["kappa"]["estimate"] < 1.0


def test_a_bad_label_file_names_file_line_and_field_and_imports_nothing(tmp_path, outputs):
    prepare(outputs, n=2)
    params = make_params(None, backend="reference")
    file = tmp_path / "bad.csv"
    file.write_text("id,checkpoint,accuracy\nnot-a-sample,base,3\n,base,4\n", encoding="utf-8")
    with pytest.raises(labels.LabelsError) as error:
        labels.import_file(params, file)
    message = str(error.value)
    assert f"{file}:2: no generation for checkpoint 'base', id 'not-a-sample'" in message
    assert f"{file}:3: field 'id' is missing" in message
    assert not labels.labels_file(params.layout).exists()


def test_the_labelling_sample_is_stratified_and_skips_labelled_rows(outputs):
    prepare(outputs, n=6)
    params = make_params(None, backend="reference")
    picked = labels.sample(params, n=4)
    assert {row.checkpoint for row in picked} == {"base", "checkpoint-10"}
    labels.add(params.layout, picked[0].checkpoint, picked[0].id, {"accuracy": 3}, "synthetic-fixture")
    assert (picked[0].checkpoint, picked[0].id) not in {(r.checkpoint, r.id) for r in labels.sample(params, n=20)}


def test_pairwise_labels_give_raw_agreement_with_ties(tmp_path, outputs):
    prepare(outputs, n=6)
    params = make_params(None, backend="reference", mode="pairwise")
    judge.run(judge.plan(params), progress=False)
    outcomes = score.run(score.plan(params)).tables["outcomes"]
    file = tmp_path / "pairs.jsonl"
    lines = []
    for i, row in enumerate(outcomes.itertuples()):
        # Synthetic fixture: agree with the judge on every pair but the first, each shown in the other order.
        verdict = -int(row.outcome) if i else int(row.outcome)
        if i == 0:
            verdict = 1 if row.outcome <= 0 else -1  # a different winner
        lines.append(json.dumps({"id": row.id, "first": row.b, "second": row.a, "verdict": verdict,
                                 "labeller": "synthetic-fixture"}))
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert labels.import_file(params, file) == len(outcomes)
    figures = card_of(params)["human_agreement"]["pairwise"]["raw_agreement"]
    assert figures["n"] == len(outcomes)
    assert figures["estimate"] == pytest.approx((len(outcomes) - 1) / len(outcomes), abs=1e-4)
    assert figures["low"] is not None and figures["low"] <= figures["estimate"] <= figures["high"]
    pairs = labels.sample_pairs(params, n=50)
    assert pairs == []  # every judged pair is labelled


@pytest.mark.parametrize("mode", ["single", "pairwise"])
def test_the_labelling_form_saves_what_is_chosen(outputs, mode):
    prepare(outputs, n=2)
    params = make_params(None, backend="reference", mode=mode)
    form = labels.widget(params, n=2, labeller="synthetic-fixture")
    who, text, controls, save, status = form.children
    assert "Question" in text.value and ("Answer B" in text.value) == (mode == "pairwise")
    control = controls.children[0]
    control.value = "B>A" if mode == "pairwise" else control.max
    save.click()
    assert status.value.startswith("saved ")
    [(key, row)] = labels.latest(params.layout).items()
    assert row["labeller"] == "synthetic-fixture"
    assert row["scores"][control.description] == (-1 if mode == "pairwise" else control.max)
    assert ("~" in key[0]) == (mode == "pairwise")
