"""The judge's reliability card: how far can this verdict be trusted? Written with every score.

Per compared experiment, from rows already on disk (no extra request), each figure with its sample size:

- **self-consistency** (with `judge.repeats` >= 2): Krippendorff's α across passes per criterion
  (ordinal, the `krippendorff` package; 1 = the passes always agree, 0 = no better than chance), the
  mean absolute difference between passes and the share of answers whose score differs between passes.
  Pairwise: the rate of verdicts that change between passes.
- **length preference**: single — Spearman ρ between the overall score and the answer's length in tokens;
  pairwise — P(prefer the longer answer) among decided pairs. With a seeded bootstrap interval.
- **position preference** (pairwise): P(prefer the answer shown first) among decided verdicts (0.5 is
  none), and the position-flip rate.
- **unscored share**: rows without a score (errors, not judged) — never counted as zero elsewhere.
- **cost and time per 1,000 judgments**, from the judgments' own cost and the judge stage's last run.
- **agreement with human labels** (sftlab.labels), when there are any: weighted Cohen's κ per criterion
  (quadratic weights, for ordinal scores; scikit-learn) and Spearman ρ, or in pairwise the raw agreement
  with ties; each with a bootstrap interval and the label count.

`score.min_alpha`: when a criterion's α falls below it, the card says the ranking is not trustworthy.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from sftlab import paths
from sftlab.score.samples import SCORE_PREFIX, judgment_passes


def _bootstrap(values: np.ndarray, stat, n_boot: int, confidence: float, rng) -> tuple[float, float, float]:
    if len(values) == 0:
        return (math.nan, math.nan, math.nan)
    estimate = stat(values)
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)]
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():  # every draw undefined (e.g. a constant column): no interval, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return (_clean(estimate), _clean(low), _clean(high))


def _clean(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


def _spearman(pairs: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return math.nan
    return float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)


def self_consistency(passes: pd.DataFrame) -> dict[str, Any]:
    """Krippendorff's α (ordinal) across passes and the mean absolute difference, per criterion."""
    import krippendorff

    judged = passes[passes["judge_status"] == "judged"]
    repeats = sorted(judged["repeat"].unique()) if len(judged) else []
    if len(repeats) < 2:
        return {"passes": len(repeats), "note": "one pass (judge.repeats: 1): no self-consistency to measure"}
    result: dict[str, Any] = {"passes": len(repeats), "criteria": {}}
    for column in [c for c in judged.columns if c.startswith(SCORE_PREFIX)]:
        table = judged.pivot_table(index="repeat", columns=["checkpoint", "id"], values=column, aggfunc="first")
        matrix = table.to_numpy(dtype=float)
        complete = matrix[:, ~np.isnan(matrix).any(axis=0)]
        if complete.shape[1] == 0:
            continue
        values = np.unique(complete)
        alpha = 1.0 if len(values) == 1 else krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal",
                                                                 value_domain=sorted(values))
        diffs = np.abs(complete[:, None, :] - complete[None, :, :]).mean(axis=(0, 1)) * len(repeats) / max(len(repeats) - 1, 1)
        disagree = (complete != complete[0]).any(axis=0).mean()
        result["criteria"][column.removeprefix(SCORE_PREFIX)] = {
            "alpha": _clean(alpha), "mean_abs_difference": _clean(diffs.mean()),
            "disagreement_rate": _clean(disagree), "n": int(complete.shape[1])}
    return result


def length_preference(samples: pd.DataFrame, n_boot: int, confidence: float, rng) -> dict[str, Any]:
    if "overall" not in samples:  # no single-answer judgments (e.g. pairwise only)
        return {"spearman_rho": None, "low": None, "high": None, "n": 0,
                "meaning": "correlation of the overall score with the answer's length in tokens"}
    judged = samples[samples["judge_status"] == "judged"].dropna(subset=["overall"])
    pairs = judged[["overall", "n_tokens"]].to_numpy(dtype=float)
    rho, low, high = _bootstrap(pairs, _spearman, n_boot, confidence, rng)
    return {"spearman_rho": rho, "low": low, "high": high, "n": len(pairs),
            "meaning": "correlation of the overall score with the answer's length in tokens"}


def pairwise_figures(battles: pd.DataFrame, outcomes: pd.DataFrame, n_boot: int, confidence: float,
                     rng) -> dict[str, Any]:
    judged = battles[battles["status"] == "judged"].dropna(subset=["verdict"])
    decided = judged[judged["verdict"] != 0]
    first = (decided["verdict"] > 0).to_numpy(dtype=float)
    p_first = _bootstrap(first, np.mean, n_boot, confidence, rng)
    longer = outcomes[(outcomes["outcome"] != 0) & (outcomes["length_diff"] != 0)]
    prefers_longer = (np.sign(longer["outcome"]) == np.sign(longer["length_diff"])).to_numpy(dtype=float)
    p_longer = _bootstrap(prefers_longer, np.mean, n_boot, confidence, rng)
    result = {
        "p_prefer_first": {"estimate": p_first[0], "low": p_first[1], "high": p_first[2], "n": len(first)},
        "p_prefer_longer": {"estimate": p_longer[0], "low": p_longer[1], "high": p_longer[2], "n": len(prefers_longer)},
        "flip_rate": {"estimate": _clean(outcomes["flip"].mean()) if len(outcomes) else None, "n": len(outcomes)},
    }
    repeats = outcomes["repeat"].nunique() if len(outcomes) else 0
    if repeats >= 2:
        by_unit = outcomes.groupby(["experiment", "id", "a", "b"])["outcome"].nunique()
        result["verdict_change_rate"] = {"estimate": _clean((by_unit > 1).mean()), "n": len(by_unit)}
    return result


def costs(layout: paths.ExperimentLayout, passes: pd.DataFrame) -> dict[str, Any]:
    judged = passes[passes["judge_status"] == "judged"]
    result: dict[str, Any] = {"judgments": len(judged)}
    if len(judged):
        result["cost_usd_per_1000"] = _clean(1000 * judged["cost_usd"].sum() / len(judged))
    try:
        last = json.loads((layout.judge / "summary.json").read_text(encoding="utf-8"))
        if last.get("judged"):
            result["seconds_per_1000"] = _clean(1000 * last["seconds"] / last["judged"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    return result


def card(experiments: list[str], samples: pd.DataFrame, pair_tables: dict, labels: dict | None, n_boot: int,
         confidence: float, seed: int, min_alpha: float | None) -> dict[str, Any]:
    """The card of every compared experiment, and whether the verdict can be trusted (`score.min_alpha`)."""
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"experiments": {}}
    for experiment in experiments:
        layout = paths.ExperimentLayout.of(experiment)
        mine = samples[samples["experiment"] == experiment]
        passes = judgment_passes(layout)
        entry: dict[str, Any] = {
            "judge": sorted({f"{b}:{m}" for b, m in zip(mine.get("judge_backend", []), mine.get("judge_model", []))
                             if isinstance(b, str)}),
            "rows": len(mine),
            "unscored_share": {"estimate": _clean((mine["judge_status"] != "judged").mean()) if len(mine) else None,
                               "n": len(mine)},
            "length_preference": length_preference(mine, n_boot, confidence, rng),
            "costs": costs(layout, passes) if len(passes) else {"judgments": 0},
        }
        if len(passes):
            entry["self_consistency"] = self_consistency(passes)
        if pair_tables:
            battles = pair_tables["battles"][pair_tables["battles"]["experiment"] == experiment]
            outcomes = pair_tables["outcomes"][pair_tables["outcomes"]["experiment"] == experiment]
            if len(battles):
                entry["pairwise"] = pairwise_figures(battles, outcomes, n_boot, confidence, rng)
        if labels and experiment in labels:
            entry["human_agreement"] = labels[experiment]
        result["experiments"][experiment] = entry
    alphas = [c["alpha"] for e in result["experiments"].values()
              for c in (e.get("self_consistency") or {}).get("criteria", {}).values() if c["alpha"] is not None]
    result["min_alpha"] = min_alpha
    result["lowest_alpha"] = min(alphas) if alphas else None
    result["trustworthy"] = not (min_alpha is not None and alphas and min(alphas) < min_alpha)
    if not result["trustworthy"]:
        result["warning"] = (f"self-consistency α {min(alphas):.2f} is below score.min_alpha {min_alpha}: the judge "
                             "disagrees with itself too often for its ranking to be trusted")
    return result


def headline(entry: dict[str, Any]) -> str:
    """One line of the card for the index: α, length preference, unscored share."""
    parts = []
    criteria = (entry.get("self_consistency") or {}).get("criteria") or {}
    if criteria:
        alphas = [c["alpha"] for c in criteria.values() if c["alpha"] is not None]
        if alphas:
            parts.append(f"judge α ≥ {min(alphas):.2f} over {entry['self_consistency']['passes']} passes")
    rho = entry["length_preference"]["spearman_rho"]
    if rho is not None:
        parts.append(f"length ρ {rho:+.2f}")
    unscored = entry["unscored_share"]["estimate"]
    if unscored:
        parts.append(f"unscored {unscored:.0%}")
    agreement = entry.get("human_agreement") or {}
    kappas = [c["kappa"]["estimate"] for c in agreement.get("criteria", {}).values() if c.get("kappa")]
    if kappas:
        parts.append(f"human κ {min(kappas):.2f}–{max(kappas):.2f} (n={agreement.get('labels')})")
    pairs = (agreement.get("pairwise") or {}).get("raw_agreement")
    if pairs and pairs["estimate"] is not None:
        parts.append(f"human agreement {pairs['estimate']:.0%} on {pairs['n']} pairs")
    return "card: " + ", ".join(parts) if parts else ""
