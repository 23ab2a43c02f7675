"""Figures of the score stage (seaborn). Korean labels render with NanumGothic, which the
`koreanize-matplotlib` package ships: no system font and no root needed.

Each function returns the matplotlib figure and saves it when given a path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib import font_manager

FONT = "NanumGothic"


def _register_korean_font() -> None:
    """Add the NanumGothic files shipped in the koreanize_matplotlib package to matplotlib.

    The package is not imported: its import-time code uses a deprecated version check; only its
    font files are needed."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or spec.origin is None:
        raise ImportError("Korean labels need the package koreanize-matplotlib: pip install koreanize-matplotlib")
    for font in sorted(Path(spec.origin).parent.rglob("*.ttf")):
        font_manager.fontManager.addfont(str(font))


_register_korean_font()


def _theme() -> None:
    # unicode_minus off: NanumGothic has no U+2212, the ASCII hyphen renders everywhere.
    sns.set_theme(style="whitegrid", font=FONT, rc={"axes.unicode_minus": False})


def _save(fig, path: Path | None):
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def criteria_by_checkpoint(summary: pd.DataFrame, criteria: list[str], path: Path | None = None):
    """Mean of each criterion (and overall) per checkpoint, with its bootstrap interval."""
    _theme()
    names = [c for c in ["overall", *criteria] if c in summary]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for experiment, group in summary.groupby("experiment", sort=False):
            group = group.sort_values("step")
            err = [group[name] - group[f"{name}_low"], group[f"{name}_high"] - group[name]]
            ax.errorbar(group["checkpoint"], group[name], yerr=err, marker="o", capsize=3, label=experiment)
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def training_curves(history: pd.DataFrame, path: Path | None = None):
    """Loss and grad_norm of every compared experiment, overlaid."""
    _theme()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, column in zip(axes, ("loss", "grad_norm")):
        if not history.empty:
            sns.lineplot(data=history, x="step", y=column, hue="experiment", marker="o", ax=ax)
        ax.set_title(column)
    return _save(fig, path)


def degeneration(summary: pd.DataFrame, path: Path | None = None):
    """Termination rate (higher is better) and repetition (lower is better) per checkpoint."""
    _theme()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    table = summary.sort_values(["experiment", "step"])
    sns.barplot(data=table, x="checkpoint", y="eos_rate", hue="experiment", ax=axes[0])
    axes[0].set_title("EOS-termination rate")
    axes[0].set_ylim(0, 1)
    long = table.melt(id_vars=["experiment", "checkpoint"], value_vars=["rep_2", "rep_4", "seq_rep_4"],
                      var_name="metric", value_name="value")
    long["series"] = long["experiment"] + " · " + long["metric"]
    sns.pointplot(data=long, x="checkpoint", y="value", hue="series", ax=axes[1])
    axes[1].set_title("repetition")
    for ax in axes:
        ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def score_distributions(samples: pd.DataFrame, criteria: list[str], path: Path | None = None):
    """Distribution of each criterion's scores per checkpoint (judged rows only)."""
    _theme()
    judged = samples[samples["judge_status"] == "judged"]
    names = [c for c in criteria if f"score:{c}" in judged]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        sns.boxplot(data=judged, x="checkpoint", y=f"score:{name}", hue="experiment", ax=ax)
        ax.set_title(name)
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)
