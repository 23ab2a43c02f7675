"""Score stage on hand-made generation and judgment files with known answers."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sftlab import jsonl, runner, score
from sftlab.config import validate
from sftlab.infer import GenerationsError

CRITERIA = ("정확성", "간결성")


def generation(sample_id: str, checkpoint: str, eos: bool, rep_4: float = 0.0, lang: str = "ko") -> dict:
    return {"id": sample_id, "checkpoint": checkpoint, "prompt": [{"role": "user", "content": "질문"}],
            "reference": "답입니다.", "output": "답입니다." if eos else "답 답 답 답", "n_tokens": 5 if eos else 64,
            "finish_reason": "eos" if eos else "length", "eos_terminated": eos, "rep_2": rep_4, "rep_3": rep_4,
            "rep_4": rep_4, "seq_rep_4": rep_4, "distinct_1": 1 - rep_4, "distinct_2": 1 - rep_4,
            "length_ratio": 1.0 if eos else 12.0, "meta": {"lang": lang, "category": "capital"}}


def judgment(sample_id: str, checkpoint: str, overall: float | None, status: str = "judged") -> dict:
    scores = {c: round(1 + overall * 4) for c in CRITERIA} if status == "judged" else None
    return {"key": f"{checkpoint}-{sample_id}", "id": sample_id, "checkpoint": checkpoint, "status": status,
            "judge": {"backend": "reference", "model": "reference", "rubric": "qa_ko"}, "scores": scores,
            "reasons": None, "overall": overall if status == "judged" else None,
            "error": None if status == "judged" else "schema violation", "raw": "{}", "usage": None,
            "cost_usd": 0.001, "meta": {"lang": "ko"}}


def write_rows(path: Path, rows: list[dict], torn_tail: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text + ('{"id": "torn' if torn_tail else ""), encoding="utf-8")


def make_experiment(outputs: Path, name: str, n: int = 20, judge_errors: int = 0) -> None:
    """base: half the samples stop, overall 0.4; checkpoint-10: all stop, overall 0.4 + 0.1 each."""
    for checkpoint, stop_every, bonus in (("base", 2, 0.0), ("checkpoint-10", 1, 0.1)):
        ids = [f"s{i:02d}" for i in range(n)]
        write_rows(outputs / name / "generations" / f"{checkpoint}.jsonl",
                   [generation(i, checkpoint, eos=(k % stop_every == 0), rep_4=0.0 if k % stop_every == 0 else 0.8)
                    for k, i in enumerate(ids)])
        judged = [judgment(i, checkpoint, 0.4 + bonus) for i in ids]
        for k in range(judge_errors if checkpoint == "checkpoint-10" else 0):
            judged[k] = judgment(ids[k], checkpoint, None, status="error")
        write_rows(outputs / name / "judge" / f"{checkpoint}.jsonl", judged)


def params_for(name: str, **score_settings):
    return validate({"experiment": name, "seed": 3, "score": score_settings})


def test_summary_counts_rates_and_intervals(outputs):
    make_experiment(outputs, "exp")
    tables = score.run(score.plan(params_for("exp"))).tables
    summary = tables["summary"].set_index("checkpoint")
    assert list(summary.index) == ["base", "checkpoint-10"]  # base first, then by step
    assert summary.loc["base", "eos_rate"] == 0.5 and summary.loc["checkpoint-10", "eos_rate"] == 1.0
    assert summary.loc["base", "eos_rate_low"] < 0.5 < summary.loc["base", "eos_rate_high"]
    assert summary.loc["base", "rep_4"] == pytest.approx(0.4)
    assert summary.loc["checkpoint-10", "overall"] == pytest.approx(0.5)
    assert summary.loc["checkpoint-10", "정확성"] == 3  # round(1 + 0.5 * 4)
    assert summary.loc["base", "cost_usd"] == pytest.approx(0.02)
    assert summary.loc["base", "judge"] == "reference:reference"
    # Seeded: the same inputs give the same intervals.
    again = score.run(score.plan(params_for("exp"))).tables["summary"]
    pd.testing.assert_frame_equal(tables["summary"], again)
    written = outputs / "exp" / "scores"
    assert (written / "summary.csv").exists() and (written / "differences.csv").exists()
    assert len(pd.read_parquet(written / "per_sample.parquet")) == 40
    assert "exp" in json.loads((written / "headline.json").read_text())


def test_run_writes_the_figures_and_the_same_plan_run_twice_writes_nothing_the_second_time(outputs):
    make_experiment(outputs, "exp")
    planned = score.plan(params_for("exp"))
    estimate = planned.estimate()
    assert estimate["reading"] == {"exp": {"generation_files": 2, "judgment_files": 2, "pairwise_judgment_files": 0}}
    scores = outputs / "exp" / "scores"
    assert not scores.exists()  # planning and estimating write nothing
    first = score.run(planned)
    assert {p.name for p in first.figures} == {"criteria.png", "training_curves.png", "degeneration.png",
                                               "score_distributions.png"}
    assert all(p.parent == scores / "figures" and p.read_bytes().startswith(b"\x89PNG") for p in first.figures)
    assert set(first.changed) == set(first.written) and scores / "summary.csv" in first.written
    times = {p: p.stat().st_mtime_ns for p in scores.rglob("*")}
    said = []
    second = score.run(planned, echo=said.append)  # the notebook's cell run again
    assert second.changed == [] and said == [f"score: nothing to do — every table and figure in {scores} is up to date"]
    assert {p: p.stat().st_mtime_ns for p in scores.rglob("*")} == times
    pd.testing.assert_frame_equal(first.tables["summary"], second.tables["summary"])


def test_unscored_rows_are_excluded_and_counted_not_zero(outputs):
    make_experiment(outputs, "exp", judge_errors=5)
    summary = score.run(score.plan(params_for("exp"))).tables["summary"].set_index("checkpoint")
    row = summary.loc["checkpoint-10"]
    assert (row["n"], row["n_judged"], row["judge_errors"]) == (20, 15, 5)
    assert row["judge_error_rate"] == 0.25
    assert row["overall"] == pytest.approx(0.5)  # errors as zeros would give 0.375


def test_the_latest_judgment_of_a_sample_wins(outputs):
    make_experiment(outputs, "exp")
    path = outputs / "exp" / "judge" / "base.jsonl"
    rows = jsonl.read_rows(path)
    rows[0] = judgment("s00", "base", None, status="error")  # the failure first...
    rows.append(judgment("s00", "base", 1.0))  # ...then its repair, appended by a re-run
    write_rows(path, rows)
    samples = score.per_sample(["exp"])
    s00 = samples[(samples["checkpoint"] == "base") & (samples["id"] == "s00")]
    assert len(s00) == 1 and s00["overall"].item() == 1.0 and s00["judge_status"].item() == "judged"


def test_missing_judgments_count_as_not_judged(outputs):
    make_experiment(outputs, "exp")
    (outputs / "exp" / "judge" / "checkpoint-10.jsonl").unlink()
    summary = score.run(score.plan(params_for("exp"))).tables["summary"].set_index("checkpoint")
    assert summary.loc["checkpoint-10", "not_judged"] == 20
    assert np.isnan(summary.loc["checkpoint-10", "overall"])


def test_paired_differences_use_shared_ids_only(outputs):
    make_experiment(outputs, "exp")
    path = outputs / "exp" / "generations" / "checkpoint-10.jsonl"
    kept = path.read_text(encoding="utf-8").splitlines()[:15]  # 5 samples missing from this checkpoint
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    differences = score.run(score.plan(params_for("exp"))).tables["differences"].set_index("metric")
    overall = differences.loc["overall"]
    assert overall["n_pairs"] == 15 and overall["baseline"] == "exp/base"
    assert overall["difference"] == pytest.approx(0.1)
    assert overall["low"] == pytest.approx(0.1) and overall["high"] == pytest.approx(0.1)  # identical pairs
    eos = differences.loc["eos_terminated"]
    assert 0 < eos["low"] <= eos["difference"] <= eos["high"] <= 1


def test_bad_inputs_are_named(outputs):
    make_experiment(outputs, "exp")
    with pytest.raises(score.ScoreError, match=r"baseline exp/checkpoint-99 has no generations.*exp/base"):
        score.run(score.plan(params_for("exp", baseline="checkpoint-99"))).tables
    with pytest.raises(score.ScoreError, match="experiment 'ghost': no generations"):
        score.run(score.plan(params_for("exp", experiments=["ghost"]))).tables
    path = outputs / "exp" / "generations" / "base.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    write_rows(path, [json.loads(line) for line in lines], torn_tail=True)  # a kill mid-write: tolerated
    assert len(score.per_sample(["exp"])) == 40
    path.write_text(lines[0] + "\n{not json\n" + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(GenerationsError, match=r"base\.jsonl:2: not a JSON row"):
        score.per_sample(["exp"])


def test_study_table_is_written_beside_the_observations_of_the_study_file(outputs):
    for name in ("baseline", "collator"):
        make_experiment(outputs, name)
    observations = {"collator": "repeats itself, does not stop"}
    tables = score.run(score.plan(params_for("collator-study", experiments=["baseline", "collator"],
                                             baseline="baseline/base", observations=observations))).tables
    study = tables["study"].set_index("experiment")
    assert study.loc["collator", "observed"] == "repeats itself, does not stop"
    assert study.loc["baseline", "observed"] == ""  # nothing observed: nothing invented
    written = pd.read_csv(outputs / "collator-study" / "scores" / "study_table.csv", keep_default_na=False)
    assert written.set_index("experiment").loc["collator", "observed"] == "repeats itself, does not stop"
    assert study.loc["baseline", "terminates (EOS)"].startswith("100.0%")
    assert study.loc["baseline", "checkpoint"] == "checkpoint-10"


def test_korean_labels_have_no_missing_glyphs(outputs, tmp_path):
    from sftlab.score import views as figures

    make_experiment(outputs, "exp")
    tables = score.run(score.plan(params_for("exp"))).tables
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = figures.criteria_by_checkpoint(tables["summary"], list(CRITERIA), tmp_path / "criteria.png")
        figures.score_distributions(tables["samples"], list(CRITERIA), tmp_path / "dist.png")
        fig.canvas.draw()
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert missing == []
    assert (tmp_path / "criteria.png").stat().st_size > 10_000


@pytest.mark.slow
def test_score_notebook_over_a_study_folder(outputs, tmp_path):
    for name in ("a", "b"):
        make_experiment(outputs, name, judge_errors=2)
    (outputs / "a" / "status.json").write_text('{"stages": {}}', encoding="utf-8")  # as if a ran its stages here
    study = tmp_path / "mystudy"
    study.mkdir()
    for name in ("a", "b"):
        (study / f"{name}.yaml").write_text(f"experiment: {name}\n", encoding="utf-8")
    runner.run(study, stages=["score"])
    scores = outputs / "mystudy-study" / "scores"
    summary = pd.read_csv(scores / "summary.csv")
    assert sorted(set(summary["experiment"])) == ["a", "b"]
    for figure in ("criteria", "training_curves", "degeneration", "score_distributions"):
        assert (scores / "figures" / f"{figure}.png").exists(), figure
    report = (outputs / "mystudy-study" / "reports" / "score.html").read_text(encoding="utf-8")
    assert "정확성" in report and "reference:reference" in report and "repeats itself" not in report
    index = (outputs / "index.html").read_text(encoding="utf-8")
    assert "mystudy-study/reports/score.html" in index and "EOS 100%" in index
    # the study's comparison is linked from the study and from each of its experiments
    assert index.count(">compared in mystudy-study</a>") == 1 and ">compares 2</a>" in index
