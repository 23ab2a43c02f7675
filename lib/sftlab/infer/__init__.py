"""The infer stage: batched generation for every checkpoint, with judge-free degeneration metrics.

    import sftlab.infer as infer_stage   # in notebooks, a name that does not hide the `infer` params
    planned = infer_stage.plan(params)
    summary = infer_stage.run(planned)

Split by duty: `engine` (what generates: the `GenerationEngine` interface and `HFEngine`), `stage`
(plan and run), `store` (the rows on disk, read by the judge and score stages), `views` (what the
notebook shows).
"""

from sftlab.infer.engine import Generation, GenerationEngine, GenerationSettings, HFEngine, prompt_text
from sftlab.infer.stage import BASE, Plan, Summary, Target, plan, run, select_checkpoints, select_examples
from sftlab.infer.store import GenerationRow, GenerationsError

__all__ = ["BASE", "Generation", "GenerationEngine", "GenerationRow", "GenerationSettings", "GenerationsError",
           "HFEngine", "Plan", "Summary", "Target", "plan", "prompt_text", "run", "select_checkpoints",
           "select_examples"]
