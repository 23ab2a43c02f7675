"""What the score notebook shows: the verdict it opens with, its tables, and figures (seaborn). Korean labels
render with NanumGothic, which the `koreanize-matplotlib` package ships: no system font and no root needed.

    display(views.verdict(summary))       # headline, judge failures, the card's line, ranking figure, differences
    display(views.summary_table(by_checkpoint, criteria))   # one row per model, grouped columns, intervals
    display(views.differences_detail(differences))          # every metric against the baseline

The figure functions return the matplotlib figure and save it when given a path. The verdict's figure is
embedded in its HTML (a data URI), so the block reads the same in Jupyter, in the report and anywhere it is
copied; the headline's wording follows the interval: a model is "better than the baseline" only when the
interval of its paired difference excludes 0, and no winner is named when the card distrusts the judge.

The score stage writes the figures (`png`) under scores/figures/; the notebook displays those files.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib import font_manager

from sftlab import pages
from sftlab.judge.store import SCORE_PREFIX
from sftlab.score import reliability
from sftlab.tables import Block, interval, table

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


def overall_by_model(summary: pd.DataFrame, baseline: str | None = None, path: Path | None = None):
    """Single judgments: every model's overall score with its bootstrap interval, best first; the baseline's
    mean as a dashed line."""
    _theme()
    table = summary.dropna(subset=["overall"]).assign(model=lambda f: model_names(f))
    table = table.sort_values("overall", ascending=True)
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(table) + 1.3))
    err = [table["overall"] - table["overall_low"], table["overall_high"] - table["overall"]]
    ax.errorbar(table["overall"], table["model"], xerr=err, fmt="o", capsize=4)
    if baseline is not None and baseline in set(table["model"]):
        ax.axvline(float(table.loc[table["model"] == baseline, "overall"].iloc[0]), color="#888", ls="--", lw=1,
                   label=f"baseline ({baseline})")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_xlabel("overall score (0–1), 95% bootstrap interval")
    ax.set_title("overall score by model")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# The verdict: what the score report opens with
# --------------------------------------------------------------------------------------------

VERDICT_STYLE = """<style>
.sftlab-verdict { font-size: 15px; line-height: 1.45; max-width: 1250px; }
.sftlab-verdict .sftlab-headline { font-size: 1.2em; margin: .2em 0 .4em; }
.sftlab-verdict .sftlab-card { margin: .2em 0; }
.sftlab-verdict .sftlab-failure { color: #a40000; font-weight: bold; margin: .2em 0; }
.sftlab-verdict .sftlab-verdict-body { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
.sftlab-verdict img.sftlab-ranking { max-width: 620px; height: auto; }
.sftlab-verdict .sftlab-differences { flex: 1 1 420px; min-width: 0; }
.sftlab-verdict h3 { font-size: 1em; margin: .2em 0; }
</style>"""


def model_names(frame: pd.DataFrame) -> pd.Series:
    """The checkpoint alone for one experiment, `<experiment>/<checkpoint>` across several."""
    if frame["experiment"].nunique() > 1:
        return frame["experiment"] + "/" + frame["checkpoint"]
    return frame["checkpoint"]


def _image(fig) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)  # shown once, in the block: not again by the notebook's inline backend
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="sftlab-ranking" alt="ranking with 95% intervals" src="data:image/png;base64,{data}">'


def _baseline_name(differences: pd.DataFrame, summary: pd.DataFrame) -> str | None:
    if differences.empty:
        return None
    experiment, checkpoint = str(differences["baseline"].iloc[0]).rsplit("/", 1)
    return checkpoint if summary["experiment"].nunique() <= 1 else f"{experiment}/{checkpoint}"


def headline_sentence(tables: dict[str, pd.DataFrame], card: dict) -> str:
    """Which model is better, by how much, and whether the data say so — one sentence (Markdown-free text)."""
    summary, differences = tables["summary"], tables["differences"]
    distrust = "" if card.get("trustworthy", True) else f"No winner named: {card.get('warning', 'the judge is not reliable')}. "
    if "ranking" in tables and len(tables["ranking"]):
        ranked = tables["ranking"]
        top = ranked.iloc[0]
        score = interval(top["score"], top["low"], top["high"], digits=0)
        if distrust:
            return distrust + f"By the numbers alone, {top['model']} ranks first (Bradley–Terry {score})."
        if len(ranked) > 1 and top["separable"] is not True:
            return (f"No winner: {top['model']} ({score}) and {ranked.iloc[1]['model']} are not separable — their "
                    "95% intervals overlap.")
        sentence = f"{top['model']} ranks first (Bradley–Terry {score}), separable from the next."
        versus = tables.get("pairwise")
        if versus is not None and len(versus) and top["model"] in set(versus["model"]):
            row = versus[versus["model"] == top["model"]].iloc[0]
            sentence += (f" Against the baseline {row['baseline']} it wins "
                         f"{interval(row['win_rate'], row['win_rate_low'], row['win_rate_high'], percent=True)} "
                         f"of {int(row['n'])} prompts (ties count half).")
        return sentence
    overall = differences[(differences["metric"] == "overall")].dropna(subset=["difference"]) \
        if not differences.empty else differences
    baseline = _baseline_name(differences, summary)
    if overall.empty:
        return distrust + ("No judge scores to compare: " + (f"every model is compared with {baseline} on "
                                                             "termination and repetition only (tables below)."
                                                             if baseline else "only one model was scored."))
    multi = summary["experiment"].nunique() > 1
    best = overall.sort_values("difference", ascending=False).iloc[0]
    name = f"{best['experiment']}/{best['checkpoint']}" if multi else best["checkpoint"]
    row = summary[(summary["experiment"] == best["experiment"]) & (summary["checkpoint"] == best["checkpoint"])].iloc[0]
    gain = interval(best["difference"], best["low"], best["high"], signed=True)
    if best["low"] > 0:
        verdict = f"{name} is better than the baseline {baseline}"
    elif best["high"] < 0:
        verdict = f"Every model is worse than the baseline {baseline}; the closest is {name}"
    else:
        verdict = f"No model is measurably better than the baseline {baseline}; the best is {name}"
    return (distrust + f"{verdict}: overall {interval(row['overall'], row['overall_low'], row['overall_high'])}, "
            f"{gain} against the baseline over {int(best['n_pairs'])} paired samples "
            + ("(the interval excludes 0)." if best["low"] > 0 or best["high"] < 0 else "(the interval includes 0)."))


def card_lines(card: dict) -> list[str]:
    """The reliability card's one-line verdict per experiment (and the warning when it distrusts the judge)."""
    lines = [] if card.get("trustworthy", True) else [f"⚠ not trustworthy: {card.get('warning', '')}"]
    experiments = card.get("experiments", {})
    for experiment, entry in experiments.items():
        line = reliability.headline(entry).removeprefix("card: ") or "no reliability figure measured yet"
        judge = ", ".join(entry.get("judge") or []) or "nobody yet"
        prefix = f"{experiment}: " if len(experiments) > 1 else ""
        lines.append(f"{prefix}judged by {judge}; {line}")
    return lines


def differences_table(tables: dict[str, pd.DataFrame]):
    """Each model against the baseline, compact: pairwise win rates, or paired differences with intervals."""
    versus = tables.get("pairwise")
    if versus is not None and len(versus):
        frame = pd.DataFrame({
            "model": versus["model"], "prompts": versus["n"].astype(int),
            "win rate": [interval(r.win_rate, r.win_rate_low, r.win_rate_high, percent=True) for r in versus.itertuples()],
            "length-controlled": [f"{v:.1%}" if pd.notna(v) else "—" for v in versus["lc_win_rate"]],
            "flip rate": [f"{v:.1%}" for v in versus["flip_rate"]]})
        return table(frame, groups={f"against {versus['baseline'].iloc[0]}": list(frame.columns[1:])},
                     css_class="sftlab-differences-table")
    differences = tables["differences"]
    if differences.empty:
        return None
    multi = differences["experiment"].nunique() > 1 or tables["summary"]["experiment"].nunique() > 1
    labels = {"overall": "overall", "eos_terminated": "terminates (EOS)", "rep_4": "rep-4", "n_tokens": "tokens"}
    rows = []
    for (experiment, step, checkpoint), group in differences.groupby(["experiment", "step", "checkpoint"], sort=True):
        row = {"model": f"{experiment}/{checkpoint}" if multi else checkpoint, "pairs": int(group["n_pairs"].max())}
        for metric, label in labels.items():
            found = group[group["metric"] == metric]
            if len(found) and pd.notna(found["difference"].iloc[0]):
                d = found.iloc[0]
                row[label] = interval(d["difference"], d["low"], d["high"], signed=True, percent=metric == "eos_terminated",
                                      digits=1 if metric == "n_tokens" else 3)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return table(frame, groups={f"difference against {differences['baseline'].iloc[0]} (95% interval)":
                                [c for c in frame.columns if c not in ("model", "pairs")]},
                 css_class="sftlab-differences-table")


def verdict(summary) -> Block:
    """What the score report opens with: the headline sentence, any judge failures, the reliability card's
    line, the ranking figure with its intervals and the differences against the baseline. `summary` is the
    score stage's `Summary`."""
    import html as html_module

    tables, card = summary.tables, summary.reliability
    sentence = headline_sentence(tables, card)
    failures = [f"⚠ {experiment} — {failure}: unscored rows are left out of the scores, never taken as zero"
                for experiment, failure in summary.judge_failures.items()]
    cards = card_lines(card)
    baseline = _baseline_name(tables["differences"], tables["summary"])
    if "ranking" in tables and len(tables["ranking"]):
        figure = _image(ranking(tables["ranking"]))
    elif "overall" in tables["summary"] and tables["summary"]["overall"].notna().any():
        figure = _image(overall_by_model(tables["summary"], baseline))
    else:
        figure = ""
    differences = differences_table(tables)
    escape = html_module.escape
    parts = [f'<p class="sftlab-headline"><b>{escape(sentence)}</b></p>']
    parts += [f'<p class="sftlab-failure">{escape(line)}</p>' for line in failures]
    parts += [f'<p class="sftlab-card"><b>Reliability card</b> — {escape(line)}</p>' for line in cards]
    body = figure
    if differences is not None:
        body += f'<div class="sftlab-differences">{differences.html}</div>'
    if body:
        parts.append(f'<div class="sftlab-verdict-body">{body}</div>')
    block = f'{VERDICT_STYLE}<div class="sftlab-verdict">{"".join(parts)}</div>'
    return Block(pages.box(block), "\n".join([sentence, *failures, *(f"reliability card — {c}" for c in cards)]))


def summary_table(by_checkpoint: pd.DataFrame, criteria: list[str]) -> Block:
    """The per-checkpoint summary as a report table: one row per model, columns grouped (rows, termination and
    repetition, length, scores with their intervals, cost), value and interval in one cell."""
    frame = pd.DataFrame({"model": model_names(by_checkpoint) if len(by_checkpoint) else []})
    counts = {"samples": "n", "judged": "n_judged", "judge errors": "judge_errors", "not judged": "not_judged"}
    for label, column in counts.items():
        frame[label] = by_checkpoint[column].astype(int).to_numpy()
    frame["terminates (EOS)"] = [interval(r["eos_rate"], r["eos_rate_low"], r["eos_rate_high"], percent=True)
                                 for _, r in by_checkpoint.iterrows()]
    degeneration_columns = {"rep-2": "rep_2", "rep-4": "rep_4", "seq-rep-4": "seq_rep_4", "distinct-2": "distinct_2"}
    for label, column in degeneration_columns.items():
        frame[label] = by_checkpoint[column].to_numpy()
    frame["mean tokens"] = by_checkpoint["mean_tokens"].round(1).to_numpy()
    frame["length ratio"] = by_checkpoint["length_ratio"].to_numpy()
    scores = [name for name in ["overall", *criteria] if name in by_checkpoint]
    for name in scores:
        frame[name] = [interval(r[name], r[f"{name}_low"], r[f"{name}_high"]) for _, r in by_checkpoint.iterrows()]
    frame["cost (USD)"] = by_checkpoint["cost_usd"].to_numpy()
    frame["judge"] = by_checkpoint["judge"].to_numpy()
    groups = {"rows": list(counts), "termination and repetition": ["terminates (EOS)", *degeneration_columns],
              "length": ["mean tokens", "length ratio"], "scores, mean [95% interval]": scores}
    return table(frame, groups=groups, precision={"cost (USD)": 4, "mean tokens": 1})


def differences_detail(differences: pd.DataFrame) -> Block:
    """Every paired difference against the baseline: one row per model, one column per metric, each the mean
    difference with its interval; the number of paired samples."""
    if differences.empty:
        return table(pd.DataFrame({"note": ["one model only: no differences against a baseline"]}))
    multi = differences["experiment"].nunique() > 1
    metrics = list(dict.fromkeys(differences["metric"]))
    rows = []
    for (experiment, step, checkpoint), group in differences.groupby(["experiment", "step", "checkpoint"], sort=True):
        row = {"model": f"{experiment}/{checkpoint}" if multi else checkpoint, "pairs": int(group["n_pairs"].max())}
        for d in group.itertuples():
            row[d.metric] = interval(d.difference, d.low, d.high, signed=True, percent=d.metric == "eos_terminated",
                                     digits=1 if d.metric == "n_tokens" else 3)
        rows.append(row)
    return table(pd.DataFrame(rows),
                 groups={f"difference against {differences['baseline'].iloc[0]}, mean [95% interval]": metrics})
