"""The score stage's numbers (intervals from sftlab.score.bootstrap): per-checkpoint summary, paired differences, the
study table and the index headline. Pure functions of the per-sample frame (sftlab.score.samples).

Unscored rows (judge errors, not judged) are excluded from score means and counted, never taken as 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sftlab.metrics import METRICS
from sftlab.score import bootstrap
from sftlab.score.samples import SCORE_PREFIX, ScoreError, criteria_of

# Rates of degeneration per checkpoint: termination, then every metric but the length ratio (shown apart).
DEGENERATION = ["eos_terminated", *(m for m in METRICS if m != "length_ratio")]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


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
        _put(row, "eos_rate", bootstrap.mean_interval(group["eos_terminated"], n_boot, confidence, rng))
        for metric in DEGENERATION[1:]:
            row[metric] = float(group[metric].mean())
        row["mean_tokens"] = float(group["n_tokens"].mean())
        row["length_ratio"] = float(group["length_ratio"].mean())
        if "overall" in group:
            _put(row, "overall", bootstrap.mean_interval(group["overall"], n_boot, confidence, rng))
        for criterion in criteria_of(samples):
            _put(row, criterion, bootstrap.mean_interval(group[SCORE_PREFIX + criterion], n_boot, confidence, rng))
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
            mean, low, high = bootstrap.mean_interval(diff.values, n_boot, confidence, rng)
            rows.append({"experiment": experiment, "checkpoint": checkpoint, "step": step,
                         "metric": metric.removeprefix(SCORE_PREFIX), "n_pairs": len(diff),
                         "difference": mean, "low": low, "high": high,
                         "baseline": f"{baseline[0]}/{baseline[1]}"})
    return pd.DataFrame(rows)


def study_table(summary: pd.DataFrame, observations: dict[str, str] | None = None) -> pd.DataFrame:
    """Each experiment's last checkpoint, measured, beside what was observed of it (`score.observations`,
    e.g. what the origin saw by eye in its collator study)."""
    last = summary[summary["step"] >= 0].sort_values(["experiment", "step"]).groupby("experiment").tail(1)
    table = pd.DataFrame({
        "experiment": last["experiment"],
        "checkpoint": last["checkpoint"],
        "observed": last["experiment"].map(lambda e: (observations or {}).get(e, "")),
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


def judge_failures(samples: pd.DataFrame) -> dict[str, str]:
    """Per experiment with unscored rows: "judge: 160/160 rows failed — <the most common error>"."""
    result = {}
    for experiment, group in samples.groupby("experiment", sort=False):
        failed = group["judge_status"] == "error"
        not_judged = group["judge_status"] == "not_judged"
        if not failed.any() and not not_judged.any():
            continue
        parts = [f"{int(failed.sum())}/{len(group)} rows failed"] if failed.any() else []
        parts += [f"{int(not_judged.sum())}/{len(group)} rows not judged"] if not_judged.any() else []
        errors = group.loc[failed, "judge_error"].dropna() if "judge_error" in group else pd.Series(dtype=object)
        reason = f" — {errors.value_counts().index[0]}" if len(errors) else ""
        result[experiment] = f"judge: {', '.join(parts)}{reason}"
    return result


def headline(summary: pd.DataFrame, failures: dict[str, str] | None = None) -> dict[str, str]:
    """A few numbers per experiment (its last checkpoint) for outputs/index.html; judge failures first."""
    result = {}
    for _, row in summary.sort_values(["experiment", "step"]).groupby("experiment").tail(1).iterrows():
        text = f"{row['checkpoint']}: EOS {row['eos_rate']:.0%}, rep-4 {row['rep_4']:.3f}"
        if "overall" in row and not pd.isna(row["overall"]):
            text += f", overall {row['overall']:.3f} [{row['overall_low']:.3f}, {row['overall_high']:.3f}]"
        failure = (failures or {}).get(row["experiment"])
        result[row["experiment"]] = (f"{failure}; " if failure else "") + f"{text} ({row['judge']})"
    return result
