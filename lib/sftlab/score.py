"""Score: checkpoints and experiments compared with numbers a reader can trust.

Reads, for each compared experiment, only the files of the stages before it:
    outputs/<exp>/generations/<checkpoint>.jsonl   one row per sample + degeneration metrics (infer)
    outputs/<exp>/judge/<checkpoint>.jsonl         judgments; the latest row per (checkpoint, id) wins (judge)
    outputs/<exp>/train/trainer_state.json         training curves (train)

Per (experiment, checkpoint): the mean of each criterion and of the overall score with seeded 95%
bootstrap intervals, the judge's error rate, the EOS-termination rate, repetition rates, mean length,
cost; and the paired bootstrap difference of each against a baseline over the sample ids both share.
Unscored rows (judge errors, not judged) are excluded from score means and counted, never taken as 0.

Writes under outputs/<exp>/scores/: summary.csv, per_sample.parquet, differences.csv, headline.json
(read by outputs/index.html) and figures/*.png. Raises `ScoreError` when a compared experiment has no
generations, or the baseline names a checkpoint that was not generated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sftlab import checkpoints, paths
from sftlab.config import Params, atomic_write_text
from sftlab.judge import store

DEGENERATION = ["eos_terminated", "rep_2", "rep_3", "rep_4", "seq_rep_4", "distinct_1", "distinct_2"]
SCORE_PREFIX = "score:"  # per-criterion columns of the per-sample table: "score:정확성"
# What the origin observed by eye in its collator study, for the regenerated table.
ORIGIN_OBSERVATIONS = {
    "baseline": "fine",
    "collator": "repeats itself, does not stop",
    "collator_padfix": "mostly fixed",
    "trl_completion": "(not in the origin)",
}


class ScoreError(ValueError):
    """Inputs that cannot be scored; the message names the experiment or checkpoint."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file written with append + flush; a torn last line (a kill mid-write) is skipped."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ScoreError(f"{path}:{number}: not valid JSON") from None
    return rows


def checkpoint_step(name: str) -> int:
    """The `step` column: a checkpoint's training step, -1 for the base model (so it sorts first)."""
    step = checkpoints.name_step(name)
    return -1 if step is None else step


def per_sample(experiments: list[str]) -> pd.DataFrame:
    """One row per (experiment, checkpoint, id): generation metrics joined with the latest judgment."""
    frames = []
    for experiment in experiments:
        exp_dir = paths.experiment_dir(experiment)
        generation_files = sorted((exp_dir / "generations").glob("*.jsonl"))
        if not generation_files:
            raise ScoreError(f"experiment '{experiment}': no generations in {exp_dir / 'generations'} "
                             "(run its infer stage first)")
        generations = pd.DataFrame([row for f in generation_files for row in read_jsonl(f)])
        generations["experiment"] = experiment
        judgments = _latest_judgments(exp_dir / "judge")
        if judgments.empty:
            merged = generations.assign(judge_status="not_judged")
        else:
            merged = generations.merge(judgments, on=["checkpoint", "id"], how="left")
            merged["judge_status"] = merged["judge_status"].fillna("not_judged")
        frames.append(merged)
    samples = pd.concat(frames, ignore_index=True)
    if "meta" in samples:
        meta = pd.json_normalize(samples["meta"].apply(lambda m: m if isinstance(m, dict) else {}))
        for column in ("lang", "category"):
            if column in meta:
                samples[column] = meta[column].values
    samples["step"] = samples["checkpoint"].map(checkpoint_step)
    samples["eos_terminated"] = samples["eos_terminated"].astype(float)
    return samples.sort_values(["experiment", "step", "id"], kind="stable").reset_index(drop=True)


def _latest_judgments(judge_dir: Path) -> pd.DataFrame:
    # The judge stage's own reader: a repaired row comes after the failure it replaces, the last one wins.
    latest = store.latest_rows(judge_dir) if judge_dir.is_dir() else {}
    if not latest:
        return pd.DataFrame()
    records = []
    for (checkpoint, sample_id), row in latest.items():
        record = {"checkpoint": checkpoint, "id": sample_id, "judge_status": row.get("status"),
                  "overall": row.get("overall") if row.get("status") == "judged" else None,
                  "judge_error": row.get("error"), "cost_usd": row.get("cost_usd") or 0.0,
                  "judge_backend": (row.get("judge") or {}).get("backend"),
                  "judge_model": (row.get("judge") or {}).get("model")}
        if row.get("status") == "judged":
            for criterion, value in (row.get("scores") or {}).items():
                record[SCORE_PREFIX + criterion] = value
        records.append(record)
    return pd.DataFrame(records)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def bootstrap_mean(values, n_boot: int, confidence: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval; NaNs are dropped first (unscored rows are not zeros)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(values.mean()), float(low), float(high))


def criteria_of(samples: pd.DataFrame) -> list[str]:
    return [c.removeprefix(SCORE_PREFIX) for c in samples.columns if c.startswith(SCORE_PREFIX)]


def summarize(samples: pd.DataFrame, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """One row per (experiment, checkpoint)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (experiment, step, checkpoint), group in samples.groupby(["experiment", "step", "checkpoint"], sort=True):
        judged = group["judge_status"] == "judged"
        row = {"experiment": experiment, "checkpoint": checkpoint, "step": step, "n": len(group),
               "n_judged": int(judged.sum()), "judge_errors": int((group["judge_status"] == "error").sum()),
               "not_judged": int((group["judge_status"] == "not_judged").sum())}
        row["judge_error_rate"] = row["judge_errors"] / len(group)
        _put(row, "eos_rate", bootstrap_mean(group["eos_terminated"], n_boot, confidence, rng))
        for metric in DEGENERATION[1:]:
            row[metric] = float(group[metric].mean())
        row["mean_tokens"] = float(group["n_tokens"].mean())
        row["length_ratio"] = float(group["length_ratio"].mean())
        if "overall" in group:
            _put(row, "overall", bootstrap_mean(group["overall"], n_boot, confidence, rng))
        for criterion in criteria_of(samples):
            _put(row, criterion, bootstrap_mean(group[SCORE_PREFIX + criterion], n_boot, confidence, rng))
        row["cost_usd"] = float(group["cost_usd"].sum()) if "cost_usd" in group else 0.0
        row["judge"] = _judge_label(group)
        rows.append(row)
    return pd.DataFrame(rows)


def _put(row: dict, name: str, estimate: tuple[float, float, float]) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = estimate


def _judge_label(group: pd.DataFrame) -> str:
    if "judge_backend" not in group:
        return "not judged"
    labels = {f"{b}:{m}" if m else str(b) for b, m in zip(group["judge_backend"], group["judge_model"]) if isinstance(b, str)}
    return ", ".join(sorted(labels)) or "not judged"


def parse_baseline(baseline: str | None, experiments: list[str]) -> tuple[str, str]:
    """`<experiment>/<checkpoint>`, `<checkpoint>` (of the first experiment), or None: the first's base model."""
    if not baseline:
        return experiments[0], "base"
    if "/" in baseline:
        experiment, checkpoint = baseline.rsplit("/", 1)
        return experiment, checkpoint
    return experiments[0], baseline


def paired_differences(samples: pd.DataFrame, baseline: tuple[str, str], n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """For each (experiment, checkpoint) and metric: mean of (value - baseline value) over shared ids,
    with a bootstrap interval over those ids (resampling pairs keeps the per-sample pairing)."""
    base = samples[(samples["experiment"] == baseline[0]) & (samples["checkpoint"] == baseline[1])]
    if base.empty:
        raise ScoreError(f"baseline {baseline[0]}/{baseline[1]} has no generations; "
                         f"available: {sorted(set(samples['experiment'] + '/' + samples['checkpoint']))}")
    metrics = ["overall", *[SCORE_PREFIX + c for c in criteria_of(samples)], "eos_terminated", "rep_4", "n_tokens"]
    metrics = [m for m in metrics if m in samples]
    base = base.set_index("id")
    rng = np.random.default_rng(seed)
    rows = []
    for (experiment, step, checkpoint), group in samples.groupby(["experiment", "step", "checkpoint"], sort=True):
        if (experiment, checkpoint) == baseline:
            continue
        group = group.set_index("id")
        shared = group.index.intersection(base.index)
        for metric in metrics:
            diff = (group.loc[shared, metric].astype(float) - base.loc[shared, metric].astype(float)).dropna()
            mean, low, high = bootstrap_mean(diff.values, n_boot, confidence, rng)
            rows.append({"experiment": experiment, "checkpoint": checkpoint, "step": step,
                         "metric": metric.removeprefix(SCORE_PREFIX), "n_pairs": len(diff),
                         "difference": mean, "low": low, "high": high,
                         "baseline": f"{baseline[0]}/{baseline[1]}"})
    return pd.DataFrame(rows)


def study_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The origin's table, measured: each experiment's last checkpoint, with the origin's observation."""
    last = summary[summary["step"] >= 0].sort_values(["experiment", "step"]).groupby("experiment").tail(1)
    table = pd.DataFrame({
        "experiment": last["experiment"],
        "checkpoint": last["checkpoint"],
        "origin observed": last["experiment"].map(lambda e: ORIGIN_OBSERVATIONS.get(e, "")),
        "terminates (EOS)": last.apply(lambda r: _interval(r, "eos_rate", percent=True), axis=1),
        "rep-4": last["rep_4"].round(3),
        "seq-rep-4": last["seq_rep_4"].round(3),
        "mean tokens": last["mean_tokens"].round(1),
    })
    if "overall" in last:
        table["overall score"] = last.apply(lambda r: _interval(r, "overall"), axis=1)
    table["judge"] = last["judge"]
    return table.reset_index(drop=True)


def _interval(row, name: str, percent: bool = False) -> str:
    if pd.isna(row.get(name)):
        return "—"
    scale, digits, unit = (100, 1, "%") if percent else (1, 3, "")
    value, low, high = (row[name] * scale, row[f"{name}_low"] * scale, row[f"{name}_high"] * scale)
    return f"{value:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def compared_experiments(params: Params) -> list[str]:
    """This experiment (when it generated anything) and `score.experiments`, in that order."""
    own = [params.experiment] if (params.output_dir / "generations").is_dir() else []
    names = list(dict.fromkeys(own + list(params.score.experiments)))
    if not names:
        raise ScoreError(f"experiment '{params.experiment}' has no generations and score.experiments is empty: "
                         "nothing to score")
    return names


def run_scores(params: Params) -> dict[str, pd.DataFrame]:
    """Compute and write everything; return the tables for display."""
    experiments = compared_experiments(params)
    samples = per_sample(experiments)
    options = {"n_boot": params.score.bootstrap, "confidence": params.score.confidence, "seed": params.seed}
    summary = summarize(samples, **options)
    baseline = parse_baseline(params.score.baseline, experiments)
    differences = paired_differences(samples, baseline, **options)
    out = params.output_dir / "scores"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "differences.csv", differences.to_csv(index=False))
    samples.drop(columns=["prompt", "meta"], errors="ignore").to_parquet(out / "per_sample.parquet", index=False)
    atomic_write_text(out / "headline.json", json.dumps(headline(summary), ensure_ascii=False, indent=2) + "\n")
    return {"samples": samples, "summary": summary, "differences": differences, "study": study_table(summary)}


def headline(summary: pd.DataFrame) -> dict[str, str]:
    """A few numbers per experiment (its last checkpoint) for outputs/index.html."""
    result = {}
    for _, row in summary.sort_values(["experiment", "step"]).groupby("experiment").tail(1).iterrows():
        text = f"{row['checkpoint']}: EOS {row['eos_rate']:.0%}, rep-4 {row['rep_4']:.3f}"
        if "overall" in row and not pd.isna(row["overall"]):
            text += f", overall {row['overall']:.3f} [{row['overall_low']:.3f}, {row['overall_high']:.3f}]"
        result[row["experiment"]] = f"{text} ({row['judge']})"
    return result


def training_history(experiments: list[str]) -> pd.DataFrame:
    """The train stage's curves (`launch.training_curves`) of every experiment, one frame for overlaying."""
    from sftlab.launch import training_curves

    frames = [training_curves(paths.experiment_dir(e) / "train").assign(experiment=e) for e in experiments]
    columns = ["experiment", "step", "loss", "grad_norm"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
