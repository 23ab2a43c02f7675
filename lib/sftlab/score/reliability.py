"""The judge's reliability card: how far can this verdict be trusted? Written with every score.

Per compared experiment, from rows already on disk (no extra request), each figure with its sample size
`n`; docs/statistics.md defines each one with its reference.

- **self-consistency** (with `judge.repeats` >= 2): Krippendorff's α across passes per criterion
  (ordinal, the `krippendorff` package, over the rubric's whole scale; 1 = the passes always agree, 0 = no
  better than chance), the mean absolute difference between passes and the share of answers whose score
  differs between passes. A failed pass leaves the unit's other passes in (missing data, as the method
  intends) and is counted; α that cannot be computed is reported as undefined, with the reason.
  Pairwise: the rate of verdicts that change between passes.
- **length preference**: single — Spearman ρ between the overall score and the answer's length in tokens;
  pairwise — P(prefer the longer answer) among decided pairs. With a seeded bootstrap interval.
- **position preference** (pairwise): P(prefer the answer shown first) among decided verdicts (0.5 is
  none), and the position-flip rate (sftlab.judge.pairwise.is_position_flip).
- **unscored share**: rows without a score (errors, not judged) — never counted as zero elsewhere.
- **cost and time per 1,000 judgments**, from the judgments' own cost and the judge stage's last run
  (single and pairwise apart: each mode writes its own summary).
- **agreement with human labels** (sftlab.labels), when there are any: weighted Cohen's κ per criterion
  (quadratic weights over the rubric's scale; scikit-learn) and Spearman ρ, or in pairwise the raw agreement
  with ties; each with a bootstrap interval and the label count.

`score.min_n` (default 30): every figure computed from fewer items is flagged `small_sample`.
`score.min_alpha`: when a criterion's α falls below it, the card says the ranking is not trustworthy.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from sftlab import paths
from sftlab.judge.pairwise import POSITION_FLIP
from sftlab.score import bootstrap
from sftlab.score.samples import SCORE_PREFIX, judgment_passes


def _clean(value) -> float | None:
    value = float(value) if value is not None else math.nan
    return None if math.isnan(value) else round(value, 4)


def _figure(estimate: tuple[float, float, float], n: int, **more) -> dict[str, Any]:
    return {"estimate": _clean(estimate[0]), "low": _clean(estimate[1]), "high": _clean(estimate[2]), "n": n, **more}


def spearman(pairs: np.ndarray) -> float:
    """Spearman ρ of the two columns of `pairs`: Pearson's r of their average ranks, what scipy's
    `spearmanr` computes (a test checks they agree; this is several times faster inside a bootstrap).
    NaN (undefined) under 3 pairs or when a column is constant."""
    from scipy.stats import rankdata

    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return math.nan
    ranks = rankdata(pairs, axis=0)
    return float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])


def ordinal_alpha(matrix: np.ndarray, domain: list[int]) -> tuple[float | None, int, str | None]:
    """Krippendorff's ordinal α of a passes × units matrix (NaN = that pass has no score for that unit).

    Returns (α or None, units α used, why it is undefined or None). Units with fewer than two scores
    cannot be paired and are left out, as the method intends (a unit with one failed pass of three still
    counts, with its two scores). α is undefined (0/0) when fewer than two units can be paired, or when
    every paired score is the same value: there is no disagreement expected by chance to compare with.
    `domain`: every value the scale allows (the rubric's scale), also those nobody used — ordinal
    distances count the unused points in between (Krippendorff 2011, "Computing Krippendorff's
    Alpha-Reliability": ordinal α = 0.815 on its 4 coders × 12 units worked example)."""
    import krippendorff

    pairable = (~np.isnan(matrix)).sum(axis=0) >= 2
    used = matrix[:, pairable]
    if pairable.sum() < 2:
        units = int(pairable.sum())
        return None, units, f"undefined: {units} unit(s) scored in two passes or more (needs 2)"
    values = np.unique(used[~np.isnan(used)])
    if len(values) == 1:
        return None, int(pairable.sum()), (f"undefined: every score is {values[0]:g}, so agreement cannot be told "
                                           "apart from chance (0/0)")
    outside = sorted(set(values) - set(domain))
    if outside:
        domain = sorted(set(domain) | set(values))  # a score outside the rubric's scale: kept, and said below
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=domain)
    note = f"scores {outside} are outside the scale {domain[0]}..{domain[-1]}" if outside else None
    return float(alpha), int(pairable.sum()), note


def self_consistency(passes: pd.DataFrame, scales: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Per criterion across passes: Krippendorff's α (ordinal, over the rubric's scale), the mean absolute
    difference between two passes of the same answer and the share of answers whose passes differ; all
    over the units scored in at least two passes (a failed pass leaves the others in). `n` counts those
    units; `missing` the passes without a score."""
    repeats = sorted(passes["repeat"].unique()) if len(passes) else []
    if len(repeats) < 2:
        return {"passes": len(repeats), "note": "one pass (judge.repeats: 1): no self-consistency to measure"}
    judged = passes[passes["judge_status"] == "judged"]
    units = passes[["checkpoint", "id"]].drop_duplicates()
    result: dict[str, Any] = {"passes": len(repeats), "units": len(units),
                              "missing_passes": int((passes["judge_status"] != "judged").sum()), "criteria": {}}
    for column in [c for c in judged.columns if c.startswith(SCORE_PREFIX)]:
        key = column.removeprefix(SCORE_PREFIX)
        table = judged.pivot_table(index="repeat", columns=["checkpoint", "id"], values=column, aggfunc="first")
        table = table.reindex(index=repeats, columns=pd.MultiIndex.from_frame(units))
        matrix = table.to_numpy(dtype=float)
        scale = (scales or {}).get(key)
        observed = matrix[~np.isnan(matrix)]
        if scale is not None:
            domain, source = list(range(scale[0], scale[1] + 1)), "rubric"
        else:
            low, high = (int(observed.min()), int(observed.max())) if observed.size else (0, 0)
            domain, source = list(range(low, high + 1)), "observed range (rubric scale not found)"
        alpha, n, note = ordinal_alpha(matrix, domain)
        pairable = (~np.isnan(matrix)).sum(axis=0) >= 2
        differences, disagree = [], []
        for unit in matrix[:, pairable].T:
            scores = unit[~np.isnan(unit)]
            differences.append(np.abs(scores[:, None] - scores[None, :])[np.triu_indices(len(scores), 1)].mean())
            disagree.append(float(np.ptp(scores) > 0))
        entry = {"alpha": _clean(alpha) if alpha is not None else None,
                 "mean_abs_difference": _clean(np.mean(differences)) if differences else None,
                 "disagreement_rate": _clean(np.mean(disagree)) if disagree else None, "n": n,
                 "missing": int(np.isnan(matrix).sum()), "domain": f"{domain[0]}..{domain[-1]} ({source})"}
        if alpha is None:
            entry["undefined"] = note
        elif note:
            entry["note"] = note
        result["criteria"][key] = entry
    return result


def length_preference(samples: pd.DataFrame, n_boot: int, confidence: float, rng) -> dict[str, Any]:
    meaning = "correlation of the overall score with the answer's length in tokens"
    if "overall" not in samples:  # no single-answer judgments (e.g. pairwise only)
        return {"spearman_rho": None, "low": None, "high": None, "n": 0, "meaning": meaning}
    judged = samples[samples["judge_status"] == "judged"].dropna(subset=["overall"])
    pairs = judged[["overall", "n_tokens"]].to_numpy(dtype=float)
    rho, low, high = bootstrap.interval(pairs, spearman, n_boot, confidence, rng)
    result = {"spearman_rho": _clean(rho), "low": _clean(low), "high": _clean(high), "n": len(pairs),
              "meaning": meaning}
    if len(pairs) and result["spearman_rho"] is None:
        result["undefined"] = ("undefined: fewer than 3 judged answers" if len(pairs) < 3 else
                               "undefined: every answer has the same score or the same length")
    return result


def pairwise_figures(battles: pd.DataFrame, outcomes: pd.DataFrame, n_boot: int, confidence: float,
                     rng) -> dict[str, Any]:
    judged = battles[battles["status"] == "judged"].dropna(subset=["verdict"])
    decided = judged[judged["verdict"] != 0]
    first = (decided["verdict"] > 0).to_numpy(dtype=float)
    longer = outcomes[(outcomes["outcome"] != 0) & (outcomes["length_diff"] != 0) & outcomes["length_diff"].notna()]
    prefers_longer = (np.sign(longer["outcome"]) == np.sign(longer["length_diff"])).to_numpy(dtype=float)
    result = {
        "p_prefer_first": _figure(bootstrap.interval(first, np.mean, n_boot, confidence, rng), len(first)),
        "p_prefer_longer": _figure(bootstrap.interval(prefers_longer, np.mean, n_boot, confidence, rng),
                                   len(prefers_longer)),
        "flip_rate": {"estimate": _clean(outcomes["flip"].mean()) if len(outcomes) else None, "n": len(outcomes),
                      "meaning": POSITION_FLIP},
        "unjudged_orders": int((battles["status"] != "judged").sum()),
    }
    repeats = outcomes["repeat"].nunique() if len(outcomes) else 0
    if repeats >= 2:
        by_unit = outcomes.groupby(["experiment", "id", "a", "b"])["outcome"].nunique()
        result["verdict_change_rate"] = {"estimate": _clean((by_unit > 1).mean()), "n": len(by_unit)}
    return result


def costs(layout: paths.ExperimentLayout, passes: pd.DataFrame, pairwise: bool = False) -> dict[str, Any]:
    """Cost per 1,000 judgments from the rows; time per 1,000 from the last run of the judge stage in
    that mode (judge/summary.json, or judge/pairwise/summary.json for pairwise judgments)."""
    judged = passes[passes["judge_status"] == "judged"] if len(passes) else passes
    result: dict[str, Any] = {"judgments": len(judged), "mode": "pairwise" if pairwise else "single"}
    if len(judged):
        result["cost_usd_per_1000"] = _clean(1000 * judged["cost_usd"].sum() / len(judged))
    try:
        last = json.loads(layout.judge_summary(result["mode"]).read_text(encoding="utf-8"))
        if last.get("judged"):
            result["seconds_per_1000"] = _clean(1000 * last["seconds"] / last["judged"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        pass
    return result


def flag_small_samples(figures: Any, min_n: int) -> int:
    """Mark every figure (a dict with an `n`) computed from fewer than `min_n` items, in place:
    `small_sample: "n = 4 < score.min_n 30"`. Returns how many were marked."""
    marked = 0
    if isinstance(figures, dict):
        n = figures.get("n")
        if isinstance(n, int) and not isinstance(n, bool) and n < min_n:
            figures["small_sample"] = f"n = {n} < score.min_n {min_n}: too few to read as certain"
            marked += 1
        for value in list(figures.values()):
            marked += flag_small_samples(value, min_n)
    elif isinstance(figures, list):
        marked += sum(flag_small_samples(value, min_n) for value in figures)
    return marked


def card(experiments: list[str], samples: pd.DataFrame, pair_tables: dict, labels: dict | None, n_boot: int,
         confidence: float, seed: int, min_alpha: float | None, min_n: int = 30,
         scales: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """The card of every compared experiment, and whether the verdict can be trusted (`score.min_alpha`).
    Computed from the rows that exist: failed passes are counted (`missing_passes`), never a crash; every
    figure under `score.min_n` items is flagged (`small_sample`)."""
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"experiments": {}}
    for experiment in experiments:
        layout = paths.ExperimentLayout.of(experiment)
        mine = samples[samples["experiment"] == experiment]
        passes = judgment_passes(layout.judge)
        pair_passes = judgment_passes(layout.pairwise_judge)
        entry: dict[str, Any] = {
            "judge": sorted({f"{b}:{m}" for b, m in zip(mine.get("judge_backend", []), mine.get("judge_model", []))
                             if isinstance(b, str)}),
            "rows": len(mine),
            "unscored_share": {"estimate": _clean((mine["judge_status"] != "judged").mean()) if len(mine) else None,
                               "n": len(mine)},
            "length_preference": length_preference(mine, n_boot, confidence, rng),
            "costs": costs(layout, passes),
        }
        if len(pair_passes):
            entry["pairwise_costs"] = costs(layout, pair_passes, pairwise=True)
        if len(passes):
            entry["self_consistency"] = self_consistency(passes, scales)
        if pair_tables:
            battles = pair_tables["battles"][pair_tables["battles"]["experiment"] == experiment]
            outcomes = pair_tables["outcomes"][pair_tables["outcomes"]["experiment"] == experiment]
            if len(battles):
                entry["pairwise"] = pairwise_figures(battles, outcomes, n_boot, confidence, rng)
        if labels and experiment in labels:
            entry["human_agreement"] = labels[experiment]
        result["experiments"][experiment] = entry
    result["min_n"] = min_n
    result["small_samples"] = flag_small_samples(result["experiments"], min_n)
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
    """One line of the card for the index: α, length preference, unscored share; small samples said."""
    parts = []
    consistency = entry.get("self_consistency") or {}
    criteria = consistency.get("criteria") or {}
    if criteria:
        alphas = [c["alpha"] for c in criteria.values() if c["alpha"] is not None]
        undefined = [k for k, c in criteria.items() if c["alpha"] is None]
        if alphas:
            n = min(c["n"] for c in criteria.values() if c["alpha"] is not None)
            small = " (few units)" if any("small_sample" in c for c in criteria.values()) else ""
            parts.append(f"judge α ≥ {min(alphas):.2f} over {consistency['passes']} passes, n={n}{small}")
        if undefined:
            parts.append(f"α undefined for {', '.join(undefined)}")
        if consistency.get("missing_passes"):
            parts.append(f"{consistency['missing_passes']} failed passes")
    lengths = entry["length_preference"]
    if lengths["spearman_rho"] is not None:
        parts.append(f"length ρ {lengths['spearman_rho']:+.2f}" + (" (few)" if "small_sample" in lengths else ""))
    unscored = entry["unscored_share"]["estimate"]
    if unscored:
        parts.append(f"unscored {unscored:.0%}")
    agreement = entry.get("human_agreement") or {}
    kappas = [c["kappa"]["estimate"] for c in agreement.get("criteria", {}).values()
              if c.get("kappa") and c["kappa"]["estimate"] is not None]
    if kappas:
        small = ", below score.min_n" if any("small_sample" in c for c in agreement["criteria"].values()) else ""
        parts.append(f"human κ {min(kappas):.2f}–{max(kappas):.2f} (n={agreement.get('labels')}{small})")
    pairs = (agreement.get("pairwise") or {}).get("raw_agreement")
    if pairs and pairs["estimate"] is not None:
        parts.append(f"human agreement {pairs['estimate']:.0%} on {pairs['n']} pairs")
    return "card: " + ", ".join(parts) if parts else ""
