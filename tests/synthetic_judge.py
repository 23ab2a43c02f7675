"""A synthetic length-biased pairwise judge with a known truth, for the style-controlled ranking
(tests/test_pairwise.py and bench/style_control.py). Everything here is made up by the code, seeded.

Three models answer `prompts` prompts: `strong` (quality 1.0, answers of ordinary length), `verbose`
(quality 0.5, answers about 2.5x longer, with more lists and bold), `base` (quality 0.0, ordinary length).
The judge sees both orders of every pair and compares qualities plus `length_bias` per unit of
log(tokens) difference, plus noise: a verdict of -2..2 from the first-shown answer's side. With the
default bias the raw Bradley–Terry ranking puts `verbose` above `strong`; the truth is strong > verbose
> base.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from sftlab.score import style

TRUTH = ["strong", "verbose", "base"]
QUALITY = {"strong": 1.0, "verbose": 0.5, "base": 0.0}
LENGTH = {"strong": 120.0, "verbose": 300.0, "base": 120.0}  # median tokens per answer
LISTS = {"strong": 1.0, "verbose": 4.0, "base": 1.0}  # mean list items per answer


def battles(seed: int, prompts: int = 120, length_bias: float = 1.6, noise: float = 0.8) -> pd.DataFrame:
    """The score stage's battle frame (sftlab.score.pairwise.battles) for one synthetic replicate."""
    rng = np.random.default_rng(seed)
    answers = {}
    for model in TRUTH:
        for i in range(prompts):
            tokens = float(np.round(LENGTH[model] * np.exp(rng.normal(0, 0.45))))
            counts = {"tokens": tokens, "characters": float(np.round(tokens * rng.uniform(2.8, 3.6))),
                      "headers": float(rng.poisson(0.5)), "lists": float(rng.poisson(LISTS[model])),
                      "bold": float(rng.poisson(LISTS[model] / 2)), "hangul": float(rng.uniform(0.6, 0.9))}
            answers[(model, i)] = counts
    rows = []
    for i in range(prompts):
        for a, b in itertools.combinations(TRUTH, 2):
            for first, second in ((a, b), (b, a)):
                f, s = answers[(first, i)], answers[(second, i)]
                margin = (QUALITY[first] - QUALITY[second]
                          + length_bias * (np.log(f["tokens"]) - np.log(s["tokens"]))
                          + rng.normal(0, noise))
                verdict = (2 if margin > 1.2 else 1 if margin > 0.25 else
                           -2 if margin < -1.2 else -1 if margin < -0.25 else 0)
                record = {"experiment": "synthetic", "id": f"p{i}", "repeat": 0, "first": first, "second": second,
                          "status": "judged", "error": None, "verdict": verdict}
                record.update({f"first_{k}": f[k] for k in style.FEATURES})
                record.update({f"second_{k}": s[k] for k in style.FEATURES})
                rows.append(record)
    return pd.DataFrame(rows)
