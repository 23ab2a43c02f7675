"""The score stage: aggregation across checkpoints and experiments with confidence intervals.

    import sftlab.score as score_stage    # in notebooks, a name that does not hide the `score` params
    summary = score_stage.run(score_stage.plan(params))

Split by duty: `samples` (inputs, read through the infer and judge stores), `bootstrap` (the one
bootstrap), `stats` (summary, paired differences, study table), `reliability` (the judge's card),
`pairwise` and `style` (win rates, rankings), `stage` (plan and run, what is written), `views` (figures).
"""

from sftlab.score.samples import SCORE_PREFIX, ScoreError, criteria_of, per_sample, training_history
from sftlab.score.stage import Plan, Summary, plan, run
from sftlab.score.bootstrap import mean_interval
from sftlab.score.stats import paired_differences, parse_baseline, study_table, summarize

__all__ = ["SCORE_PREFIX", "Plan", "ScoreError", "Summary", "mean_interval", "criteria_of", "paired_differences",
           "parse_baseline", "per_sample", "plan", "run", "study_table", "summarize", "training_history"]
