"""The offline reference judge: scores from agreement with the reference answer, no LLM, no network.

Deterministic: the same row always gets the same scores. It fills the rubric's schema, so its rows
look like an LLM judge's, but its numbers mean "how close to the reference, and how well-formed" —
not "how good"; every row says `judge.backend: reference`.

Tokens. `rouge-score`'s default tokenizer keeps only [a-z0-9] and so drops every Hangul syllable. Here
Korean is split into morphemes by kiwipiepy (its model ships in the `kiwipiepy_model` package, nothing
is downloaded), everything else into lower-cased words. Without kiwipiepy, Hangul runs fall back to
character bigrams; the judge's model name (`reference-v1+kiwi` or `reference-v1+bigram`) says which,
and is part of the cache key.

Metrics, each in [0, 1], named by a criterion's `reference_metric`:
    answer_f1         1 on exact match (same token sequence), else token F1 (SQuAD-style bag overlap)
    reference_recall  ROUGE-L recall: longest common token subsequence / reference tokens
    on_topic          share of answer tokens that occur in the question or the reference
    language_match    share of the answer's letters in the rubric language's script (ko: Hangul, en: Latin)
    length            1 up to a length ratio (answer/reference) of 1.5, then falling linearly to 0 at 4;
                      an empty answer scores 0 (saying nothing is not concise)
    termination       0.5 for ending with EOS + 0.5 * (1 - seq-rep-4), the share of repeated 4-grams
A value v maps onto a scale [low, high] as low + round(v * (high - low)), halves rounded up.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sftlab import jsonl
from sftlab.judge.rubric import Rubric

VERSION = "reference-v1"

_HANGUL = "\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f"
_RUNS = re.compile(rf"([{_HANGUL}]+)|([^\W_{_HANGUL}]+)")
_HAS_HANGUL = re.compile(rf"[{_HANGUL}]")
_SCRIPTS = {
    "ko": re.compile(rf"[{_HANGUL}]"),
    "en": re.compile(r"[A-Za-z]"),
}


# --------------------------------------------------------------------------------------------
# Tokens and agreement
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _kiwi():
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        return None
    return Kiwi()  # ~2 s to load its model, once per process


def tokenizer_name() -> str:
    return "kiwi" if _kiwi() is not None else "bigram"


def judge_model() -> str:
    return f"{VERSION}+{tokenizer_name()}"


@lru_cache(maxsize=8192)
def _tokens(text: str) -> tuple[str, ...]:
    kiwi = _kiwi() if _HAS_HANGUL.search(text) else None
    if kiwi is None:  # no Hangul, or no kiwipiepy: words, and character bigrams for Hangul runs
        tokens: list[str] = []
        for hangul, other in _RUNS.findall(text):
            tokens.extend((hangul[i:i + 2] for i in range(max(1, len(hangul) - 1))) if hangul else (other,))
        return tuple(tokens)
    # Kiwi sees the whole text (a particle alone is ambiguous; in context it is not), but only its
    # Hangul morphemes are kept: it splits Latin words oddly ("London." -> "L", "ondon."). Words in
    # other scripts come from the regex; both are put back in text order by their offsets.
    spans = [(t.start, i, t.form) for i, t in enumerate(kiwi.tokenize(text)) if _HAS_HANGUL.search(t.form)]
    spans += [(m.start(), len(spans) + i, m.group(2)) for i, m in enumerate(_RUNS.finditer(text)) if m.group(2)]
    return tuple(form for _, _, form in sorted(spans))


def tokenize(text: str) -> list[str]:
    """Morphemes for Korean, lower-cased words for everything else; punctuation is dropped. A lone
    surrogate (possible in a model's output, never a character) becomes U+FFFD first."""
    text = jsonl.utf8_safe(text or "")
    return list(_tokens(unicodedata.normalize("NFC", text).lower()))


def token_f1(output: list[str], reference: list[str]) -> float:
    if not output or not reference:
        return float(output == reference)
    overlap = sum((Counter(output) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(output), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(output: list[str], reference: list[str]) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 (beta = 1, as rouge-score's `fmeasure`)."""
    lcs = lcs_length(output, reference)
    precision = lcs / len(output) if output else 0.0
    recall = lcs / len(reference) if reference else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f": f}


def exact_match(output: list[str], reference: list[str]) -> bool:
    return bool(output) and output == reference


def script_share(text: str, language: str) -> float:
    """Share of the letters of `text` that are in `language`'s script."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for ch in letters if _SCRIPTS[language].match(ch)) / len(letters)


def seq_rep_n(tokens: list[str], n: int = 4) -> float:
    """1 - distinct n-grams / n-grams (Welleck et al. 2019), for rows whose infer metrics lack it."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


# --------------------------------------------------------------------------------------------
# Metrics -> criteria
# --------------------------------------------------------------------------------------------


class _Row:
    """Tokens and infer metrics of one generation row, computed once for all criteria."""

    def __init__(self, row: dict[str, Any], language: str):
        self.language = language
        self.output_text = row.get("output") or ""
        self.output = tokenize(self.output_text)
        self.reference = tokenize(row.get("reference") or "")
        question = " ".join(m.get("content", "") for m in row.get("prompt") or [] if m.get("role") == "user")
        self.question = tokenize(question)
        self.row = row


def _answer_f1(r: _Row) -> tuple[float, str]:
    exact = exact_match(r.output, r.reference)
    f1 = token_f1(r.output, r.reference)
    return (1.0 if exact else f1), f"token F1 {f1:.2f}, exact match {'yes' if exact else 'no'}"


def _reference_recall(r: _Row) -> tuple[float, str]:
    rouge = rouge_l(r.output, r.reference)
    lcs = round(rouge["recall"] * len(r.reference))
    return rouge["recall"], (f"ROUGE-L recall {rouge['recall']:.2f} ({lcs} of {len(r.reference)} reference tokens "
                             f"in order), ROUGE-L F {rouge['f']:.2f}")


def _on_topic(r: _Row) -> tuple[float, str]:
    if not r.output:
        return 0.0, "empty answer"
    known = set(r.reference) | set(r.question)
    hits = sum(1 for t in r.output if t in known)
    return hits / len(r.output), f"{hits} of {len(r.output)} answer tokens occur in the question or the reference"


def _language_match(r: _Row) -> tuple[float, str]:
    share = script_share(r.output_text, r.language)
    return share, f"{share:.0%} of the answer's letters are in the script of '{r.language}'"


def _length(r: _Row) -> tuple[float, str]:
    if not r.output:
        return 0.0, "empty answer"
    ratio = r.row.get("length_ratio")
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        ratio = len(r.output) / max(1, len(r.reference))
    value = 1.0 if ratio <= 1.5 else max(0.0, 1 - (ratio - 1.5) / 2.5)
    return value, f"length ratio to the reference {ratio:.2f} (full marks up to 1.5, none from 4)"


def _termination(r: _Row) -> tuple[float, str]:
    eos = r.row.get("eos_terminated")
    if not isinstance(eos, bool):
        eos = r.row.get("finish_reason") == "eos"
    rep = r.row.get("seq_rep_4")
    if not isinstance(rep, (int, float)) or not math.isfinite(rep):
        rep = seq_rep_n(r.output, 4)
    return 0.5 * eos + 0.5 * (1 - min(1.0, max(0.0, rep))), (
        f"ended with EOS: {'yes' if eos else 'no'}; seq-rep-4 {rep:.2f} (share of repeated 4-grams)")


METRICS: dict[str, Callable[[_Row], tuple[float, str]]] = {
    "answer_f1": _answer_f1,
    "reference_recall": _reference_recall,
    "on_topic": _on_topic,
    "language_match": _language_match,
    "length": _length,
    "termination": _termination,
}


def check_rubric(rubric: Rubric, where: str) -> None:
    """Raise if the reference judge cannot score every criterion of `rubric`."""
    for c in rubric.criteria:
        if c.reference_metric not in METRICS:
            raise ValueError(
                f"{where}: criterion '{c.key}' has reference_metric {c.reference_metric!r}; the reference judge "
                f"needs one of {', '.join(METRICS)}")
        if c.reference_metric == "language_match" and rubric.language not in _SCRIPTS:
            raise ValueError(f"{where}: language_match knows the scripts of {', '.join(_SCRIPTS)}, "
                             f"not '{rubric.language}'")


def to_scale(value: float, scale: tuple[int, int]) -> int:
    low, high = scale
    return low + math.floor(max(0.0, min(1.0, value)) * (high - low) + 0.5)


def evaluate(row: dict[str, Any], rubric: Rubric) -> dict[str, Any]:
    """Scores, reasons, the raw evaluation JSON and the agreement metrics for one generation row."""
    r = _Row(row, rubric.language)
    scores, reasons = {}, {}
    for c in rubric.criteria:
        value, explanation = METRICS[c.reference_metric](r)
        scores[c.key] = to_scale(value, c.scale)
        reasons[c.key] = f"{explanation} -> {value:.2f} -> {scores[c.key]}/{c.scale[1]}"
    rouge = rouge_l(r.output, r.reference)
    metrics = {
        "token_f1": token_f1(r.output, r.reference),
        "rouge_l": rouge["f"],
        "rouge_l_recall": rouge["recall"],
        "exact_match": exact_match(r.output, r.reference),
        "tokenizer": tokenizer_name(),
    }
    raw = json.dumps({k: {"reason": reasons[k], "score": scores[k]} for k in rubric.keys}, ensure_ascii=False)
    return {"scores": scores, "reasons": reasons, "raw": raw, "metrics": metrics}
