"""What the score notebook shows: figures (seaborn). Korean labels render with NanumGothic, which the
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

from sftlab.judge.store import SCORE_PREFIX

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
        fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps the legend placed outside the panels
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
    names = [c for c in criteria if SCORE_PREFIX + c in judged]
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        sns.boxplot(data=judged, x="checkpoint", y=SCORE_PREFIX + name, hue="experiment", ax=ax)
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
    """Pairwise: the headline Bradley–Terry ranking with bootstrap intervals (style-controlled by default),
    the raw ranking beside it in grey when present; overlapping neighbours are marked."""
    _theme()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(table) + 1.5))
    ordered = table.iloc[::-1].reset_index(drop=True)
    controlled = "raw_score" in ordered
    if controlled:
        err = _error_bars(ordered, "raw_score", "raw_low", "raw_high")
        ax.errorbar(ordered["raw_score"], ordered.index + 0.2, xerr=err, fmt="s", capsize=3, color="#999999",
                    label="raw")
    err = _error_bars(ordered, "score", "low", "high")
    ax.errorbar(ordered["score"], ordered.index, xerr=err, fmt="o", capsize=4,
                label="style-controlled (headline)" if controlled else "Bradley–Terry")
    ax.set_yticks(ordered.index, ordered["model"])
    for y, (_, row) in enumerate(ordered.iterrows()):
        if row["separable"] is False:
            ax.annotate("not separable from the next", (row["high"], y), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize=8, color="#a40000")
    ax.set_xlabel("Bradley–Terry score (Elo scale, baseline = 1000)")
    ax.set_title("ranking, 95% bootstrap intervals over prompts")
    if controlled:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _error_bars(table: pd.DataFrame, estimate: str, low: str, high: str) -> list:
    """Bar lengths below and above the estimate; a fit on all prompts may fall just outside the percentile
    interval of the bootstrap fits, and matplotlib refuses a negative length, so such a side is 0."""
    return [(table[estimate] - table[low]).clip(lower=0), (table[high] - table[estimate]).clip(lower=0)]


def ranking_caption(about: dict) -> str:
    """One paragraph under the ranking: which ranking is the headline, its separability (Arena-Hard's, over
    all pairs of models) and the style coefficients."""
    headline = about.get(about.get("headline", "raw"), {})
    text = (f"Headline: **{about.get('headline', 'raw').replace('_', '-')}** ranking ({about.get('meaning', '')}). "
            f"Separability (pairs of models whose intervals do not overlap, Arena-Hard-Auto's): "
            f"{_percent(headline.get('separability'))} of {headline.get('pairs', 0)}; neighbours: "
            f"{_percent(headline.get('separability_neighbours'))}.")
    coefficients = headline.get("style_coefficients")
    if coefficients:
        text += " Style effects (Elo per standard deviation): " + ", ".join(
            f"{name} {c['elo_per_sd']:+.0f} [{c['low']:+.0f}, {c['high']:+.0f}]" for name, c in coefficients.items())
        if headline.get("style_left_out"):
            text += f"; left out: {headline['style_left_out']}"
    return text + "."


def _percent(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.0%}"
