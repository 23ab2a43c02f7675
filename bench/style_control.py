"""Style control against a synthetic length-biased judge: how often each ranking names the true order.

    .venv/bin/python bench/style_control.py [--replicates 16] [--prompts 120] [--length-bias 1.6]

Each seeded replicate draws battles from tests/synthetic_judge.py (the truth: strong > verbose > base; the
judge adds a preference for longer answers) and ranks the models with sftlab.score.pairwise.ranking, raw
and style-controlled (the score stage's own code). Prints JSON: the number of replicates out of
`--replicates` in which each ranking is exactly the true order (goal: raw wrong, style-controlled right in
at least 14 of 16), the median style coefficient of token length, and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import synthetic_judge  # noqa: E402

from sftlab.score import pairwise, style  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--length-bias", type=float, default=1.6)
    parser.add_argument("--n-boot", type=int, default=20, help="bootstrap draws per ranking (intervals only)")
    args = parser.parse_args()
    started = time.time()
    raw_right, style_right, coefficients, raw_orders, style_orders = 0, 0, [], [], []
    for seed in range(args.replicates):
        battles = synthetic_judge.battles(seed, prompts=args.prompts, length_bias=args.length_bias)
        raw, _ = pairwise.ranking(battles, "base", n_boot=args.n_boot, seed=seed)
        controlled, about = pairwise.ranking(battles, "base", n_boot=args.n_boot, seed=seed,
                                             style_features=style.FEATURES)
        raw_orders.append(list(raw["model"]))
        style_orders.append(list(controlled["model"]))
        raw_right += list(raw["model"]) == synthetic_judge.TRUTH
        style_right += list(controlled["model"]) == synthetic_judge.TRUTH
        coefficients.append(about["style_coefficients"]["tokens"]["elo_per_sd"])
    print(json.dumps({
        "replicates": args.replicates, "prompts": args.prompts, "length_bias": args.length_bias,
        "truth": synthetic_judge.TRUTH,
        "raw_right": raw_right, "style_controlled_right": style_right,
        "goal_met": raw_right <= args.replicates // 8 and style_right >= round(args.replicates * 14 / 16),
        "median_token_length_coefficient_elo_per_sd": round(float(np.median(coefficients)), 1),
        "raw_orders": sorted({" > ".join(o) for o in raw_orders}),
        "style_controlled_orders": sorted({" > ".join(o) for o in style_orders}),
        "seconds": round(time.time() - started, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
