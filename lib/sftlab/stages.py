"""The stages of an experiment, in the order they run, and what the runner must know of each: declared here
once, so that the runner has no branch for any one stage and importing this costs nothing (a stage's own
package imports pandas, torch or an HTTP client). Each stage is a package `sftlab.<name>` with a notebook
`notebooks/<name>.ipynb`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    # False: compares experiments, so a study folder runs it once, over all of its experiments (after every
    # experiment's other stages), instead of once per experiment.
    per_experiment: bool = True


DECLARED = (Stage("train"), Stage("infer"), Stage("judge"), Stage("score", per_experiment=False))
STAGES = tuple(stage.name for stage in DECLARED)
BY_NAME = {stage.name: stage for stage in DECLARED}
