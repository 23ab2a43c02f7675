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
pairs, style coefficients): see sftlab.score.pairwise; and figures/*.png (sftlab.score.views), which the
notebook only displays. A file is written only when its content changed: a second run on the same inputs
writes nothing and says so.
Raises `ScoreError` when a compared experiment has no generations, or the baseline names a
checkpoint that was not generated.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from sftlab import labels, paths
from sftlab.config import Params
from sftlab.files import write_if_changed
from sftlab.infer import store as generations_store
from sftlab.judge.rubric import RubricError, load_rubric
from sftlab.score import pairwise, reliability, stats, style, views
from sftlab.score.samples import ScoreError, criteria_of, per_sample, training_history


@dataclass(frozen=True)
class Plan:
    params: Params
    experiments: list[str]  # this experiment (when it generated anything) and score.experiments
    baseline: tuple[str, str]  # (experiment, checkpoint)

    def estimate(self) -> dict[str, Any]:
        """What `run` will read and compute: per compared experiment its generation and judgment files."""
        reading = {}
        for experiment in self.experiments:
            layout = paths.ExperimentLayout.of(experiment)
            reading[experiment] = {"generation_files": len(generations_store.generation_files(layout.generations)),
                                   "judgment_files": len(list(layout.judge.glob("*.jsonl"))),
                                   "pairwise_judgment_files": len(list(layout.pairwise_judge.glob("*.jsonl")))}
        score = self.params.score
        return {"experiments": self.experiments, "baseline": "/".join(self.baseline), "reading": reading,
                "bootstrap": score.bootstrap, "confidence": score.confidence,
                "writes": str(self.params.layout.scores)}


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
    written: list[Path] = field(default_factory=list)  # every file of the stage (tables and figures)
    changed: list[Path] = field(default_factory=list)  # those this run wrote (their content changed)
    figures: list[Path] = field(default_factory=list)  # scores/figures/*.png, for the notebook to display
    judge_failures: dict[str, str] = field(default_factory=dict)  # experiment -> "judge: 3/40 rows failed — ..."
    separability: float | None = None  # pairwise: share of all pairs of models whose intervals do not overlap
    reliability: dict = field(default_factory=dict)  # the judge's reliability card (reliability.json)

    def __str__(self) -> str:
        summary = self.tables.get("summary", pd.DataFrame())
        written = ", ".join(p.name for p in self.changed) if self.changed else "nothing (every file is up to date)"
        return f"scored {len(summary)} (experiment, checkpoint) pairs; written: {written}"


def run(planned: Plan, echo: Callable[[str], None] = print) -> Summary:
    """Compute every table and figure; write each file whose content changed (so a second call on the same
    inputs writes nothing, and says so); return the tables and the figures' paths for display."""
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
    contents = {"summary.csv": summary.to_csv(index=False), "differences.csv": differences.to_csv(index=False),
                "study_table.csv": study.to_csv(index=False),
                "reliability.json": json.dumps(card, ensure_ascii=False, indent=2) + "\n",
                "headline.json": json.dumps(lines, ensure_ascii=False, indent=2) + "\n"}
    files = {out / name: text.encode("utf-8") for name, text in contents.items()}
    parquet = io.BytesIO()
    samples.drop(columns=["prompt", "meta"], errors="ignore").to_parquet(parquet, index=False)
    files[out / "per_sample.parquet"] = parquet.getvalue()
    tables = {"samples": samples, "summary": summary, "differences": differences, "study": study}
    if pair_tables:
        tables.update(pair_tables)
        for name in ("pairwise", "ranking"):
            files[out / f"{name}.csv"] = pair_tables[name].to_csv(index=False).encode("utf-8")
        files[out / "ranking.json"] = (json.dumps(pair_tables["ranking_about"], indent=2) + "\n").encode("utf-8")
    figures = {params.layout.figures / name: image for name, image in _figures(planned, tables).items()}
    files.update(figures)
    out.mkdir(parents=True, exist_ok=True)
    params.layout.figures.mkdir(parents=True, exist_ok=True)
    changed = [path for path, data in files.items() if write_if_changed(path, data)]
    if not changed:
        echo(f"score: nothing to do — every table and figure in {out} is up to date")
    return Summary(tables=tables, written=list(files), changed=changed, figures=list(figures),
                   judge_failures=failures, separability=pair_tables.get("separability") if pair_tables else None,
                   reliability=card)


def _figures(planned: Plan, tables: dict) -> dict[str, bytes]:
    """scores/figures/*.png: criteria by checkpoint, training curves, degeneration, score distributions, and
    from pairwise judgments the win-rate matrix and the ranking."""
    by_checkpoint, samples = tables["summary"], tables["samples"]
    criteria = criteria_of(samples)
    figures = {"criteria.png": views.criteria_by_checkpoint(by_checkpoint, criteria),
               "training_curves.png": views.training_curves(training_history(list(dict.fromkeys(
                   by_checkpoint["experiment"])))),
               "degeneration.png": views.degeneration(by_checkpoint)}
    if criteria:
        figures["score_distributions.png"] = views.score_distributions(samples, criteria)
    if "ranking" in tables:
        figures["win_rates.png"] = views.win_rate_matrix(tables["outcomes"])
        figures["ranking.png"] = views.ranking(tables["ranking"])
    return {name: views.png(figure) for name, figure in figures.items()}


def reliability_card(planned: Plan, samples: pd.DataFrame, pair_tables: dict) -> dict:
    """The judge's reliability card (sftlab.score.reliability), with human agreement where labels exist."""
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
