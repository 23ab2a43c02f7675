"""What the score stage draws and the notebook shows: figures (seaborn), and the summary's columns in the order
a reader wants them. Korean labels render with NanumGothic, which the `koreanize-matplotlib` package ships:
no system font and no root needed.

Each figure function returns the matplotlib figure and saves it when given a path; the score stage writes
them (`png`) under scores/figures/, and the notebook displays those files.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib import font_manager

FONT = "NanumGothic"
SAVE = {"dpi": 110, "bbox_inches": "tight"}  # tight: keeps the legend placed outside the panels
# The summary's columns as the notebook shows them; the criteria go before cost_usd (summary_view).
SUMMARY_COLUMNS = ["experiment", "checkpoint", "n", "n_judged", "judge_errors", "not_judged", "eos_rate",
                   "eos_rate_low", "eos_rate_high", "rep_2", "rep_4", "seq_rep_4", "distinct_2", "mean_tokens",
                   "length_ratio", "overall", "overall_low", "overall_high"]


def summary_view(summary: pd.DataFrame, criteria: list[str]) -> pd.DataFrame:
    """The per-checkpoint summary with the columns a reader compares first, rounded."""
    columns = [*SUMMARY_COLUMNS, *criteria, "cost_usd"]
    return summary[[c for c in columns if c in summary]].round(3)


def png(fig) -> bytes:
    """The figure as PNG bytes (then closed): what the score stage writes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **SAVE)
    plt.close(fig)
    return buffer.getvalue()


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
        fig.savefig(path, **SAVE)
    return fig


def _grid(count: int, columns: int = 4, size: tuple[float, float] = (3.4, 3.0)):
    rows = max(1, -(-count // columns))
    columns = min(columns, max(count, 1))
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _legend_outside(fig, ax) -> None:
    """One legend for the figure, to the right of the panels, instead of one over each panel's data."""
    handles, labels = ax.get_legend_handles_labels()
    for other in fig.axes:
        if other.get_legend() is not None:
            other.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, frameon=False)


def criteria_by_checkpoint(summary: pd.DataFrame, criteria: list[str], path: Path | None = None):
    """Mean of each criterion (and overall) per checkpoint, with its bootstrap interval."""
    _theme()
    names = [c for c in ["overall", *criteria] if c in summary]
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        for experiment, group in summary.groupby("experiment", sort=False):
            group = group.sort_values("step")
            err = [group[name] - group[f"{name}_low"], group[f"{name}_high"] - group[name]]
            ax.errorbar(group["checkpoint"], group[name], yerr=err, marker="o", capsize=3, label=experiment)
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=45)
    if axes:
        _legend_outside(fig, axes[0])
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
    """Termination rate (higher is better) and repetition, rep-4 and seq-rep-4 (lower is better)."""
    _theme()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    table = summary.sort_values(["experiment", "step"])
    for ax, (column, title) in zip(axes, [("eos_rate", "EOS-termination rate"), ("rep_4", "rep-4"),
                                          ("seq_rep_4", "seq-rep-4")]):
        sns.pointplot(data=table, x="checkpoint", y=column, hue="experiment", ax=ax)
        ax.set_title(title)
        ax.set_ylabel("")
        ax.set_ylim(0, 1 if column == "eos_rate" else max(0.05, float(table[column].max()) * 1.1))
        ax.tick_params(axis="x", rotation=45)
    _legend_outside(fig, axes[0])
    return _save(fig, path)


def score_distributions(samples: pd.DataFrame, criteria: list[str], path: Path | None = None):
    """Distribution of each criterion's scores per checkpoint (judged rows only)."""
    _theme()
    judged = samples[samples["judge_status"] == "judged"]
    names = [c for c in criteria if f"score:{c}" in judged]
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        sns.boxplot(data=judged, x="checkpoint", y=f"score:{name}", hue="experiment", ax=ax)
        ax.set_title(name)
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=45)
    if axes:
        _legend_outside(fig, axes[0])
    return _save(fig, path)


def win_rate_matrix(outcomes: pd.DataFrame, path: Path | None = None):
    """Pairwise: how often the row's model beats the column's (ties count half), over the pairs judged."""
    _theme()
    rates: dict[tuple[str, str], float] = {}
    for (a, b), group in outcomes.groupby(["a", "b"]):
        won = (group["outcome"] > 0).mean() + 0.5 * (group["outcome"] == 0).mean()
        rates[(a, b)], rates[(b, a)] = won, 1 - won
    models = sorted({m for pair in rates for m in pair})
    matrix = pd.DataFrame([[rates.get((r, c)) for c in models] for r in models], index=models, columns=models,
                          dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 3, 0.9 * len(models) + 2))
    sns.heatmap(matrix, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="RdBu_r", cbar_kws={"label": "win rate"}, ax=ax)
    ax.set_xlabel("against")
    ax.set_ylabel("model")
    ax.set_title("pairwise win rate (row beats column; ties count half)")
    return _save(fig, path)


def ranking(table: pd.DataFrame, path: Path | None = None):
    """Pairwise: the Bradley–Terry ranking with bootstrap intervals; overlapping neighbours are marked."""
    _theme()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(table) + 1.5))
    ordered = table.iloc[::-1]
    err = [ordered["score"] - ordered["low"], ordered["high"] - ordered["score"]]
    ax.errorbar(ordered["score"], ordered["model"], xerr=err, fmt="o", capsize=4)
    for y, (_, row) in enumerate(ordered.iterrows()):
        if row["separable"] is False:
            ax.annotate("not separable from the next", (row["high"], y), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize=8, color="#a40000")
    ax.set_xlabel("Bradley–Terry score (Elo scale, baseline = 1000)")
    ax.set_title("ranking, 95% bootstrap intervals")
    return _save(fig, path)
