"""Pairwise verdicts aggregated: win rates against a baseline, a Bradley–Terry ranking, separability.

Input: the pairwise judge's rows (`judge/pairwise/<A>~<B>.jsonl`, sftlab.judge.pairwise), verdicts from
the first-shown answer's side (+2 A>>B ... -2 B>>A). For every sample and pair of models {X, Y} both
orders are read and combined from X's side: x = v(X shown first) - v(Y shown first), from -4 to +4.

- **Position flip**: the two orders disagree in direction (one prefers X, the other Y). The pair counts as
  a tie, and the flip rate (flips / pairs with both orders judged) is reported per pair of models.
- **Win / tie / loss** of each model against the baseline: x > 0, x = 0 (or a flip), x < 0; rates with
  seeded bootstrap intervals over prompts. The win rate counts a tie as half a win.
- **Length-controlled win rate** (as in AlpacaEval 2): a logistic regression of the outcome (ties as half
  a win and half a loss) on the normalized length difference, tanh((tokens - baseline tokens) / sd); the
  LC win rate is its prediction at a length difference of zero. Shown beside the raw rate, with the mean
  length difference in tokens.
- **Bradley–Terry ranking** of every model compared: each judged order is one battle, a strong verdict
  (>>) weighs 3 battles and a normal one 1 (Arena-Hard's rule), a tie is half a win each way; a logistic
  regression without intercept on +1/-1 model indicators (scikit-learn) gives each model a strength, shown
  on an Elo-like scale with the baseline at 1000; seeded bootstrap over prompts for the intervals.
- **Separability**: two neighbours in the ranking are separable when their intervals do not overlap; the
  share of separable neighbours is reported, and a model whose interval overlaps its neighbour's is marked
  "not separable" instead of ranked above it.

Models across experiments (a study scored jointly) are named `<experiment>/<checkpoint>`; the experiments'
base models are one model, `base`, when they were generated from the same model with the same settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from sftlab import paths
from sftlab.judge import store as judgments_store
from sftlab.judge.pairwise import CRITERION, PAIR_SEPARATOR

STRONG_WEIGHT = 3
ELO_SCALE = 400 / math.log(10)


def model_namer(experiments: list[str]) -> Callable[[str, str], str]:
    """name(experiment, checkpoint): a model's name in the tables — the checkpoint alone for one experiment,
    `<experiment>/<checkpoint>` across several, and `base` for the experiments' base models when they were
    all generated from the same model with the same settings."""
    fingerprints = {}
    for experiment in experiments:
        settings = paths.ExperimentLayout.of(experiment).generations / "base.settings.json"
        try:
            record = json.loads(settings.read_text(encoding="utf-8"))
            fingerprints[experiment] = json.dumps(record.get("fingerprint", record), sort_keys=True)
        except (FileNotFoundError, json.JSONDecodeError):
            fingerprints[experiment] = experiment
    shared_base = len(set(fingerprints.values())) == 1
    multi = len(experiments) > 1

    def name(experiment: str, checkpoint: str) -> str:
        if checkpoint == "base" and shared_base:
            return "base"
        return f"{experiment}/{checkpoint}" if multi else checkpoint

    return name


def battles(experiments: list[str], samples: pd.DataFrame) -> pd.DataFrame:
    """One row per judged order: experiment, id, first, second (model names), verdict (-2..2), and the
    answers' lengths in tokens (from `samples`, the per-sample frame the score stage already read); plus
    status for every row (errors kept, never read as ties)."""
    name = model_namer(experiments)
    lengths = {(e, c, i): n for e, c, i, n in samples[["experiment", "checkpoint", "id", "n_tokens"]].itertuples(
        index=False)}
    records = []
    for experiment in experiments:
        layout = paths.ExperimentLayout.of(experiment)
        for (pair, sample_id, repeat), row in judgments_store.latest_rows(layout.pairwise_judge).items():
            first, _, second = pair.partition(PAIR_SEPARATOR)
            records.append({"experiment": experiment, "id": sample_id, "repeat": repeat,
                            "first": name(experiment, first), "second": name(experiment, second),
                            "status": row.status, "error": row.error,
                            "verdict": (row.scores or {}).get(CRITERION) if row.status == "judged" else None,
                            "first_tokens": lengths.get((experiment, first, sample_id)),
                            "second_tokens": lengths.get((experiment, second, sample_id))})
    return pd.DataFrame(records, columns=["experiment", "id", "repeat", "first", "second", "status", "error",
                                          "verdict", "first_tokens", "second_tokens"])


def outcomes(judged: pd.DataFrame) -> pd.DataFrame:
    """Both orders of every (sample, pair) combined from the side of `a` (the pair's first model in
    sorted order): x, flip, outcome (+1 a wins, 0 tie, -1 b wins), length difference a - b."""
    ok = judged[judged["status"] == "judged"].copy()
    ok["a"] = ok[["first", "second"]].min(axis=1)
    ok["b"] = ok[["first", "second"]].max(axis=1)
    ok["from_a"] = np.where(ok["first"] == ok["a"], ok["verdict"], -ok["verdict"]).astype(float)
    rows = []
    for (experiment, sample_id, repeat, a, b), group in ok.groupby(["experiment", "id", "repeat", "a", "b"],
                                                                   sort=False):
        if len(group) != 2:
            continue  # one order missing (unjudged or failed): not counted
        v1, v2 = group["from_a"].tolist()
        flip = v1 * v2 < 0
        x = 0.0 if flip else v1 + v2
        first = group.iloc[0]
        a_tokens = first["first_tokens"] if first["first"] == a else first["second_tokens"]
        b_tokens = first["second_tokens"] if first["first"] == a else first["first_tokens"]
        rows.append({"experiment": experiment, "id": sample_id, "repeat": repeat, "a": a, "b": b, "x": x, "flip": flip,
                     "outcome": int(np.sign(x)), "length_diff": float(a_tokens or 0) - float(b_tokens or 0)})
    return pd.DataFrame(rows, columns=["experiment", "id", "repeat", "a", "b", "x", "flip", "outcome", "length_diff"])


def _interval(values: np.ndarray, groups: np.ndarray, stat, n_boot: int, confidence: float, rng) -> tuple:
    """stat(values) and its percentile bootstrap interval, resampling groups (prompts)."""
    unique = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in unique}
    estimate = stat(values)
    draws = []
    for _ in range(n_boot):
        picked = np.concatenate([index[g] for g in rng.choice(unique, size=len(unique))])
        draws.append(stat(values[picked]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(estimate), float(low), float(high)


def lc_win_rate(won: np.ndarray, length_diff: np.ndarray) -> float:
    """The win probability at zero length difference, from a logistic regression on tanh(diff / sd)
    (ties enter as half a win and half a loss)."""
    from sklearn.linear_model import LogisticRegression

    sd = length_diff.std() or 1.0
    feature = np.tanh(length_diff / sd)[:, None]
    y = np.concatenate([np.ones(len(won)), np.zeros(len(won))])
    weight = np.concatenate([won, 1 - won])
    if weight[y == 1].sum() == 0 or weight[y == 0].sum() == 0:
        return float(won.mean())  # all wins or all losses: nothing to control for
    model = LogisticRegression(C=1e6, max_iter=1000).fit(np.vstack([feature, feature]), y, sample_weight=weight)
    return float(1 / (1 + math.exp(-model.intercept_[0])))


def versus(combined: pd.DataFrame, baseline: str, n_boot: int = 1000, confidence: float = 0.95,
           seed: int = 0) -> pd.DataFrame:
    """Win / tie / loss of every model against `baseline`, with intervals; raw and LC win rates."""
    rng = np.random.default_rng(seed)
    rows = []
    models = sorted(set(combined["a"]) | set(combined["b"]) - {baseline})
    for model in models:
        pairs = combined[((combined["a"] == model) & (combined["b"] == baseline))
                         | ((combined["b"] == model) & (combined["a"] == baseline))]
        if pairs.empty:
            continue
        sign = np.where(pairs["a"] == model, 1, -1)
        outcome = pairs["outcome"].to_numpy() * sign
        length = pairs["length_diff"].to_numpy() * sign
        won = np.where(outcome > 0, 1.0, np.where(outcome == 0, 0.5, 0.0))
        groups = pairs["id"].to_numpy()
        row = {"model": model, "baseline": baseline, "n": len(pairs)}
        for name, stat in (("win", lambda o: (o > 0).mean()), ("tie", lambda o: (o == 0).mean()),
                           ("loss", lambda o: (o < 0).mean())):
            row[name], row[f"{name}_low"], row[f"{name}_high"] = _interval(outcome, groups, stat, n_boot,
                                                                            confidence, rng)
        row["win_rate"], row["win_rate_low"], row["win_rate_high"] = _interval(won, groups, np.mean, n_boot,
                                                                               confidence, rng)
        row["lc_win_rate"] = lc_win_rate(won, length)
        row["length_diff"] = float(length.mean())
        row["flip_rate"] = float(pairs["flip"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _fit_strengths(judged: pd.DataFrame, models: list[str]) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    column = {m: i for i, m in enumerate(models)}
    X, y, w = [], [], []
    for first, second, verdict in judged[["first", "second", "verdict"]].itertuples(index=False):
        row = np.zeros(len(models))
        row[column[first]], row[column[second]] = 1.0, -1.0
        weight = STRONG_WEIGHT if abs(verdict) == 2 else 1.0
        if verdict == 0:  # a tie: half a win each way
            X += [row, row]
            y += [1, 0]
            w += [0.5, 0.5]
        else:
            X.append(row)
            y.append(1 if verdict > 0 else 0)
            w.append(weight)
    if len(set(y)) < 2:
        return np.zeros(len(models))
    model = LogisticRegression(fit_intercept=False, C=1e6, max_iter=2000)
    model.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    return model.coef_[0]


def ranking(judged_rows: pd.DataFrame, baseline: str, n_boot: int = 200, confidence: float = 0.95,
            seed: int = 0) -> tuple[pd.DataFrame, float]:
    """Bradley–Terry scores (Elo-like, baseline = 1000) with bootstrap intervals, rank, separability;
    and the share of separable neighbours."""
    judged = judged_rows[judged_rows["status"] == "judged"].dropna(subset=["verdict"])
    models = sorted(set(judged["first"]) | set(judged["second"]))
    if len(models) < 2:
        return pd.DataFrame(columns=["model", "score", "low", "high", "rank", "separable"]), float("nan")
    anchor = models.index(baseline) if baseline in models else 0

    def scores(frame: pd.DataFrame) -> np.ndarray:
        strength = _fit_strengths(frame, models)
        return 1000 + ELO_SCALE * (strength - strength[anchor])

    estimate = scores(judged)
    rng = np.random.default_rng(seed)
    prompts = judged["id"].unique()
    by_prompt = {p: judged[judged["id"] == p] for p in prompts}
    draws = np.array([scores(pd.concat([by_prompt[p] for p in rng.choice(prompts, size=len(prompts))]))
                      for _ in range(n_boot)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)
    table = pd.DataFrame({"model": models, "score": estimate, "low": low, "high": high})
    table = table.sort_values("score", ascending=False).reset_index(drop=True)
    table["rank"] = range(1, len(table) + 1)
    # Separable from the next one down: the intervals do not overlap.
    below = table["high"].shift(-1)
    table["separable"] = [bool(lo > nxt) if not pd.isna(nxt) else None for lo, nxt in zip(table["low"], below)]
    neighbours = table["separable"].dropna()
    share = float(neighbours.mean()) if len(neighbours) else float("nan")
    return table, share


def flip_rates(combined: pd.DataFrame) -> pd.DataFrame:
    """Per pair of models: pairs with both orders judged, position flips and their rate."""
    return (combined.groupby(["a", "b"]).agg(pairs=("flip", "size"), flips=("flip", "sum"))
            .assign(flip_rate=lambda f: f["flips"] / f["pairs"]).reset_index())
