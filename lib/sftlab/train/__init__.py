"""The train stage: full fine-tuning with TRL's SFTTrainer, launched as a torchrun subprocess.

    import sftlab.train as train_stage    # in notebooks, a name that does not hide the `train` params
    planned = train_stage.plan(params)    # reads only: rows, base model, flat config
    train_stage.preflight(planned)        # lock, rows and flat config written, label audit
    summary = train_stage.run(planned)    # the preflight if not done, torchrun, curves.png

    python -m torch.distributed.run --nproc_per_node=2 -m sftlab.train --config train_config.yaml

Split by duty: `trainer` (the training script the torchrun processes run), `launch` (flat config,
torchrun command, live output), `audit` (the label audit), `stage` (plan and run), `views` (curves).
"""

from sftlab.train.audit import LabelAudit, UnsupervisedEOSError
from sftlab.train.lock import TrainLocked
from sftlab.train.stage import Plan, Summary, TrainingFailed, plan, preflight, release, run

__all__ = ["LabelAudit", "Plan", "Summary", "TrainLocked", "TrainingFailed", "UnsupervisedEOSError", "plan",
           "preflight", "release", "run"]
