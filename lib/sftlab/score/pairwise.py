"""Pairwise verdicts aggregated: win rates against a baseline, Bradley–Terry rankings (raw and
style-controlled), separability. docs/statistics.md defines each figure with its reference.

Input: the pairwise judge's rows (`judge/pairwise/<A>~<B>.jsonl`, sftlab.judge.pairwise), verdicts from
the first-shown answer's side (+2 A>>B ... -2 B>>A). For every sample and pair of models {X, Y} both
orders are read and combined from X's side: x = v(X shown first) - v(Y shown first), from -4 to +4.

- **Position flip** (sftlab.judge.pairwise.is_position_flip): the two orders disagree in direction. The
  pair counts as a tie, and the flip rate (flips / pairs with both orders judged) is reported per pair.
- **Win / tie / loss** of each model against the baseline: x > 0, x = 0 (or a flip), x < 0; rates with
  seeded bootstrap intervals over prompts. The win rate counts a tie as half a win.
- **Length-controlled win rate**, as AlpacaEval 2 (`metrics/glm_winrate.py`, tatsu-lab/alpaca_eval
  cd543a1): a logistic GLM of the preference (a tie is 0.5) on tanh(standardised length difference in
  characters) and a per-model term, fitted with L1 regularisation chosen by 5-fold cross-validation
  (`LogisticRegressionCV`, liblinear, continuous log loss), predicted at zero length difference. Its
  formula is AlpacaEval's `length_controlled_minimal`: their default also has an instruction-difficulty
  term and a regularisation towards gamed baselines, both estimated on AlpacaEval's own 805 instructions
  and models, which these prompts do not have. With a bootstrap interval over prompts (each replicate
  refitted at the regularisation chosen on all prompts) and AlpacaEval's sanity check: a warning when
  LC and raw differ by more than 10 points or a quarter of the distance to the bound.
- **Bradley–Terry ranking** of every model compared, as Arena-Hard-Auto (`show_result.py`): each judged
  order is one battle, a strong verdict (>>) weighs 3 battles and a normal one 1, a tie is half a win
  each way; a logistic regression without intercept on +1/-1 model indicators gives each model a
  strength, shown on an Elo scale with the baseline at 1000.
  **Style-controlled** (the headline, `score.style_control`): the same regression with style regressors
  (sftlab.score.style: length in tokens and characters, markdown headers/lists/bold, share of Hangul),
  each scaled to unit standard deviation; a model's score is its strength with the style held equal.
  Intervals: seeded bootstrap over prompts (Arena-Hard resamples battles and shows a 90% interval).
- **Separability** (Arena-Hard-Auto's "separability with confidence"): the share of all pairs of models
  whose intervals do not overlap. Each row also says whether it is separable from the next one down.

Models across experiments (a study scored jointly) are named `<experiment>/<checkpoint>`; the experiments'
base models are one model, `base`, when they were generated from the same model with the same settings.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from sftlab import paths
from sftlab.judge import store as judgments_store
from sftlab.judge.pairwise import CRITERION, PAIR_SEPARATOR, is_position_flip
from sftlab.score import bootstrap, style

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
    """One row per judged order: experiment, id, first, second (model names), verdict (-2..2), the
    answers' lengths in tokens and their style counts (`first_<feature>`, `second_<feature>`, from
    `samples`, the per-sample frame the score stage already read); plus status for every row (errors
    kept, never read as ties)."""
    name = model_namer(experiments)
    texts = samples["output"] if "output" in samples else pd.Series([""] * len(samples), index=samples.index)
    styles = {(e, c, i): style.answer_style(text, n) for e, c, i, n, text in zip(
        samples["experiment"], samples["checkpoint"], samples["id"], samples["n_tokens"], texts)}
    empty = dict.fromkeys(style.FEATURES, math.nan)
    records = []
    for experiment in experiments:
        layout = paths.ExperimentLayout.of(experiment)
        for (pair, sample_id, repeat), row in judgments_store.latest_rows(layout.pairwise_judge).items():
            first, _, second = pair.partition(PAIR_SEPARATOR)
            record = {"experiment": experiment, "id": sample_id, "repeat": repeat,
                      "first": name(experiment, first), "second": name(experiment, second),
                      "status": row.status, "error": row.error,
                      "verdict": (row.scores or {}).get(CRITERION) if row.status == "judged" else None}
            for side, checkpoint in (("first", first), ("second", second)):
                found = styles.get((experiment, checkpoint, sample_id), empty)
                record.update({f"{side}_{feature}": found[feature] for feature in style.FEATURES})
            records.append(record)
    columns = ["experiment", "id", "repeat", "first", "second", "status", "error", "verdict",
               *[f"{side}_{f}" for side in ("first", "second") for f in style.FEATURES]]
    return pd.DataFrame(records, columns=columns)


def outcomes(judged: pd.DataFrame) -> pd.DataFrame:
    """Both orders of every (sample, pair) combined from the side of `a` (the pair's first model in
    sorted order): x, flip, outcome (+1 a wins, 0 tie, -1 b wins), length difference a - b in tokens
    and in characters."""
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
        flip = is_position_flip(*group["verdict"].astype(float).tolist())
        x = 0.0 if flip else v1 + v2
        first = group.iloc[0]
        a_side, b_side = ("first", "second") if first["first"] == a else ("second", "first")
        rows.append({"experiment": experiment, "id": sample_id, "repeat": repeat, "a": a, "b": b, "x": x, "flip": flip,
                     "outcome": int(np.sign(x)),
                     "length_diff": float(first[f"{a_side}_tokens"]) - float(first[f"{b_side}_tokens"]),
                     "chars_diff": float(first[f"{a_side}_characters"]) - float(first[f"{b_side}_characters"])})
    return pd.DataFrame(rows, columns=["experiment", "id", "repeat", "a", "b", "x", "flip", "outcome", "length_diff",
                                       "chars_diff"])


# --------------------------------------------------------------------------------------------
# Length-controlled win rate (AlpacaEval 2)
# --------------------------------------------------------------------------------------------

LC_FOLDS = 5  # AlpacaEval's GLM_INFO["length_controlled_v1"]["kwargs"]["n_splits"]
LC_RANDOM_STATE = 123  # AlpacaEval's fit_LogisticRegressionCV default


def _lc_design(length_diff: np.ndarray) -> np.ndarray:
    """[tanh(standardised length difference), 1]: AlpacaEval's np.tanh(std_delta_len) and the model term
    (its `not_gamed_baseline`, 1 for every row of the model); pandas' sample std, as theirs."""
    sd = np.std(length_diff, ddof=1) if len(length_diff) > 1 else 0.0
    standardised = length_diff / sd if sd > 0 else np.zeros_like(length_diff)
    return np.column_stack([np.tanh(standardised), np.ones(len(length_diff))])


def _duplicated(design: np.ndarray, preference: np.ndarray):
    """A preference in [0, 1] as two weighted rows, label 1 with weight p and label 0 with weight 1 - p
    (AlpacaEval's trick for fitting a probability with scikit-learn)."""
    X = np.vstack([design, design])
    y = np.concatenate([np.ones(len(design)), np.zeros(len(design))])
    return X, y, np.concatenate([preference, 1 - preference])


def lc_fit(preference: np.ndarray, length_diff: np.ndarray, C: float | None = None):
    """AlpacaEval's fit: L1-regularised logistic regression without intercept, C chosen by grouped 5-fold
    cross-validation on the continuous log loss (or the given C). Returns (model, C)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    X, y, weight = _duplicated(_lc_design(length_diff), preference)
    # AlpacaEval's penalty="l1" is spelled l1_ratio=1 since scikit-learn 1.8; the same model.
    options = dict(random_state=LC_RANDOM_STATE, dual=False, solver="liblinear", fit_intercept=False)
    if C is not None:
        return LogisticRegression(C=C, l1_ratio=1, **options).fit(X, y, sample_weight=weight), C
    groups = np.concatenate([np.arange(len(preference))] * 2)
    true_prob = np.concatenate([preference, preference])  # each row's target: the probability of label 1
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_continuous_log_loss, response_method="predict_proba", greater_is_better=False)
        scorer = scorer.set_score_request(true_prob=True)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=LC_FOLDS), scoring=scorer, l1_ratios=(1,),
                                     use_legacy_attributes=False, **options)
        model.set_fit_request(sample_weight=True)
        model.fit(X, y, sample_weight=weight, groups=groups, true_prob=true_prob)
    return model, float(np.ravel(model.C_)[0])


def _continuous_log_loss(y_true, y_pred, true_prob):
    """Mean log loss against a probability target (AlpacaEval's logloss_continuous, unweighted)."""
    y_pred = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return -np.mean(true_prob * np.log(y_pred) + (1 - true_prob) * np.log(1 - y_pred))


def lc_win_rate(preference: np.ndarray, length_diff: np.ndarray, C: float | None = None) -> tuple[float, float]:
    """(length-controlled win rate, the C used): the GLM's prediction at zero length difference.
    `preference`: 1 the model won, 0.5 a tie, 0 it lost; `length_diff`: its answer's length minus the
    baseline's, in characters."""
    preference = np.asarray(preference, dtype=float)
    if len(preference) < LC_FOLDS or preference.min() == preference.max():
        return float(preference.mean()) if len(preference) else math.nan, math.nan  # nothing to fit
    model, C = lc_fit(preference, np.asarray(length_diff, dtype=float), C)
    at_zero = np.array([[0.0, 1.0]])
    return float(model.predict_proba(at_zero)[0, 1]), C


def extreme_change(raw: float, controlled: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """AlpacaEval's get_is_extreme_changes (rates in percent): the LC rate is below min(raw - raw / 4,
    raw - 10) or above max(raw + (100 - raw) / 4, raw + 10) — "a sign of failure of the GLM"."""
    too_small = controlled < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = controlled > max(raw + (100 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def single_threaded():
    """Many tiny regressions: BLAS threads only contend (7x slower on a busy 2-core machine)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def versus(combined: pd.DataFrame, baseline: str, n_boot: int = 1000, confidence: float = 0.95,
           seed: int = 0) -> pd.DataFrame:
    """Win / tie / loss of every model against `baseline`, with intervals; raw and LC win rates."""
    with single_threaded():
        return _versus(combined, baseline, n_boot, confidence, seed)


def _versus(combined: pd.DataFrame, baseline: str, n_boot: int, confidence: float, seed: int) -> pd.DataFrame:
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
        chars = pairs["chars_diff"].to_numpy() * sign
        won = np.where(outcome > 0, 1.0, np.where(outcome == 0, 0.5, 0.0))
        groups = pairs["id"].to_numpy()
        row = {"model": model, "baseline": baseline, "n": len(pairs)}
        for name, stat in (("win", lambda o: (o > 0).mean()), ("tie", lambda o: (o == 0).mean()),
                           ("loss", lambda o: (o < 0).mean())):
            _put(row, name, bootstrap.interval(outcome, stat, n_boot, confidence, rng, groups=groups))
        _put(row, "win_rate", bootstrap.interval(won, np.mean, n_boot, confidence, rng, groups=groups))
        known = ~np.isnan(chars)  # an answer without a generation row has no length: left out of LC, counted
        lc, C = lc_win_rate(won[known], chars[known])
        both = np.column_stack([won[known], chars[known]])
        _, low, high = bootstrap.interval(both, lambda d: lc_win_rate(d[:, 0], d[:, 1], C if C == C else None)[0],
                                          min(n_boot, 200), confidence, rng, groups=groups[known])
        row.update({"lc_win_rate": lc, "lc_win_rate_low": low, "lc_win_rate_high": high, "lc_n": int(known.sum())})
        row["lc_warning"] = (f"LC {100 * lc:.1f}% vs raw {100 * row['win_rate']:.1f}%: a change this large may be a "
                             "failure of the length model (AlpacaEval's check)"
                             if not math.isnan(lc) and extreme_change(100 * row["win_rate"], 100 * lc) else "")
        row["length_diff"] = float(np.nanmean(pairs["length_diff"].to_numpy() * sign)) if known.any() else math.nan
        row["chars_diff"] = float(np.nanmean(chars)) if known.any() else math.nan
        row["flip_rate"] = float(pairs["flip"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _put(row: dict, name: str, estimate: tuple[float, float, float]) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = estimate


# --------------------------------------------------------------------------------------------
# Bradley–Terry rankings (Arena-Hard-Auto), raw and style-controlled
# --------------------------------------------------------------------------------------------


def design(judged: pd.DataFrame, models: list[str], features: tuple[str, ...] = ()):
    """The Bradley–Terry regression of the judged orders: X (model indicators +1 first / -1 second, then
    the style regressors), y, weights (3 for a strong verdict, a tie as half a win and half a loss)."""
    column = {m: i for i, m in enumerate(models)}
    indicators = np.zeros((len(judged), len(models)))
    rows = np.arange(len(judged))
    indicators[rows, judged["first"].map(column).to_numpy()] = 1.0
    indicators[rows, judged["second"].map(column).to_numpy()] = -1.0
    regressors = style.differences(judged[[f"first_{f}" for f in style.FEATURES]].to_numpy(dtype=float),
                                   judged[[f"second_{f}" for f in style.FEATURES]].to_numpy(dtype=float), features)
    verdict = judged["verdict"].to_numpy(dtype=float)
    X = np.hstack([indicators, np.nan_to_num(regressors)])
    tie = verdict == 0
    weight = np.where(np.abs(verdict) == 2, STRONG_WEIGHT, 1.0)
    # a tie: one row won with weight 0.5 and one lost with weight 0.5
    X_all = np.vstack([X, X[tie]])
    y_all = np.concatenate([(verdict > 0) | tie, np.zeros(tie.sum(), dtype=bool)]).astype(float)
    w_all = np.concatenate([np.where(tie, 0.5, weight), np.full(tie.sum(), 0.5)])
    return X_all, y_all, w_all


def fit_strengths(X: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Coefficients of the logistic regression without intercept (natural-log odds units); a negligible
    ridge (C = 1e6) only keeps them finite when one model wins every battle."""
    from sklearn.linear_model import LogisticRegression

    from sklearn.exceptions import ConvergenceWarning

    if len(set(y)) < 2:
        return np.zeros(X.shape[1])
    model = LogisticRegression(fit_intercept=False, C=1e6, max_iter=200, tol=1e-7)
    with warnings.catch_warnings():
        # Only a model that wins (or loses) every battle stops the solver short: its strength is unbounded
        # (no finite maximum likelihood), and a large finite value after 200 steps says the same.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y, sample_weight=weight).coef_[0]


def style_scales(judged: pd.DataFrame, features: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """The style features that vary, and the standard deviation of each regressor over all judged orders
    (fixed for the bootstrap, so a replicate measures the same thing)."""
    regressors = style.differences(judged[[f"first_{f}" for f in style.FEATURES]].to_numpy(dtype=float),
                                   judged[[f"second_{f}" for f in style.FEATURES]].to_numpy(dtype=float), features)
    sd = np.nanstd(regressors, axis=0) if len(regressors) else np.zeros(len(features))
    keep = sd > 1e-12
    return tuple(f for f, k in zip(features, keep) if k), sd[keep]


def ranking(judged_rows: pd.DataFrame, baseline: str, n_boot: int = 200, confidence: float = 0.95, seed: int = 0,
            style_features: tuple[str, ...] = (), min_n: int = 30) -> tuple[pd.DataFrame, dict]:
    """Bradley–Terry scores (Elo scale, baseline = 1000) with bootstrap intervals over prompts, rank,
    separability; with `style_features`, the style-controlled ranking. Returns (table, about): `about`
    holds the separability over all pairs (Arena-Hard's) and between neighbours, and the style
    coefficients (Elo points per standard deviation of each regressor)."""
    judged = judged_rows[judged_rows["status"] == "judged"].dropna(subset=["verdict"]).reset_index(drop=True)
    models = sorted(set(judged["first"]) | set(judged["second"]))
    empty = pd.DataFrame(columns=["model", "score", "low", "high", "rank", "separable", "battles"])
    if len(models) < 2:
        return empty, {"separability": math.nan, "separability_neighbours": math.nan}
    anchor = models.index(baseline) if baseline in models else 0
    features, sd = style_scales(judged, style_features) if style_features else ((), np.zeros(0))
    left_out = [f for f in style_features if f not in features]

    def fit(frame: pd.DataFrame) -> np.ndarray:
        X, y, w = design(frame, models, features)
        X[:, len(models):] /= sd
        # The baseline's strength is 0 (its column left out): only differences between models are identified.
        coef = fit_strengths(np.delete(X, anchor, axis=1), y, w)
        strength = np.insert(coef[:len(models) - 1], anchor, 0.0)
        return np.concatenate([1000 + ELO_SCALE * strength, ELO_SCALE * coef[len(models) - 1:]])

    rng = np.random.default_rng(seed)
    with single_threaded():
        estimate = fit(judged)
        draws = np.array([fit(judged.iloc[index]) for index in bootstrap.resamples(len(judged), n_boot, rng,
                                                                                  groups=judged["id"].to_numpy())])
    low, high = bootstrap.percentiles(draws, confidence, axis=0)
    k = len(models)
    counts = pd.concat([judged["first"], judged["second"]]).value_counts()
    table = pd.DataFrame({"model": models, "score": estimate[:k], "low": low[:k], "high": high[:k],
                          "battles": [int(counts.get(m, 0)) for m in models]})
    table = table.sort_values("score", ascending=False).reset_index(drop=True)
    table["rank"] = range(1, len(table) + 1)
    # Separable from the next one down: the intervals do not overlap.
    below = table["high"].shift(-1)
    table["separable"] = [bool(lo > nxt) if not pd.isna(nxt) else None for lo, nxt in zip(table["low"], below)]
    table["small_sample"] = table["battles"] < min_n
    neighbours = table["separable"].dropna()
    pairs = list(itertools.combinations(range(len(table)), 2))
    apart = [table["low"][i] > table["high"][j] or table["low"][j] > table["high"][i] for i, j in pairs]
    about = {"separability": float(np.mean(apart)) if apart else math.nan,
             "separability_neighbours": float(neighbours.mean()) if len(neighbours) else math.nan,
             "pairs": len(pairs)}
    if style_features:
        about["style_coefficients"] = {f: {"elo_per_sd": float(estimate[k + i]), "low": float(low[k + i]),
                                           "high": float(high[k + i])} for i, f in enumerate(features)}
        if left_out:
            about["style_left_out"] = f"{', '.join(left_out)}: the same in every pair, nothing to control for"
    return table, about


def headline(table: pd.DataFrame, about: dict) -> str:
    """One line for the index: the headline ranking's order, separable neighbours joined by ">" and
    overlapping ones by "≈", and its separability over all pairs."""
    if table.empty:
        return ""
    order = ""
    for model, separable in zip(table["model"], table["separable"]):
        order += model + ("" if separable is None else " > " if separable else " ≈ ")
    kind = about.get("headline", "raw").replace("_", "-")
    separability = (about.get(about.get("headline", "raw")) or {}).get("separability")
    share = "" if separability is None or math.isnan(separability) else f", separability {separability:.0%}"
    return f"{kind} ranking: {order}{share}"


def flip_rates(combined: pd.DataFrame) -> pd.DataFrame:
    """Per pair of models: pairs with both orders judged, position flips and their rate."""
    return (combined.groupby(["a", "b"]).agg(pairs=("flip", "size"), flips=("flip", "sum"))
            .assign(flip_rate=lambda f: f["flips"] / f["pairs"]).reset_index())
