"""The judge's reliability card: repeat passes and self-consistency (the offline judge is exactly
self-consistent; a noisy API judge disagrees at its known rate), bias figures, and agreement with human
labels imported from a file. Every label here is a synthetic fixture made up by the test."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest

from judge_server import FakeJudgeServer
from test_judge import EXPERIMENT, make_params, prepare
from sftlab import jsonl, judge, label_form, labels, score
from sftlab.judge import store
from sftlab.score import reliability


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
    assert all(c["disagreement_rate"] == 0.0 and c["n"] == rows for c in criteria.values())
    # α is 1 where the scores vary; where every answer got the same score it is undefined (0/0), not 1
    assert {c["alpha"] for c in criteria.values()} == {1.0, None}
    assert all("every score is" in c["undefined"] for c in criteria.values() if c["alpha"] is None)
    assert card["unscored_share"]["estimate"] == 0.0 and card["unscored_share"]["n"] == rows
    assert "small_sample" in card["unscored_share"]  # 8 rows < score.min_n 30
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
        assert figures["n"] == rows and "small_sample" in figures  # 20 labels < score.min_n 30
        if figures["kappa"]["estimate"] is None:  # judge and labels gave every answer the same score
            assert "undefined" in figures["kappa"]["note"] and figures["kappa"]["low"] is None
        else:
            assert figures["kappa"]["estimate"] == 1.0  # the labels are the judge's scores
            assert figures["kappa"]["low"] is not None
    assert any(f["kappa"]["estimate"] == 1.0 for f in agreement["criteria"].values())

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
    form = label_form.widget(params, n=2, labeller="synthetic-fixture")
    assert "Question" in form.view["html"] and ("Answer B" in form.view["html"]) == (mode == "pairwise")
    [criterion, *_] = form.view["criteria"]
    chosen = -1 if mode == "pairwise" else criterion["options"][-1]["value"]
    for each in form.view["criteria"]:
        form.choose(each["key"], chosen)
    assert form.save() and form.status.startswith("saved ")
    [(key, row)] = labels.latest(params.layout).items()
    assert row["labeller"] == "synthetic-fixture"
    assert row["scores"][criterion["key"]] == chosen
    assert ("~" in key[0]) == (mode == "pairwise")


# --------------------------------------------------------------------------------------------
# Krippendorff's α, weighted κ and small samples, against published or independently computed values
# --------------------------------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example with missing data:
# 4 coders (rows) x 12 units (columns), None = not coded. Published: nominal α = 0.743, ordinal 0.815,
# interval 0.849.
KRIPPENDORFF_2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
                     [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
                     [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
                     [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]


def passes_frame(table: list[list], criterion: str = "c") -> pd.DataFrame:
    """Judge passes (rows of sftlab.score.samples.judgment_passes) from a passes x units table; a None
    is a failed pass."""
    rows = []
    for repeat, scores in enumerate(table):
        for unit, value in enumerate(scores):
            row = {"checkpoint": "c", "id": f"u{unit}", "repeat": repeat,
                   "judge_status": "judged" if value is not None else "error"}
            if value is not None:
                row[score.SCORE_PREFIX + criterion] = value
            rows.append(row)
    return pd.DataFrame(rows)


def test_alpha_reproduces_krippendorffs_worked_example_with_missing_values():
    import krippendorff

    matrix = np.array(KRIPPENDORFF_2011, dtype=float)
    for level, published in (("nominal", 0.743), ("interval", 0.849)):  # the transcription is right
        assert krippendorff.alpha(reliability_data=matrix, level_of_measurement=level) == pytest.approx(
            published, abs=5e-4)
    result = reliability.self_consistency(passes_frame(KRIPPENDORFF_2011), scales={"c": (1, 5)})
    figures = result["criteria"]["c"]
    assert figures["alpha"] == pytest.approx(0.815, abs=5e-4)
    assert figures["n"] == 11  # unit 12 has one value: it cannot be paired; every other unit counts
    assert figures["missing"] == 7 and result["missing_passes"] == 7
    assert figures["domain"].startswith("1..5")


def test_alpha_keeps_units_with_a_failed_pass_and_is_never_a_shortcut_one():
    import krippendorff

    # Complete units agree perfectly; the units where one of three passes failed disagree. The old
    # shortcut (complete units only, one value there) reported α = 1.0.
    table = [[3, 3, 3, 3, 1, 5, 2, None],
             [3, 3, 3, 3, 5, None, 4, 1],
             [3, 3, 3, 3, None, 1, None, 5]]
    result = reliability.self_consistency(passes_frame(table), scales={"c": (1, 5)})["criteria"]["c"]
    expected = krippendorff.alpha(reliability_data=np.array(table, dtype=float), level_of_measurement="ordinal",
                                  value_domain=[1, 2, 3, 4, 5])
    assert expected < 0 and result["alpha"] == pytest.approx(expected, abs=1e-4)
    assert result["n"] == 8 and result["disagreement_rate"] == pytest.approx(0.5)
    # a value that occurs only next to a failed pass (1 here) is inside the rubric's domain: no crash


def test_alpha_is_undefined_with_the_reason_when_it_cannot_be_computed():
    constant = reliability.self_consistency(passes_frame([[4, 4, 4], [4, 4, 4]]), scales={"c": (1, 5)})
    figures = constant["criteria"]["c"]
    assert figures["alpha"] is None and "every score is 4" in figures["undefined"]
    assert figures["disagreement_rate"] == 0.0
    lonely = reliability.self_consistency(passes_frame([[4, None, 2], [5, 3, None]]), scales={"c": (1, 5)})
    assert lonely["criteria"]["c"]["alpha"] is None and "1 unit(s)" in lonely["criteria"]["c"]["undefined"]


def test_weighted_kappa_counts_unused_scale_points_as_sklearn_with_labels():
    from sklearn.metrics import cohen_kappa_score

    judge_scores = np.array([1, 1, 2, 2, 5, 5, 1, 2, 5, 5, 2, 1])
    human = np.array([1, 2, 2, 1, 5, 2, 1, 2, 5, 1, 5, 1])
    kappa, note = labels.weighted_kappa(judge_scores, human, (1, 5))
    reference = cohen_kappa_score(judge_scores, human, weights="quadratic", labels=[1, 2, 3, 4, 5])
    assert note is None and kappa == pytest.approx(reference, abs=1e-12)
    unused_dropped = cohen_kappa_score(judge_scores, human, weights="quadratic")  # 1, 2, 5 as if equally spaced
    assert abs(unused_dropped - reference) > 0.01
    rng = np.random.default_rng(5)
    for _ in range(20):  # and on random ratings, means of passes included
        judged, labelled = rng.integers(1, 8, 15) + rng.choice([0, 0.5], 15), rng.integers(1, 8, 15)
        kappa, _ = labels.weighted_kappa(judged, labelled, (1, 7))
        assert kappa == pytest.approx(cohen_kappa_score(np.floor(judged + 0.5).astype(int), labelled,
                                                        weights="quadratic", labels=list(range(1, 9))), abs=1e-12)


def test_spearman_is_scipys():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    for _ in range(10):
        pairs = np.column_stack([rng.integers(1, 6, 25), rng.integers(5, 400, 25)]).astype(float)  # ties included
        assert reliability.spearman(pairs) == pytest.approx(spearmanr(pairs[:, 0], pairs[:, 1]).statistic, abs=1e-12)
    assert math.isnan(reliability.spearman(np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])))


def test_a_mean_of_passes_is_rounded_half_up_for_kappa():
    assert labels.round_half_up([2.5, 3.5, 1.49, 4.5]).tolist() == [3, 4, 1, 5]  # np.rint: 2, 4, 1, 4


def test_kappa_of_a_constant_judge_says_why_instead_of_a_confident_zero():
    kappa, note = labels.weighted_kappa(np.full(8, 3.0), np.array([1, 2, 3, 4, 5, 3, 2, 4]), (1, 5))
    assert kappa == 0.0 and "the judge gave every labelled answer 3" in note
    kappa, note = labels.weighted_kappa(np.full(4, 3.0), np.full(4, 3), (1, 5))
    assert math.isnan(kappa) and "undefined" in note


def test_small_samples_are_flagged_everywhere_in_the_card():
    card = {"a": {"estimate": 0.5, "n": 4}, "b": {"inner": {"estimate": 1.0, "n": 40}, "n": 29},
            "c": [{"n": 3}]}
    assert reliability.flag_small_samples(card, 30) == 3
    assert "n = 4 < score.min_n 30" in card["a"]["small_sample"]
    assert "small_sample" not in card["b"]["inner"] and "small_sample" in card["c"][0]


def test_the_score_stage_survives_failed_passes_and_says_what_is_missing(outputs):
    rows = prepare(outputs, n=6)
    params = make_params(None, backend="reference", repeats=2)
    judge.run(judge.plan(params), progress=False)
    latest = store.latest_rows(params.layout.judge)
    (checkpoint, sample_id, _), row = next(iter(latest.items()))
    key = max(row.scores, key=lambda k: len({r.scores[k] for r in latest.values()}))  # a criterion that varies
    with store.Appender(params.layout.judge) as out:
        # pass 0: a score no other row has, next to a failed pass 1 (the old code's "out-of-domain" crash)
        out.append(row.model_copy(update={"scores": {**row.scores, key: 1}, "repeat": 0}))
        out.append(row.model_copy(update={"status": "error", "scores": None, "error": "HTTP 500", "repeat": 1}))
        other = [r for (c, i, rep), r in latest.items() if (c, i) != (checkpoint, sample_id) and rep == 1][0]
        out.append(other.model_copy(update={"status": "error", "scores": None, "error": "timeout"}))
    card = card_of(params)
    consistency = card["self_consistency"]
    assert consistency["missing_passes"] == 2 and consistency["units"] == rows
    figures = consistency["criteria"][key]
    assert figures["n"] == rows - 2  # two units have one pass left: not pairable, counted as missing
    assert figures["alpha"] == 1.0  # the pairable units agree (the reference judge is deterministic)
    assert "small_sample" in figures  # 10 units < score.min_n 30


def test_the_card_reads_the_pairwise_judge_summary(outputs):
    prepare(outputs, n=4)
    params = make_params(None, backend="reference", mode="pairwise")
    judge.run(judge.plan(params), progress=False)
    assert params.layout.judge_summary("pairwise").is_file() and not params.layout.judge_summary("single").exists()
    card = card_of(params)
    assert card["pairwise_costs"]["judgments"] == 8 and "seconds_per_1000" in card["pairwise_costs"]
    assert card["pairwise"]["flip_rate"]["meaning"].startswith("a position flip")
