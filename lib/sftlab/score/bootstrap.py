"""The one bootstrap of the score stage: a statistic and its percentile interval, resampling rows or
whole groups (prompts), seeded by the caller's generator. Every interval in the score tables, the
reliability card, the pairwise tables and the human-agreement figures comes from here.

    estimate, low, high = bootstrap.interval(values, np.mean, n_boot=2000, confidence=0.95, rng=rng)
    estimate, low, high = bootstrap.interval(values, stat, ..., groups=prompt_ids)  # resample prompts

Rules: the estimate is the statistic on the data as they are (not the mean of the draws); the interval
is the (1 - confidence) / 2 and 1 - (1 - confidence) / 2 percentiles of the draws, ignoring draws where
the statistic is undefined (NaN); no data, or no defined draw, gives NaN, never a made-up number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np


def percentiles(draws, confidence: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided percentile interval of bootstrap draws (NaN draws ignored)."""
    tail = (1 - confidence) / 2 * 100
    draws = np.asarray(draws, dtype=float)
    if draws.size == 0:
        return np.nan, np.nan
    with warnings.catch_warnings():  # every draw undefined: no interval, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=axis)
    return low, high


def resamples(n: int, n_boot: int, rng: np.random.Generator, groups: Sequence | None = None):
    """Yield `n_boot` index arrays into `n` rows: rows drawn with replacement, or, with `groups` (one
    label per row), whole groups drawn with replacement (all rows of a drawn group, as often as drawn)."""
    if groups is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, n)
        return
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(labels), len(labels))])


def interval(values, stat: Callable, n_boot: int, confidence: float, rng: np.random.Generator,
             groups: Sequence | None = None) -> tuple[float, float, float]:
    """(stat(values), low, high); `values` is an array (rows on the first axis) or a DataFrame."""
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    take = (lambda index: values.iloc[index]) if hasattr(values, "iloc") else (lambda index: values[index])
    estimate = float(stat(values))
    draws = [stat(take(index)) for index in resamples(len(values), n_boot, rng, groups)]
    low, high = percentiles(draws, confidence)
    return (estimate, float(low), float(high))


def mean_interval(values, n_boot: int, confidence: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean and interval, vectorised; NaNs are dropped first (an unscored row is not a zero)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (np.nan, np.nan, np.nan)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = percentiles(means, confidence)
    return (float(values.mean()), float(low), float(high))
