"""Per-sample explorer: sortable, filterable, searchable tables of answers, in Jupyter and in the HTML reports.

    from sftlab import explorer
    explorer.init()                                   # once per notebook: DataTables, inlined (no network)
    display(explorer.samples(frame, filters=["checkpoint", "lang", "finish_reason"]))
    display(explorer.compare(samples, "checkpoint-30", "checkpoint-60"))   # where B beats A

The tables are DataTables (the `itables` package, its offline bundle inlined in the page by `init()`), so the
same output works live in Jupyter and in the nbconvert report opened from disk without network.
Filters are search panes (click values to filter: checkpoint, language, category, finish reason, judged or not);
the search box searches every column; every column sorts.

Every value is escaped here with `html.escape` before it reaches the table (the tables are built with
`allow_html=True` only so that long answers can fold into a `<details>` element): an answer holding `<script>`
or `<img onerror>` is shown as text, never run.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import pandas as pd

from sftlab import pages
from sftlab.judge.store import SCORE_PREFIX, reasons_text

FOLD_AT = 200  # characters: longer texts show their start and unfold on a click
PAGE_LENGTH = 10

STYLE = """<style>
table.sftlab-explorer td { text-align: left !important; vertical-align: top; white-space: normal; }
table.sftlab-explorer td .sftlab-text { white-space: pre-wrap; overflow-wrap: anywhere; min-width: 16em;
  max-width: 38em; display: block; }
table.sftlab-explorer td details summary { cursor: pointer; color: #333; }
table.sftlab-explorer td details[open] summary .sftlab-more { display: none; }
table.sftlab-explorer td .sftlab-length { color: #b00020; font-weight: bold; }
table.sftlab-explorer td .sftlab-error { color: #a40000; }
table.sftlab-explorer td .sftlab-tag { color: #666; font-size: .85em; white-space: nowrap; }
table.sftlab-explorer td.dt-type-numeric { text-align: right !important; }
</style>"""


class Table(str):
    """An HTML table that Jupyter displays as HTML. As text (its text/plain output: what the runner's terminal
    log shows, never raw markup) it is a one-line note; `str(table)` is the HTML."""

    note = "an interactive table: open the notebook or its HTML report"

    def __new__(cls, markup: str, note: str | None = None) -> "Table":
        made = super().__new__(cls, markup)
        if note:
            made.note = note
        return made

    def _repr_html_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"[{self.note}]"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(repr(self))


def init() -> None:
    """Load DataTables into this notebook's output, inline (no CDN): run once, before the first table.
    The output must be kept (papermill and the reports keep it)."""
    import itables

    itables.init_notebook_mode(connected=False, all_interactive=False)


def escape(value: Any) -> str:
    """HTML-escaped text; line breaks, tabs and carriage returns as markup (pandas' formatter, which the table
    data passes through, would otherwise show them as the two characters `\\n`)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = html.escape(str(value), quote=True)
    return text.replace("\r\n", "\n").replace("\n", "<br>").replace("\t", "&#9;").replace("\r", "&#13;")


def text_cell(value: Any, fold_at: int = FOLD_AT) -> str:
    """Escaped, wrapped text that keeps line breaks; long text folds into a `<details>` showing its start."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if len(text) <= fold_at:
        return f'<span class="sftlab-text">{escape(text)}</span>'
    return (f'<details><summary><span class="sftlab-text">{escape(text[:fold_at])}<span class="sftlab-more">'
            f" … ({len(text)} characters)</span></span></summary>"
            f'<span class="sftlab-text">{escape(text[fold_at:])}</span></details>')


def question(prompt: Any) -> str:
    """The last user message of a chat prompt (the question), or the value itself if not a chat."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return "" if prompt is None else str(prompt)


def finish_cell(reason: Any, tokens: Any = None) -> str:
    reason = "" if reason is None else str(reason)
    css = "sftlab-length" if reason == "length" else "sftlab-tag"
    count = "" if tokens is None or pd.isna(tokens) else f" · {int(tokens)} tokens"
    return f'<span class="{css}">{escape(reason)}{count}</span>'


def table(frame: pd.DataFrame, text: Iterable[str] = (), filters: Iterable[str] = (),
          order: list[tuple[str, str]] | None = None, caption: str | None = None,
          page_length: int = PAGE_LENGTH) -> Table:
    """A DataTable of `frame`: columns in `text` are long texts (wrapped, folded when long), other non-numeric
    columns are escaped; `filters` get search panes; `order` is [(column, "asc"|"desc")]."""
    import itables

    text, filters = list(text), [c for c in filters if c in frame.columns]
    shown = pd.DataFrame(index=range(len(frame)))
    for column in frame.columns:
        values = frame[column].reset_index(drop=True)
        if column in text:
            shown[column] = values.map(text_cell)
        elif pd.api.types.is_bool_dtype(values):
            shown[column] = values.map(lambda v: "yes" if v else "no")
        elif pd.api.types.is_numeric_dtype(values):
            whole = values.dropna()
            whole = len(whole) and bool((whole == whole.round()).all())
            shown[column] = values.round().astype("Int64") if whole else values.astype("Float64").round(3)
        else:
            shown[column] = values.map(escape)
    shown.columns = [escape(c) for c in shown.columns]
    position = {name: i for i, name in enumerate(frame.columns)}
    options: dict[str, Any] = {
        "connected": False, "allow_html": True, "maxBytes": 0, "showIndex": False, "pageLength": page_length,
        "lengthMenu": [5, 10, 25, 50, 100, -1], "classes": "display compact cell-border sftlab-explorer",
        "autoWidth": False, "style": "width: 100%; table-layout: auto; margin: 0",
        "columnDefs": [{"targets": [position[c] for c in text], "className": "dt-left", "width": "30em"}]
        if text else [],
    }
    if order:
        options["order"] = [[position[c], direction] for c, direction in order if c in position]
    if filters:
        options["layout"] = {"top1": "searchPanes"}
        options["searchPanes"] = {"columns": [position[c] for c in filters], "cascadePanes": True,
                                  "initCollapsed": True, "layout": f"columns-{min(3, len(filters))}",
                                  "dtOpts": {"select": {"style": "multi"}}}
    body = itables.to_html_datatable(shown, caption=escape(caption) if caption else None, **options)
    note = f"interactive table of {len(frame)} rows{': ' + caption if caption else ''} (in the notebook and its HTML report)"
    return Table(STYLE + pages.box(body), note)


def generations(frame: pd.DataFrame) -> Table:
    """The infer stage's answers (`infer.views.load_generations`): one row per (checkpoint, sample)."""
    columns = {"checkpoint": frame.get("checkpoint"), "id": frame.get("id"),
               "lang": frame.get("lang"), "category": frame.get("category"),
               "question": frame["prompt"].map(question) if "prompt" in frame else None,
               "answer": frame.get("output"), "reference": frame.get("reference"),
               "finish_reason": frame.get("finish_reason"), "tokens": frame.get("n_tokens"),
               "rep_4": frame.get("rep_4"), "seq_rep_4": frame.get("seq_rep_4")}
    shown = pd.DataFrame({k: v.reset_index(drop=True) for k, v in columns.items() if v is not None})
    return table(shown, text=["question", "answer", "reference"],
                 filters=["checkpoint", "lang", "category", "finish_reason"])


def judgments(frame: pd.DataFrame, answers: pd.DataFrame | None = None) -> Table:
    """The judge stage's rows (`judge.load_judgments`) with each answer (from `answers`, the generations frame
    when given), the scores, the judge's reasons and any error: one row per (checkpoint, sample)."""
    frame = frame.reset_index(drop=True)
    shown = pd.DataFrame({"checkpoint": frame["checkpoint"], "id": frame["id"]})
    if "repeat" in frame and frame["repeat"].max() > 0:
        shown["pass"] = frame["repeat"]  # judge.repeats: the same answer judged again
    if answers is not None and len(answers):
        keyed = answers.set_index(["checkpoint", "id"])
        index = pd.MultiIndex.from_frame(shown[["checkpoint", "id"]])
        for column in ("lang", "category"):
            if column in keyed:
                shown[column] = keyed[column].reindex(index).to_numpy()
        shown["question"] = keyed["prompt"].reindex(index).map(question).to_numpy()
        shown["answer"] = keyed["output"].reindex(index).to_numpy()
        shown["finish_reason"] = keyed["finish_reason"].reindex(index).to_numpy()
    shown["status"] = frame["status"]
    shown["overall"] = pd.to_numeric(frame.get("overall"), errors="coerce")
    for column in [c for c in frame.columns if c.startswith(SCORE_PREFIX)]:
        shown[column.removeprefix(SCORE_PREFIX)] = pd.to_numeric(frame[column], errors="coerce")
    shown["reasons"] = frame["reasons"].map(lambda r: reasons_text(r if isinstance(r, dict) else None)) \
        if "reasons" in frame else ""
    shown["error"] = frame.get("error")
    text = [c for c in ("question", "answer", "reasons", "error") if c in shown]
    return table(shown, text=text, filters=["checkpoint", "lang", "category", "finish_reason", "status", "pass"])


def samples(frame: pd.DataFrame) -> Table:
    """The score stage's per-sample table (`score.tables["samples"]`): every answer with its scores."""
    frame = frame.reset_index(drop=True)
    columns = [c for c in ("experiment", "checkpoint", "id", "lang", "category") if c in frame]
    shown = frame[columns].copy()
    shown["question"] = frame["prompt"].map(question) if "prompt" in frame else ""
    shown["answer"] = frame.get("output")
    shown["finish_reason"] = frame.get("finish_reason")
    shown["tokens"] = frame.get("n_tokens")
    shown["judged"] = frame["judge_status"].map(lambda s: "judged" if s == "judged" else f"unscored ({s})")
    shown["overall"] = pd.to_numeric(frame.get("overall"), errors="coerce")
    for column in [c for c in frame.columns if c.startswith(SCORE_PREFIX)]:
        shown[column.removeprefix(SCORE_PREFIX)] = pd.to_numeric(frame[column], errors="coerce")
    if "judge_reasons" in frame:
        shown["reasons"] = frame["judge_reasons"]
    shown["judge_error"] = frame.get("judge_error")
    text = [c for c in ("question", "answer", "reasons", "judge_error") if c in shown]
    return table(shown, text=text, filters=["experiment", "checkpoint", "lang", "category", "finish_reason",
                                            "judged"])


def compare_frame(samples: pd.DataFrame, a: str, b: str, outcomes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Two models on the same sample ids, one row per id, sorted by how much more B scored than A (largest
    difference first, either way). `a` and `b` are "checkpoint" or "experiment/checkpoint" (the score stage's
    model names). With `outcomes` (the score stage's pairwise table, judge.mode: pairwise) each row also gets the
    pairwise verdict between the two from B's side (-4..4, both orders summed; 0 when the orders disagree,
    flagged `flip`), which orders the rows when there are no single scores."""
    def pick(name: str) -> pd.DataFrame:
        experiment, _, checkpoint = name.rpartition("/")
        chosen = samples[samples["checkpoint"] == checkpoint]
        if experiment:
            chosen = chosen[chosen["experiment"] == experiment]
        if chosen.empty:
            known = sorted(set(samples["checkpoint"]) | set(samples["experiment"] + "/" + samples["checkpoint"]))
            raise KeyError(f"no samples of '{name}' to compare; known: {', '.join(known)}")
        return chosen.drop_duplicates("id").set_index("id")

    left, right = pick(a), pick(b)
    ids = [i for i in left.index if i in right.index]
    criteria = [c for c in samples.columns if c.startswith(SCORE_PREFIX)]
    rows = []
    for sample_id in ids:
        x, y = left.loc[sample_id], right.loc[sample_id]
        a_overall = pd.to_numeric(x.get("overall"), errors="coerce")
        b_overall = pd.to_numeric(y.get("overall"), errors="coerce")
        row = {"id": sample_id, "question": question(x.get("prompt")), "A answer": x.get("output"),
               "B answer": y.get("output"), "Δ overall": b_overall - a_overall}
        for column in criteria:
            name = column.removeprefix(SCORE_PREFIX)
            row[f"Δ {name}"] = pd.to_numeric(y.get(column), errors="coerce") - pd.to_numeric(x.get(column),
                                                                                          errors="coerce")
        row.update({"A overall": a_overall, "B overall": b_overall, "A finish": x.get("finish_reason"),
                    "B finish": y.get("finish_reason"), "A reasons": x.get("judge_reasons"),
                    "B reasons": y.get("judge_reasons"), "reference": x.get("reference"),
                    "lang": x.get("lang"), "category": x.get("category")})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    if outcomes is not None and len(outcomes):
        frame = frame.merge(_verdicts(outcomes, a, b), on="id", how="left")
        if frame["Δ overall"].isna().all():
            frame["Δ overall"] = frame["pairwise (B's side)"]
    frame["|Δ|"] = frame["Δ overall"].abs()
    frame = frame.sort_values(["|Δ|", "Δ overall"], ascending=False, na_position="last", kind="stable")
    return frame.drop(columns=["|Δ|"]).dropna(axis=1, how="all").reset_index(drop=True)


def _verdicts(outcomes: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per id: the pairwise verdict between a and b from b's side, and whether the two orders disagreed."""
    low, high = sorted((a, b))
    pair = outcomes[(outcomes["a"] == low) & (outcomes["b"] == high)]
    side = -1 if high == b else 1  # outcomes' x is from the side of the pair's first model in sorted order
    grouped = pair.groupby("id", sort=False).agg(x=("x", "mean"), flip=("flip", "any")).reset_index()
    return pd.DataFrame({"id": grouped["id"], "pairwise (B's side)": side * grouped["x"], "flip": grouped["flip"]})


def compare(samples: pd.DataFrame, a: str, b: str, outcomes: pd.DataFrame | None = None) -> Table:
    """`compare_frame` as a DataTable: the largest differences first."""
    frame = compare_frame(samples, a, b, outcomes)
    caption = f"A = {a}, B = {b}: {len(frame)} shared samples, largest |Δ overall| first"
    if frame.empty:
        return Table(f"<p>{escape(caption)}</p>", caption)
    text = [c for c in ("question", "A answer", "B answer", "A reasons", "B reasons", "reference") if c in frame]
    return table(frame, text=text, filters=["lang", "category", "A finish", "B finish"], caption=caption)


def default_pair(samples: pd.DataFrame) -> tuple[str, str] | None:
    """What to compare when nothing is asked: the first and the last model of the table (the base or the first
    experiment's first checkpoint, and the last experiment's last checkpoint)."""
    names = list(dict.fromkeys(samples["experiment"] + "/" + samples["checkpoint"]))
    if len(names) < 2:
        return None
    if samples["experiment"].nunique() == 1:
        names = [n.split("/", 1)[1] for n in names]
    return names[0], names[-1]
