"""Tables and figures the judge notebook shows: the rubric, who judged, score distributions, errors."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from sftlab import pages, tables
from sftlab.judge.rubric import Rubric
from sftlab.judge.store import SCORE_PREFIX
from sftlab.checkpoints import checkpoint_order

ABOUT_BACKENDS = {
    "reference": ("the offline reference judge — agreement with the reference answer (token F1, ROUGE-L, exact "
                  "match) and degeneration metrics, no LLM: it measures closeness to the reference, not quality"),
    "openai": "an LLM judge over an OpenAI-compatible API",
}


def rubric_frame(rubric: Rubric) -> pd.DataFrame:
    return pd.DataFrame([{"key": c.key, "name": c.name, "scale": f"{c.scale[0]}–{c.scale[1]}",
                          "description": c.description, "reference_metric": c.reference_metric}
                         for c in rubric.criteria]).set_index("key")


def rubric_view(rubric: Rubric, title: str = "") -> pages.Html:
    """The rubric as the notebook shows it: its criteria as a table and its system prompt, in the sftlab style with
    the embedded Korean font (drawn on a machine without Korean fonts, in Jupyter and in the report)."""
    head = f"<h4>{html.escape(title)}</h4>" if title else ""
    table = tables.table(rubric_frame(rubric)).html
    prompt = f"<p><b>System prompt</b></p><pre class=\"sftlab-prompt\">{html.escape(rubric.system_prompt)}</pre>"
    return pages.Html(pages.box(f'<div class="sftlab-rubric">{head}{table}{prompt}</div>'))


def judged_by(judgments: pd.DataFrame) -> str:
    """One line per judge found in the rows: which backend and model produced these numbers."""
    if judgments.empty:
        return "no judgments yet"
    seen: dict[tuple, int] = {}
    for judge in judgments["judge"]:
        judge = judge or {}
        ident = (judge.get("backend"), judge.get("model"), judge.get("rubric"))
        seen[ident] = seen.get(ident, 0) + 1
    return "\n".join(f"Scores by {ABOUT_BACKENDS.get(b, b)}; model {m}, rubric {r}: {n} rows"
                     for (b, m, r), n in seen.items())


def score_columns(judgments: pd.DataFrame) -> list[str]:
    return [c for c in judgments.columns if c.startswith(SCORE_PREFIX)]


def criterion_means(judgments: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: mean score of each criterion, mean overall, and how many rows are unscored."""
    if judgments.empty:
        return pd.DataFrame()
    grouped = judgments.groupby("checkpoint", sort=False)
    table = grouped[score_columns(judgments)].mean().rename(columns=lambda c: c.removeprefix(SCORE_PREFIX))
    table["overall"] = grouped["overall"].apply(lambda s: pd.to_numeric(s, errors="coerce").mean())
    table["rows"] = grouped.size()
    table["errors"] = grouped["status"].apply(lambda s: int((s == "error").sum()))
    table["not_judged"] = grouped["status"].apply(lambda s: int((s == "not_judged").sum()))
    table["cost_usd"] = grouped["cost_usd"].apply(lambda s: pd.to_numeric(s, errors="coerce").sum())
    return table.loc[sorted(table.index, key=checkpoint_order)].round(3)


def plot_distributions(judgments: pd.DataFrame, rubrics: dict[str, Rubric] | None = None) -> Any:
    """One panel per criterion: how often each score was given, one bar colour per checkpoint."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = score_columns(judgments)
    if not columns:
        return None
    scales = {c.key: c.scale for r in (rubrics or {}).values() for c in r.criteria}
    checkpoints = sorted(judgments["checkpoint"].unique(), key=checkpoint_order)
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    width = 0.8 / max(1, len(checkpoints))
    for ax, column in zip(axes.flat, columns):
        key = column.removeprefix(SCORE_PREFIX)
        values = judgments[column].dropna().astype(int)
        low, high = scales.get(key, (int(values.min()) if len(values) else 1, int(values.max()) if len(values) else 5))
        for i, checkpoint in enumerate(checkpoints):
            counts = judgments.loc[judgments["checkpoint"] == checkpoint, column].dropna().astype(int).value_counts()
            xs = list(range(low, high + 1))
            ax.bar([x + (i - (len(checkpoints) - 1) / 2) * width for x in xs], [counts.get(x, 0) for x in xs],
                   width=width, label=checkpoint)
        ax.set_title(key)  # keys are ASCII; criterion names may need fonts the machine lacks
        ax.set_xticks(range(low, high + 1))
        ax.set_xlabel("score")
        ax.set_ylabel("rows")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def error_rows(judgments: pd.DataFrame) -> pd.DataFrame:
    """Every row without scores, with its error and the judge's raw text."""
    if judgments.empty:
        return judgments
    failed = judgments[judgments["status"] != "judged"]
    return failed[["checkpoint", "id", "status", "error", "raw", "first_raw", "requests"]].reset_index(drop=True)


def summary(judgments: pd.DataFrame, run=None):
    """The judge report's one-paragraph summary: who judged how many rows, how many failed, the mean overall
    per model, and what this run cost (`run`: the stage's `Summary`)."""
    from sftlab.tables import summary_block

    sentences = []
    if run is not None:
        sentences.append(f"Judge: {run.backend} ({run.model}).")
    if judgments.empty:
        return summary_block([*sentences, "⚠ No judgments."])
    checkpoints = sorted(judgments["checkpoint"].unique(), key=checkpoint_order)
    status = judgments["status"].value_counts()
    what = "ordered model pairs" if any("~" in str(c) for c in checkpoints) else "models"
    sentences.append(f"{len(judgments)} judgments of {len(checkpoints)} {what}: {int(status.get('judged', 0))} "
                     f"scored, {int(status.get('error', 0))} failed, {int(status.get('not_judged', 0))} not judged.")
    if run is not None and run.failure_line():
        sentences.append(f"⚠ {run.failure_line()} (unscored rows count as missing, never as zero).")
    elif status.get("error", 0) or status.get("not_judged", 0):
        sentences.append("⚠ Unscored rows count as missing, never as zero: see Errors below.")
    if "overall" in judgments:
        means = judgments.assign(overall=pd.to_numeric(judgments["overall"], errors="coerce")) \
            .groupby("checkpoint")["overall"].mean()
        shown = [f"{name} {means[name]:.3f}" for name in checkpoints if name in means and pd.notna(means[name])]
        if shown:
            sentences.append("Mean overall score (0–1): " + ", ".join(shown) + ".")
    if run is not None:
        cost = "unknown (no price for this model)" if run.cost_usd is None else f"${run.cost_usd:.4f}"
        sentences.append(f"This run: {run.requests} requests, cost {cost}, {run.seconds:.1f} s; {run.up_to_date} "
                         f"rows up to date, {run.from_cache} from the cache.")
    return summary_block(sentences)
