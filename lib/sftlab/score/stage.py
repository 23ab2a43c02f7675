"""The score stage: checkpoints and experiments compared with numbers a reader can trust.

    planned = score_stage.plan(params)    # which experiments, against which baseline
    summary = score_stage.run(planned)    # compute and write every table; summary.tables for display

Reads, for each compared experiment, only the files of the stages before it (sftlab.score.samples).
Per (experiment, checkpoint): the mean of each criterion and of the overall score with seeded
bootstrap intervals, the judge's error rate, the EOS-termination rate, repetition rates, mean length,
cost; and the paired bootstrap difference of each against a baseline over the sample ids both share.

Writes under outputs/<exp>/scores/: summary.csv, differences.csv, study_table.csv, per_sample.parquet
reliability.json (the judge's reliability card, sftlab.score.reliability) and headline.json (read by
outputs/index.html); from pairwise judgments (judge.mode: pairwise) also
pairwise.csv (each model against the baseline: win/tie/loss with intervals, raw and length-controlled
win rates, position flips), ranking.csv (the style-controlled Bradley–Terry ranking with the raw one beside
it: scores with intervals, rank, separable) and ranking.json (which is the headline, separability over all
pairs, style coefficients): see sftlab.score.pairwise. The notebook adds figures/*.png (sftlab.score.views).
Raises `ScoreError` when a compared experiment has no generations, or the baseline names a
checkpoint that was not generated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sftlab.config import Params, atomic_write_text
from sftlab.judge.rubric import RubricError, load_rubric
from sftlab.score import pairwise, reliability, stats, style
from sftlab.score.samples import ScoreError, per_sample


@dataclass(frozen=True)
class Plan:
    params: Params
    experiments: list[str]  # this experiment (when it generated anything) and score.experiments
    baseline: tuple[str, str]  # (experiment, checkpoint)


def plan(params: Params) -> Plan:
    """Which experiments are compared, and against which baseline. Reads nothing but folder names."""
    own = [params.experiment] if params.layout.generations.is_dir() else []
    experiments = list(dict.fromkeys(own + list(params.score.experiments)))
    if not experiments:
        raise ScoreError(f"experiment '{params.experiment}' has no generations and score.experiments is empty: "
                         "nothing to score")
    return Plan(params, experiments, stats.parse_baseline(params.score.baseline, experiments))


@dataclass
class Summary:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # samples, summary, differences, study
    written: list[Path] = field(default_factory=list)
    judge_failures: dict[str, str] = field(default_factory=dict)  # experiment -> "judge: 3/40 rows failed — ..."
    separability: float | None = None  # pairwise: share of all pairs of models whose intervals do not overlap
    reliability: dict = field(default_factory=dict)  # the judge's reliability card (reliability.json)

    def __str__(self) -> str:
        summary = self.tables.get("summary", pd.DataFrame())
        return (f"scored {len(summary)} (experiment, checkpoint) pairs; written: "
                + ", ".join(p.name for p in self.written))


def run(planned: Plan) -> Summary:
    """Compute and write every table; return them for display."""
    params = planned.params
    samples = per_sample(planned.experiments)
    options = {"n_boot": params.score.bootstrap, "confidence": params.score.confidence, "seed": params.seed}
    summary = stats.summarize(samples, **options)
    differences = stats.paired_differences(samples, planned.baseline, **options)
    study = stats.study_table(summary, params.score.observations)
    failures = stats.judge_failures(samples)
    pair_tables = pairwise_tables(planned, samples)
    card = reliability_card(planned, samples, pair_tables)
    lines = stats.headline(summary, failures)
    for experiment, entry in card["experiments"].items():
        line = reliability.headline(entry)
        if line and experiment in lines:
            lines[experiment] += f"; {line}"
    if pair_tables and lines:
        own = params.experiment if params.experiment in lines else next(iter(lines))
        lines[own] += "; " + pairwise.headline(pair_tables["ranking"], pair_tables["ranking_about"])
    out = params.layout.scores
    out.mkdir(parents=True, exist_ok=True)
    written = {"summary.csv": summary.to_csv(index=False), "differences.csv": differences.to_csv(index=False),
               "study_table.csv": study.to_csv(index=False),
               "reliability.json": json.dumps(card, ensure_ascii=False, indent=2) + "\n",
               "headline.json": json.dumps(lines, ensure_ascii=False, indent=2) + "\n"}
    for name, text in written.items():
        atomic_write_text(out / name, text)
    samples.drop(columns=["prompt", "meta"], errors="ignore").to_parquet(out / "per_sample.parquet", index=False)
    tables = {"samples": samples, "summary": summary, "differences": differences, "study": study}
    paths_written = [out / name for name in written] + [out / "per_sample.parquet"]
    if pair_tables:
        tables.update(pair_tables)
        for name in ("pairwise", "ranking"):
            atomic_write_text(out / f"{name}.csv", pair_tables[name].to_csv(index=False))
            paths_written.append(out / f"{name}.csv")
        atomic_write_text(out / "ranking.json", json.dumps(pair_tables["ranking_about"], indent=2) + "\n")
        paths_written.append(out / "ranking.json")
    return Summary(tables=tables, written=paths_written, judge_failures=failures,
                   separability=pair_tables.get("separability") if pair_tables else None, reliability=card)


def reliability_card(planned: Plan, samples: pd.DataFrame, pair_tables: dict) -> dict:
    """The judge's reliability card (sftlab.score.reliability), with human agreement where labels exist."""
    from sftlab import labels, paths

    params = planned.params
    options = {"n_boot": min(params.score.bootstrap, 1000), "confidence": params.score.confidence, "seed": params.seed}
    agreement = {}
    scales = rubric_scales(params)
    name = pairwise.model_namer(planned.experiments)
    for experiment in planned.experiments:
        layout = paths.ExperimentLayout.of(experiment)
        found = labels.agreement(layout, samples[samples["experiment"] == experiment], scales=scales, **options) or {}
        if pair_tables:
            names = {c: name(experiment, c) for c in set(samples.loc[samples["experiment"] == experiment, "checkpoint"])}
            outcomes = pair_tables["outcomes"][pair_tables["outcomes"]["experiment"] == experiment]
            pairs = labels.pairwise_agreement(layout, outcomes, names, **options)
            if pairs:
                found["pairwise"] = pairs
        if found:
            agreement[experiment] = found
    return reliability.card(planned.experiments, samples, pair_tables, agreement, min_alpha=params.score.min_alpha,
                            min_n=params.score.min_n, scales=scales, **options)


def rubric_scales(params: Params) -> dict[str, tuple[int, int]]:
    """criterion key -> (lowest, highest) from the rubrics this experiment's judge uses: the value domain
    of α and the labels of κ. A rubric file that cannot be read leaves its criteria to the observed range
    (the card says which domain it used)."""
    scales: dict[str, tuple[int, int]] = {}
    for path in dict.fromkeys([params.judge.rubric, *(params.judge.rubric_by_lang or {}).values()]):
        try:
            scales.update({c.key: tuple(c.scale) for c in load_rubric(path).criteria})
        except (RubricError, OSError):
            continue
    return scales


def pairwise_tables(planned: Plan, samples: pd.DataFrame) -> dict:
    """From the pairwise judgments of the compared experiments (none: {}): battles, combined outcomes,
    `pairwise` (against the baseline), `ranking` (the headline: style-controlled unless
    `score.style_control` is false, with the raw ranking's columns beside it as `raw_*`), `ranking_about`
    (which ranking is the headline, separability, style coefficients), `flips`, and `separability` (the
    headline ranking's, over all pairs of models)."""
    params = planned.params
    judged = pairwise.battles(planned.experiments, samples)
    if judged.empty:
        return {}
    combined = pairwise.outcomes(judged)
    baseline = pairwise.model_namer(planned.experiments)(*planned.baseline)
    options = {"confidence": params.score.confidence, "seed": params.seed, "min_n": params.score.min_n,
               "n_boot": min(params.score.bootstrap, 200)}
    versus = pairwise.versus(combined, baseline, n_boot=params.score.bootstrap, confidence=params.score.confidence,
                             seed=params.seed)
    raw, raw_about = pairwise.ranking(judged, baseline, **options)
    about = {"headline": "raw", "raw": raw_about}
    ranked = raw
    if params.score.style_control:
        ranked, style_about = pairwise.ranking(judged, baseline, style_features=style.FEATURES, **options)
        about.update({"headline": "style_controlled", "style_controlled": style_about})
        beside = raw.set_index("model")[["score", "low", "high", "rank"]].add_prefix("raw_")
        ranked = ranked.join(beside, on="model")
    about["meaning"] = ("style-controlled Bradley–Terry (Arena-Hard-Auto's style control): each model's score with "
                        "the answers' length, markdown and Hangul share held equal; raw_*: without style control"
                        if params.score.style_control else "raw Bradley–Terry (score.style_control: false)")
    headline = about.get(about["headline"], raw_about)
    return {"battles": judged, "outcomes": combined, "pairwise": versus, "ranking": ranked, "ranking_about": about,
            "flips": pairwise.flip_rates(combined), "separability": headline["separability"]}
