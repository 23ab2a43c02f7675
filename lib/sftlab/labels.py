"""Human labels: a person's scores for a sample of rows, to see how well the judge agrees.

    labels.sample(params, n=20)                  # rows to label: stratified by checkpoint and language
    labels.sample(params, n=20, order="disagreements")  # rows where the judge is least sure first
    label_form.widget(params, n=20)              # in Jupyter: label them one by one (sftlab.label_form)
    labels.import_file(params, "my_labels.csv")  # or import a CSV / JSONL file of labels
    labels.agreement(params.layout, judge_scores, ...)  # judge vs human, for the reliability card

Stored append-only in `outputs/<exp>/labels/labels.jsonl` (sftlab.jsonl), one row per label: `id`,
`checkpoint`, `scores` {criterion key: integer on the rubric's scale}, `labeller` (free text), `source`
(widget or the imported file), `labelled_at` and, from the form, `picked` (how the answer came to be shown:
`stratified`, `disagreements` or `reopened`). A label can be revised: the latest row per (checkpoint, id) wins.
The form remembers each person's name in `labels/labellers.json` (keyed by the login name). A file to import has one row per labelled answer with the columns `id`,
`checkpoint`, optionally `labeller`, and one column per criterion key (e.g. `accuracy`) holding the score;
a bad row is reported with its file, line and field, and nothing of that file is imported.

Pairwise labels (`judge.mode: pairwise`) compare two answers: `checkpoint` is `<A>~<B>` (A shown first,
as in the judge's files) and `scores` is {"verdict": -2..2} from A's side; a file gives `id`, `first`,
`second` and `verdict` (A>>B, A>B, A=B, B>A, B>>A or -2..2). Agreement is then the raw share of pairs where
judge and person name the same winner or both a tie (`pairwise_agreement`).

Orders (`ORDERS`): `stratified` draws round robin over (checkpoint, language), then shuffles the draw with the seed
so that checkpoints come in no telling sequence. `disagreements` first puts the rows where a few labels buy the
most information (`disagreements`): judge passes (`judge.repeats`) that score a criterion 2 or more points apart,
a judge that scores well (overall >= 0.6) an answer that did not stop or repeats itself (seq-rep-4 >= 0.2), and
answers whose pairwise judgments flipped with the order of the two answers; then the stratified rest. Such a
sample over-represents hard rows: the agreement measured on it is a pessimistic estimate of the judge's.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sftlab import jsonl, paths
from sftlab.clock import utc_now
from sftlab.config import Params
from sftlab.errors import SftlabError
from sftlab.files import atomic_write_text
from sftlab.infer import store
from sftlab.judge import store as judgments
from sftlab.judge.pairwise import CRITERION, PAIR_SEPARATOR, VERDICTS, model_pairs, pair_name
from sftlab.judge.rubric import load_rubric
from sftlab.judge.stage import pairwise_baseline, rubric_path
from sftlab.judge.store import SCORE_PREFIX
from sftlab.score import bootstrap
from sftlab.score.reliability import spearman

LABELS_FILE = "labels.jsonl"
LABELLERS_FILE = "labellers.json"  # login name -> the name its person labels under
RESERVED = ("id", "checkpoint", "labeller", "source", "labelled_at", "scores", "first", "second", "verdict", "picked")
ORDERS = ("stratified", "disagreements")
PASS_SPREAD = 2  # points on a criterion's scale between two passes of the judge: not noise on a 1-5 scale
HIGH_OVERALL = 0.6  # the rubric's weighted mean (0-1) from which a judge calls an answer good
REPETITIVE = 0.2  # seq-rep-4: a fifth of the answer's 4-grams repeat (fluent text is near 0)


class LabelsError(SftlabError, ValueError):
    """A label file that cannot be imported; the message names the file, line and field."""


def labels_file(layout: paths.ExperimentLayout) -> Path:
    return layout.labels / LABELS_FILE


def latest(layout: paths.ExperimentLayout) -> dict[tuple[str, str], dict[str, Any]]:
    """(checkpoint, id) -> the latest label."""
    return {(row["checkpoint"], str(row["id"])): row for row in jsonl.read_rows(labels_file(layout))}


def add(layout: paths.ExperimentLayout, checkpoint: str, sample_id: str, scores: dict[str, int], labeller: str,
        source: str = "widget", picked: str | None = None) -> None:
    row = {"id": str(sample_id), "checkpoint": checkpoint, "scores": scores, "labeller": labeller, "source": source,
           "labelled_at": utc_now()}
    jsonl.append_rows(labels_file(layout), [row if picked is None else {**row, "picked": picked}])


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "default"


def remembered_labeller(layout: paths.ExperimentLayout) -> str:
    """The name this login last labelled under in this experiment ('' if none)."""
    path = layout.labels / LABELLERS_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get(_login(), ""))
    except (FileNotFoundError, ValueError, AttributeError):
        return ""


def remember_labeller(layout: paths.ExperimentLayout, name: str) -> None:
    """Keep `name` as this login's labeller name (not a secret: it is written into every label anyway)."""
    path = layout.labels / LABELLERS_FILE
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
        names = names if isinstance(names, dict) else {}
    except (FileNotFoundError, ValueError):
        names = {}
    if names.get(_login()) == name:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**names, _login(): name}, ensure_ascii=False, indent=1) + "\n")


def import_file(params: Params, path: str | Path, criteria: list[str] | None = None) -> int:
    """Import labels from a CSV or JSONL file; return how many. Checks every row before writing any."""
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
                         "labeller": str(row.get("labeller") or "unknown"), "source": str(path), "labelled_at": utc_now()})
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
                     "labeller": str(row.get("labeller") or "unknown"), "source": str(path), "labelled_at": utc_now()})
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LabelsError("labels not imported:\n  " + "\n  ".join(problems[:20]) + more)
    jsonl.append_rows(labels_file(params.layout), rows)
    return len(rows)


def disagreements(params: Params) -> dict[tuple[str, str], list[str]]:
    """(checkpoint, id) -> why a label there is worth most: the judge's passes disagree, the judge and the
    termination or repetition metrics conflict, or pairwise orders flipped. Pairs are keyed by (`a~b`, id) with
    a < b. Rows without a reason are absent."""
    reasons: dict[tuple[str, str], list[str]] = {}
    passes: dict[tuple[str, str], list] = {}
    for (checkpoint, sample_id, _), row in judgments.latest_rows(params.layout.judge).items():
        if row.status == "judged":
            passes.setdefault((checkpoint, sample_id), []).append(row)
    generated = {(row.checkpoint, row.id): row for row in store.read_generations(params.layout.generations)}
    for key, rows in passes.items():
        scores = [row.scores or {} for row in rows]
        if any(max(s.get(c, 0) for s in scores) - min(s.get(c, 0) for s in scores) >= PASS_SPREAD
               for c in set().union(*scores) if all(c in s for s in scores)):
            reasons.setdefault(key, []).append("judge passes disagree")
        overall = [row.overall for row in rows if row.overall is not None]
        answer = generated.get(key)
        if answer is not None and overall and sum(overall) / len(overall) >= HIGH_OVERALL:
            if answer.finish_reason == "length" or float(getattr(answer, "seq_rep_4", 0) or 0) >= REPETITIVE:
                reasons.setdefault(key, []).append("judged good, yet it did not stop or repeats itself")
    verdicts: dict[tuple, list[int]] = {}
    for row in judgments.latest_rows(params.layout.judge / "pairwise").values():
        if row.status == "judged" and row.scores and CRITERION in row.scores:
            first, _, second = row.checkpoint.partition(PAIR_SEPARATOR)
            from_a = row.scores[CRITERION] * (1 if first < second else -1)
            verdicts.setdefault((min(first, second), max(first, second), row.id), []).append(from_a)
    for (a, b, sample_id), values in verdicts.items():
        if min(values) < 0 < max(values):  # the orders (or passes) name different winners
            for key in ((a, sample_id), (b, sample_id), (pair_name(a, b), sample_id)):
                reasons.setdefault(key, []).append("pairwise orders flipped")
    return reasons


def _check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")


def _round_robin(queues: list[list], n: int) -> list:
    picked = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked


def sample(params: Params, n: int = 20, seed: int | None = None, order: str = "stratified") -> list:
    """`n` generation rows to label, skipping rows already labelled: stratified by checkpoint and language (round
    robin over the strata, each shuffled with the seed), then shuffled so that no checkpoint comes in a telling
    sequence; with `order="disagreements"`, the rows `disagreements` names come first."""
    _check_order(order)
    done = set(latest(params.layout))
    rng = random.Random(params.seed if seed is None else seed)
    rows = [row for row in store.read_generations(params.layout.generations) if (row.checkpoint, row.id) not in done]
    first: list = []
    if order == "disagreements":
        worth = disagreements(params)
        first = [row for row in rows if (row.checkpoint, row.id) in worth]
        rng.shuffle(first)
        first.sort(key=lambda row: -len(worth[(row.checkpoint, row.id)]))  # stable: most reasons first
        first = first[:n]
        rows = [row for row in rows if (row.checkpoint, row.id) not in worth]
    strata: dict[tuple, list] = {}
    for row in rows:
        strata.setdefault((row.checkpoint, row.meta.get("lang")), []).append(row)
    for stratum in strata.values():
        rng.shuffle(stratum)
    rest = _round_robin([list(rows) for _, rows in sorted(strata.items(), key=lambda kv: str(kv[0]))], n - len(first))
    rng.shuffle(rest)
    return first + rest


def sample_pairs(params: Params, n: int = 20, seed: int | None = None, order: str = "stratified") -> list[tuple]:
    """`n` (first, second) generation-row pairs to compare, from the pairs `judge.pairs` selects, round
    robin over the pairs of models, then shuffled; which answer is shown first is drawn at random (no position
    cue). With `order="disagreements"`, pairs whose judgments flipped with the order come first."""
    _check_order(order)
    by_model: dict[str, dict[str, Any]] = {}
    for row in store.read_generations(params.layout.generations):
        by_model.setdefault(row.checkpoint, {})[row.id] = row
    done = {(pair, sample_id) for pair, sample_id in latest(params.layout) if PAIR_SEPARATOR in pair}
    worth = disagreements(params) if order == "disagreements" else {}
    rng = random.Random(params.seed if seed is None else seed)
    queues, first = [], []
    for a, b in model_pairs(list(by_model), params.judge.pairs, pairwise_baseline(params)):
        shared = [i for i in by_model[a] if i in by_model[b]]
        rng.shuffle(shared)
        queue = []
        for sample_id in shared:
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            if (pair_name(left, right), sample_id) not in done and (pair_name(right, left), sample_id) not in done:
                pair = (by_model[left][sample_id], by_model[right][sample_id])
                flagged = (pair_name(min(a, b), max(a, b)), sample_id) in worth
                (first if flagged else queue).append(pair)
        queues.append(queue)
    rng.shuffle(first)
    first = first[:n]
    rest = _round_robin(queues, n - len(first))
    rng.shuffle(rest)
    return first + rest


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
