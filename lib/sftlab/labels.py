"""Human labels: a person's scores for a sample of rows, to see how well the judge agrees.

    labels.sample(params, n=20)                  # rows to label: stratified by checkpoint and language
    labels.widget(params, n=20, labeller="kim")  # in Jupyter: label them one by one (ipywidgets)
    labels.import_file(params, "my_labels.csv")  # or import a CSV / JSONL file of labels
    labels.agreement(params.layout, judge_scores, ...)  # judge vs human, for the reliability card

Stored append-only in `outputs/<exp>/labels/labels.jsonl` (sftlab.jsonl), one row per label: `id`,
`checkpoint`, `scores` {criterion key: integer on the rubric's scale}, `labeller` (free text), `source`
(widget or the imported file) and `labelled_at`. A label can be revised: the latest row per
(checkpoint, id) wins. A file to import has one row per labelled answer with the columns `id`,
`checkpoint`, optionally `labeller`, and one column per criterion key (e.g. `accuracy`) holding the score;
a bad row is reported with its file, line and field, and nothing of that file is imported.

Pairwise labels (`judge.mode: pairwise`) compare two answers: `checkpoint` is `<A>~<B>` (A shown first,
as in the judge's files) and `scores` is {"verdict": -2..2} from A's side; a file gives `id`, `first`,
`second` and `verdict` (A>>B, A>B, A=B, B>A, B>>A or -2..2). Agreement is then the raw share of pairs where
judge and person name the same winner or both a tie (`pairwise_agreement`).
"""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sftlab import jsonl, paths
from sftlab.config import Params
from sftlab.judge.pairwise import CRITERION, PAIR_SEPARATOR, VERDICTS, pair_name
from sftlab.judge.store import SCORE_PREFIX

LABELS_FILE = "labels.jsonl"
RESERVED = ("id", "checkpoint", "labeller", "source", "labelled_at", "scores", "first", "second", "verdict")


class LabelsError(ValueError):
    """A label file that cannot be imported; the message names the file, line and field."""


def labels_file(layout: paths.ExperimentLayout) -> Path:
    return layout.labels / LABELS_FILE


def latest(layout: paths.ExperimentLayout) -> dict[tuple[str, str], dict[str, Any]]:
    """(checkpoint, id) -> the latest label."""
    return {(row["checkpoint"], str(row["id"])): row for row in jsonl.read_rows(labels_file(layout))}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def add(layout: paths.ExperimentLayout, checkpoint: str, sample_id: str, scores: dict[str, int], labeller: str,
        source: str = "widget") -> None:
    jsonl.append_rows(labels_file(layout), [{"id": str(sample_id), "checkpoint": checkpoint, "scores": scores,
                                             "labeller": labeller, "source": source, "labelled_at": _now()}])


def import_file(params: Params, path: str | Path, criteria: list[str] | None = None) -> int:
    """Import labels from a CSV or JSONL file; return how many. Checks every row before writing any."""
    from sftlab.infer import store

    path = Path(path)
    if not path.exists():
        raise LabelsError(f"{path}: file not found")
    if path.suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            raw = [(number, row) for number, row in enumerate(csv.DictReader(f), start=2)]
    else:
        raw = [(number, row) for number, row in jsonl.iter_rows(path)]
    known = {(row.checkpoint, row.id) for row in store.read_generations(params.layout.generations)}
    rows, problems = [], []
    for number, row in raw:
        where = f"{path}:{number}"
        if row.get("first") and row.get("second"):
            row = {**row, "checkpoint": pair_name(str(row["first"]), str(row["second"]))}
        missing = [k for k in ("id", "checkpoint") if not str(row.get(k) or "").strip()]
        if missing:
            problems.append(f"{where}: field '{missing[0]}' is missing")
            continue
        if row.get("first") and row.get("second"):  # a pairwise label
            verdict = str(row.get("verdict", "")).strip()
            if verdict not in VERDICTS and verdict.lstrip("-") not in ("0", "1", "2"):
                problems.append(f"{where}: field 'verdict': expected one of {', '.join(VERDICTS)} or -2..2, "
                                f"got {verdict!r}")
                continue
            missing_side = [s for s in (row["first"], row["second"]) if (str(s), str(row["id"])) not in known]
            if missing_side:
                problems.append(f"{where}: no generation for checkpoint '{missing_side[0]}', id '{row['id']}'")
                continue
            rows.append({"id": str(row["id"]), "checkpoint": row["checkpoint"],
                         "scores": {CRITERION: VERDICTS[verdict] if verdict in VERDICTS else int(verdict)},
                         "labeller": str(row.get("labeller") or "unknown"), "source": str(path), "labelled_at": _now()})
            continue
        key = (str(row["checkpoint"]), str(row["id"]))
        if key not in known:
            problems.append(f"{where}: no generation for checkpoint '{key[0]}', id '{key[1]}'")
            continue
        scores = row.get("scores") if isinstance(row.get("scores"), dict) else {
            k: v for k, v in row.items() if k not in RESERVED and str(v or "").strip() != ""}
        if criteria is not None:
            unknown = sorted(set(scores) - set(criteria))
            if unknown:
                problems.append(f"{where}: field '{unknown[0]}' is not a criterion ({', '.join(criteria)})")
                continue
        try:
            scores = {k: int(float(v)) for k, v in scores.items()}
        except (TypeError, ValueError):
            bad = next(k for k, v in scores.items() if not str(v).strip().lstrip("-").replace(".", "", 1).isdigit())
            problems.append(f"{where}: field '{bad}': expected an integer score, got {scores[bad]!r}")
            continue
        if not scores:
            problems.append(f"{where}: no score (expected a column per criterion key)")
            continue
        rows.append({"id": key[1], "checkpoint": key[0], "scores": scores,
                     "labeller": str(row.get("labeller") or "unknown"), "source": str(path), "labelled_at": _now()})
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LabelsError("labels not imported:\n  " + "\n  ".join(problems[:20]) + more)
    jsonl.append_rows(labels_file(params.layout), rows)
    return len(rows)


def sample(params: Params, n: int = 20, seed: int | None = None) -> list:
    """`n` generation rows to label, stratified by checkpoint and language (round robin over the strata,
    each shuffled with the seed), skipping rows already labelled."""
    from sftlab.infer import store

    done = set(latest(params.layout))
    strata: dict[tuple, list] = {}
    for row in store.read_generations(params.layout.generations):
        if (row.checkpoint, row.id) not in done:
            strata.setdefault((row.checkpoint, row.meta.get("lang")), []).append(row)
    rng = random.Random(params.seed if seed is None else seed)
    for rows in strata.values():
        rng.shuffle(rows)
    picked, queues = [], [list(rows) for _, rows in sorted(strata.items(), key=lambda kv: str(kv[0]))]
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def sample_pairs(params: Params, n: int = 20, seed: int | None = None) -> list[tuple]:
    """`n` (first, second) generation-row pairs to compare, from the pairs `judge.pairs` selects, round
    robin over the pairs of models; which answer is shown first is drawn at random (no position cue)."""
    from sftlab.infer import store
    from sftlab.judge.pairwise import model_pairs
    from sftlab.judge.stage import pairwise_baseline

    by_model: dict[str, dict[str, Any]] = {}
    for row in store.read_generations(params.layout.generations):
        by_model.setdefault(row.checkpoint, {})[row.id] = row
    done = {(pair, sample_id) for pair, sample_id in latest(params.layout) if PAIR_SEPARATOR in pair}
    rng = random.Random(params.seed if seed is None else seed)
    queues = []
    for a, b in model_pairs(list(by_model), params.judge.pairs, pairwise_baseline(params)):
        shared = [i for i in by_model[a] if i in by_model[b]]
        rng.shuffle(shared)
        queue = []
        for sample_id in shared:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            if (pair_name(first, second), sample_id) not in done and (pair_name(second, first), sample_id) not in done:
                queue.append((by_model[first][sample_id], by_model[second][sample_id]))
        queues.append(queue)
    picked = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def widget(params: Params, n: int = 20, labeller: str = "", seed: int | None = None):
    """An ipywidgets form: one row at a time (question, reference, answer), a slider per criterion of its
    rubric, Save & next; in pairwise mode two answers and a verdict. Each save appends a label."""
    import ipywidgets as w
    from IPython.display import display

    from sftlab.judge.rubric import load_rubric
    from sftlab.judge.stage import rubric_path

    pairwise_mode = params.judge.mode == "pairwise"
    rows = sample_pairs(params, n, seed) if pairwise_mode else sample(params, n, seed)
    state = {"index": 0}
    who = w.Text(value=labeller, description="labeller")
    text = w.HTML()
    sliders = w.VBox()
    status = w.HTML()
    save = w.Button(description="Save & next", button_style="primary")

    def show() -> None:
        if state["index"] >= len(rows):
            text.value, sliders.children = "<b>All sampled rows are labelled.</b>", ()
            save.disabled = True
            return
        import html

        item = rows[state["index"]]
        row = item[0] if pairwise_mode else item
        question = "\n".join(m["content"] for m in row.prompt if m.get("role") == "user")
        head = (f"<p><b>{html.escape(row.id)}</b> ({state['index'] + 1} of {len(rows)})</p>"
                f"<p><b>Question</b><br>{html.escape(question)}</p><p><b>Reference</b><br>{html.escape(row.reference)}</p>")
        if pairwise_mode:  # the models stay hidden: the verdict is on the answers alone
            text.value = head + "".join(f"<p><b>Answer {side}</b><br>{html.escape(answer.output)}</p>"
                                        for side, answer in zip("AB", item))
            sliders.children = (w.Dropdown(options=list(VERDICTS), value="A=B", description=CRITERION),)
            return
        rubric = load_rubric(rubric_path(params.judge, row))
        text.value = head + (f"<p><b>Answer</b> of {html.escape(row.checkpoint)} ({html.escape(row.finish_reason)})"
                             f"<br>{html.escape(row.output)}</p>")
        sliders.children = tuple(w.IntSlider(value=c.scale[0], min=c.scale[0], max=c.scale[1], description=c.key,
                                             tooltip=c.description) for c in rubric.criteria)

    def on_save(_) -> None:
        item = rows[state["index"]]
        if pairwise_mode:
            first, second = item
            checkpoint, sample_id = pair_name(first.checkpoint, second.checkpoint), first.id
            scores = {CRITERION: VERDICTS[sliders.children[0].value]}
        else:
            checkpoint, sample_id = item.checkpoint, item.id
            scores = {s.description: s.value for s in sliders.children}
        add(params.layout, checkpoint, sample_id, scores, who.value.strip() or "unknown")
        status.value = f"saved {checkpoint}/{sample_id}"
        state["index"] += 1
        show()

    save.on_click(on_save)
    show()
    form = w.VBox([who, text, sliders, save, status])
    display(form)
    return form


def round_half_up(values) -> np.ndarray:
    """The documented rounding of a mean over judge passes before κ: halves go up (2.5 -> 3, 3.5 -> 4),
    the same way for every score. (np.rint rounds halves to even, 2.5 -> 2 but 3.5 -> 4, which moves κ
    by the parity of the score.)"""
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(int)


def weighted_kappa(judge: np.ndarray, human: np.ndarray, scale: tuple[int, int]) -> tuple[float, str | None]:
    """Quadratic-weighted Cohen's κ over the whole scale (every point from lowest to highest is a category,
    so unused points keep their distance), as scikit-learn's `cohen_kappa_score(..., weights="quadratic",
    labels=...)` computes it (a test checks the two agree; this one is vectorised for the bootstrap), and
    why it says nothing when it cannot: (NaN, reason) when both sides gave one and the same score (0/0);
    (0.0, reason) when only one side did (κ is 0 by construction, not a measured disagreement)."""
    judge, human = round_half_up(judge), np.asarray(human, dtype=int)
    if len(set(judge)) == 1 and len(set(human)) == 1:
        return math.nan, f"undefined: judge and labels all {judge[0]} (0/0)"
    constant = "the judge" if len(set(judge)) == 1 else "the labels" if len(set(human)) == 1 else None
    low = min(scale[0], judge.min(), human.min())
    size = max(scale[1], judge.max(), human.max()) - low + 1
    observed = np.zeros((size, size))
    np.add.at(observed, (judge - low, human - low), 1)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    weights = np.subtract.outer(np.arange(size), np.arange(size)) ** 2
    kappa = float(1 - (weights * observed).sum() / (weights * expected).sum())
    if constant:
        value = (judge if constant == "the judge" else human)[0]
        return kappa, f"degenerate: {constant} gave every labelled answer {value}; κ is 0 by construction"
    return kappa, None


def agreement(layout: paths.ExperimentLayout, judge_scores: pd.DataFrame, n_boot: int = 1000,
              confidence: float = 0.95, seed: int = 0,
              scales: dict[str, tuple[int, int]] | None = None) -> dict[str, Any] | None:
    """Judge vs human on the labelled rows: per criterion weighted (quadratic) Cohen's κ over the rubric's
    scale (`scales`: criterion -> (lowest, highest); the observed range where missing) and Spearman ρ, with
    bootstrap intervals and counts. `judge_scores`: checkpoint, id and score columns (the mean over
    passes, rounded half up for κ). None without labels."""
    from sftlab.score import bootstrap
    from sftlab.score.reliability import spearman

    labelled = {k: v for k, v in latest(layout).items() if PAIR_SEPARATOR not in k[0]}  # answers, not pairs
    if not labelled:
        return None
    rng = np.random.default_rng(seed)
    index = judge_scores.set_index(["checkpoint", "id"])
    result: dict[str, Any] = {"labels": len(labelled),
                              "labellers": sorted({row["labeller"] for row in labelled.values()}), "criteria": {}}
    keys = sorted({k for row in labelled.values() for k in row["scores"]})
    for key in keys:
        column = SCORE_PREFIX + key
        pairs = []
        for (checkpoint, sample_id), row in labelled.items():
            if key in row["scores"] and (checkpoint, sample_id) in index.index and column in index:
                judged = index.loc[(checkpoint, sample_id), column]
                if judged is not None and not (isinstance(judged, float) and math.isnan(judged)):
                    pairs.append((float(judged), float(row["scores"][key])))
        if not pairs:
            continue
        pairs_array = np.array(pairs)
        scale = (scales or {}).get(key) or (int(pairs_array.min()), int(pairs_array.max()))
        estimate, reason = weighted_kappa(pairs_array[:, 0], pairs_array[:, 1], scale)
        _, low, high = bootstrap.interval(pairs_array, lambda p: weighted_kappa(p[:, 0], p[:, 1], scale)[0],
                                          n_boot, confidence, rng)
        rho = bootstrap.interval(pairs_array, spearman, n_boot, confidence, rng)
        kappa = {"estimate": _rounded(estimate), "low": _rounded(low), "high": _rounded(high),
                 "scale": f"{scale[0]}..{scale[1]}"}
        if reason:
            kappa.update({"low": None, "high": None, "note": reason})  # an interval of a constant is no evidence
        result["criteria"][key] = {"n": len(pairs), "kappa": kappa,
                                   "spearman_rho": {"estimate": _rounded(rho[0]), "low": _rounded(rho[1]),
                                                    "high": _rounded(rho[2])}}
    return result


def _rounded(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def pairwise_agreement(layout: paths.ExperimentLayout, outcomes: pd.DataFrame, names: dict[str, str] | None = None,
                       n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any] | None:
    """Judge vs person on labelled pairs: the share naming the same winner, or both a tie (raw agreement
    with ties), with a bootstrap interval. `outcomes`: the score stage's combined pairwise outcomes (a, b,
    id, outcome from a's side; several passes are averaged). `names` maps checkpoint names to the names
    used in `outcomes` (a study prefixes the experiment)."""
    from sftlab.score import bootstrap

    labelled = {k: v for k, v in latest(layout).items() if PAIR_SEPARATOR in k[0] and CRITERION in v["scores"]}
    if not labelled or outcomes.empty:
        return None
    judged = outcomes.groupby(["a", "b", "id"])["outcome"].mean()
    names = names or {}
    agree = []
    for (pair, sample_id), row in labelled.items():
        first, _, second = pair.partition(PAIR_SEPARATOR)
        first, second = names.get(first, first), names.get(second, second)
        a, b = min(first, second), max(first, second)
        if (a, b, sample_id) not in judged.index:
            continue
        human = row["scores"][CRITERION] * (1 if first == a else -1)
        agree.append(float(np.sign(judged[(a, b, sample_id)]) == np.sign(human)))
    if not agree:
        return None
    estimate = bootstrap.interval(np.array(agree), np.mean, n_boot, confidence, np.random.default_rng(seed))
    return {"labels": len(agree), "labellers": sorted({row["labeller"] for row in labelled.values()}),
            "raw_agreement": {"estimate": _rounded(estimate[0]), "low": _rounded(estimate[1]),
                              "high": _rounded(estimate[2]), "n": len(agree)}}
