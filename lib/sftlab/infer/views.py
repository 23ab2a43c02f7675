"""What the infer notebook shows: the generations as a frame, metrics per checkpoint, answers side by side.

    generations = views.load_generations(params)   # one row per (checkpoint, sample)
    views.summarize(generations)                   # per checkpoint: termination rate first, then the rest
    views.side_by_side(generations, samples=12)    # HTML: one row per sample, one column per checkpoint

In the side-by-side table every piece of text (prompt, reference, model output, ids, checkpoint names) goes through
`html.escape`, so an output holding `<script>` or markup is shown as text, never run or rendered.
Text is left as UTF-8 characters (Korean stays readable in the source of the report), and
`white-space: pre-wrap` keeps the model's line breaks and runs of spaces visible.
"""

from __future__ import annotations

import html

from sftlab import jsonl
from sftlab.config import Params
from sftlab.explorer import question
from sftlab.infer import store
from sftlab.infer.stage import select_checkpoints, select_examples
from sftlab.metrics import METRICS


def load_generations(params: Params):
    """Rows of the selected checkpoints and samples, base first, samples in test-set order.

    `meta` is spread into columns (e.g. `lang`); a meta key that clashes with a row field becomes
    `meta.<key>`.
    """
    import pandas as pd

    ids = [e.id for e in select_examples(params)]
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    frames = []
    for target in select_checkpoints(params):
        rows = [jsonl.utf8_safe(r.to_json()) for r in store.read_file(params.layout.generations_file(target.name))
                if r.id in position]
        frame = pd.DataFrame(rows)
        if len(frame):
            frames.append(frame.sort_values("id", key=lambda s: s.map(position)))
    if not frames:
        return pd.DataFrame(columns=["id", "checkpoint", "output", "finish_reason", "n_tokens", *METRICS])
    frame = pd.concat(frames, ignore_index=True)
    meta = pd.DataFrame(list(frame.pop("meta")), index=frame.index)
    meta.columns = [f"meta.{c}" if c in frame.columns else c for c in meta.columns]
    return frame.join(meta)


def summarize(generations, by: str | list[str] = "checkpoint"):
    """Means per group (default: per checkpoint, in the order of `generations`): termination rate first,
    then repetition and diversity, mean length and length ratio; the number of samples last."""
    by = [by] if isinstance(by, str) else list(by)
    return generations.groupby(by, sort=False).agg(
        termination_rate=("eos_terminated", "mean"),
        **{name: (name, "mean") for name in METRICS if name != "length_ratio"},
        mean_tokens=("n_tokens", "mean"),
        length_ratio=("length_ratio", "mean"),
        samples=("id", "size"),
    )

STYLE = """<style>
table.sftlab-side-by-side { border-collapse: collapse; font-size: 0.85em; }
table.sftlab-side-by-side th, table.sftlab-side-by-side td {
  border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left;
  white-space: pre-wrap; max-width: 28em; }
table.sftlab-side-by-side .finish { color: #666; font-size: 0.85em; white-space: nowrap; }
table.sftlab-side-by-side .length { color: #b00020; font-weight: bold; }
</style>"""


def _text(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _answer_cell(row) -> str:
    if row is None:
        return '<td class="missing">(not generated)</td>'
    finish = str(row["finish_reason"])
    note = f'<div class="finish {_text(finish)}">{_text(finish)} · {int(row["n_tokens"])} tokens</div>'
    return f"<td>{_text(row['output'])}{note}</td>"


def side_by_side(generations, samples: int = 8) -> str:
    """The first `samples` samples of `generations` (`load_generations`): question, reference,
    then each checkpoint's output with its finish reason and length."""
    if len(generations) == 0:
        return "<p>(no generations)</p>"
    checkpoints = list(dict.fromkeys(generations["checkpoint"]))
    ids = list(dict.fromkeys(generations["id"]))[:samples]
    by_key = {(r["checkpoint"], r["id"]): r for r in generations.to_dict("records")}
    header = "".join(f"<th>{_text(name)}</th>" for name in ("id", "prompt", "reference", *checkpoints))
    rows = []
    for sample_id in ids:
        first = next(by_key[(c, sample_id)] for c in checkpoints if (c, sample_id) in by_key)
        cells = [f"<td>{_text(sample_id)}</td>", f"<td>{_text(question(first['prompt']))}</td>",
                 f"<td>{_text(first['reference'])}</td>"]
        cells += [_answer_cell(by_key.get((c, sample_id))) for c in checkpoints]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'{STYLE}<table class="sftlab-side-by-side"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def summary(generations, run=None):
    """The infer report's one-paragraph summary: rows, termination, answers cut at the length cap, and what
    this run cost (`run`: the stage's `Summary`)."""
    from sftlab.tables import summary_block

    if len(generations) == 0:
        return summary_block(["⚠ No answers: nothing was generated for the selected checkpoints and samples."])
    checkpoints = list(dict.fromkeys(generations["checkpoint"]))
    samples = generations["id"].nunique()
    sentences = [f"{len(generations)} answers: {len(checkpoints)} models ({', '.join(checkpoints)}) × "
                 f"{samples} test samples."]
    rates = generations.groupby("checkpoint", sort=False)["eos_terminated"].mean()
    sentences.append("Stopped on their own (EOS within max_new_tokens): "
                     + ", ".join(f"{name} {rate:.0%}" for name, rate in rates.items()) + ".")
    cut = generations[generations["finish_reason"] == "length"].groupby("checkpoint", sort=False).size()
    if cut.sum():
        sentences.append(f"⚠ {int(cut.sum())} of {len(generations)} answers were cut at infer.max_new_tokens ("
                         + ", ".join(f"{name}: {int(n)}" for name, n in cut.items()) + ").")
    else:
        sentences.append("No answer was cut at infer.max_new_tokens.")
    if run is not None:
        made = sum(run.generated.values())
        if made:
            seconds, tokens = sum(run.seconds.values()), sum(run.tokens.values())
            sentences.append(f"This run generated {made} answers in {seconds:.0f} s ({tokens} tokens, "
                             f"{tokens / max(seconds, 1e-9):.1f} tokens/s); no API cost.")
        else:
            sentences.append("This run generated nothing: every answer was already on disk.")
    return summary_block(sentences)
