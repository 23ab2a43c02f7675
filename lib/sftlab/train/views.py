"""What the train notebook shows: training curves from the trainer's own state file."""

from __future__ import annotations

from pathlib import Path

from sftlab import checkpoints


def training_curves(train_dir: Path):
    """Loss, grad_norm and learning rate per logged step, from the newest trainer state."""
    import pandas as pd

    history = checkpoints.trainer_state(train_dir).get("log_history", [])
    rows = [{k: entry.get(k) for k in ("step", "loss", "grad_norm", "learning_rate")} for entry in history
            if "loss" in entry]
    return pd.DataFrame(rows, columns=["step", "loss", "grad_norm", "learning_rate"])


def plot_curves(curves, path: Path | None = None, title: str = ""):
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, column in zip(axes, ("loss", "grad_norm", "learning_rate")):
        sns.lineplot(data=curves, x="step", y=column, marker="o", ax=ax)
        ax.set_title(column)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def save_curves(train_dir: Path, path: Path, title: str = "") -> bool:
    """Plot the curves of `train_dir` into `path` (the train stage's curves.png); False when nothing is logged."""
    import matplotlib.pyplot as plt

    curves = training_curves(train_dir)
    if not len(curves):
        return False
    plt.close(plot_curves(curves, path, title=title))
    return True


def checkpoint_table(train_dir: Path):
    """The complete checkpoints, in step order."""
    import pandas as pd

    return pd.DataFrame([{"checkpoint": c.name, "step": checkpoints.step_of(c), "path": str(c)}
                         for c in checkpoints.list_checkpoints(train_dir)], columns=["checkpoint", "step", "path"])
