"""Judge-free degeneration metrics of one generated answer: repetition, diversity, length.

Every function takes token sequences (lists of token ids from the model's tokenizer; any hashable
items work, which is how the tests use hand-made words). n-grams are counted on tokenizer tokens, not
whitespace words: Korean attaches particles to words ("서울은", "서울이", "서울을"), so whitespace
words would count one repeated stem as three different words.

An output of L tokens has max(L - n + 1, 0) n-gram occurrences, counted with overlaps
("a a a" has two occurrences of the bigram "a a").

    rep_n       share of the output's TOKENS that lie inside a repeated n-gram occurrence
    seq_rep_n   share of the output's n-gram OCCURRENCES that repeat an earlier one (Welleck et al. 2019)
    distinct_n  unique n-grams / n-gram occurrences (= 1 - seq_rep_n for the same n)
    length_ratio  output tokens / reference tokens

How rep_n and seq_rep_n differ: seq_rep_n counts n-grams, rep_n counts the text they cover.
For "a b a b a b" and n = 2: the occurrences are ab ba ab ba ab, of which the last three repeat an
earlier one, so seq_rep_2 = 3/5 = 0.6; those three cover tokens 3..6, so rep_2 = 4/6 = 0.667.
A loop that never ends drives both towards 1; a single repeated phrase in a long answer barely moves
seq_rep_n (one occurrence among many) but shows in rep_n as the share of text it takes.

Short outputs (fewer than n tokens, including the empty output) have no n-grams: nothing repeats, so
rep_n = seq_rep_n = 0.0, and nothing is distinct, so distinct_n = 0.0.
"""

from __future__ import annotations

from typing import Hashable, Sequence

Tokens = Sequence[Hashable]


def ngrams(tokens: Tokens, n: int) -> list[tuple]:
    """Every n-gram occurrence, in order, overlapping: ngrams("abc", 2) == [("a", "b"), ("b", "c")]."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep_n(tokens: Tokens, n: int = 4) -> float:
    """seq-rep-n of Welleck et al. 2019 ("Neural Text Generation with Unlikelihood Training"):

        seq_rep_n = 1 - |unique n-grams| / |n-gram occurrences|

    i.e. the fraction of n-gram occurrences that repeat an n-gram seen earlier in the same output.
    0.0 when the output has no n-grams (fewer than n tokens).
    """
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def rep_n(tokens: Tokens, n: int) -> float:
    """Share of the output's tokens that lie inside a repeated n-gram occurrence:

        rep_n = |{i : token i lies inside an n-gram occurrence starting at j, and the same n-gram
                      also starts at some k < j}| / L

    with L the number of tokens. The first occurrence of an n-gram is not repeated; every later
    occurrence (overlapping ones included) marks its n tokens. "a b c a b c" gives rep_2 = 3/6 (the
    second "a b" and "b c" cover tokens 4..6). 0.0 when the output has fewer than n tokens.
    """
    seen: set[tuple] = set()
    covered = [False] * len(tokens)
    for start, gram in enumerate(ngrams(tokens, n)):
        if gram in seen:
            covered[start:start + n] = [True] * n
        else:
            seen.add(gram)
    return sum(covered) / len(tokens) if any(covered) else 0.0


def distinct_n(tokens: Tokens, n: int) -> float:
    """distinct-n of one output (Li et al. 2016, per output rather than over a corpus):

        distinct_n = |unique n-grams| / |n-gram occurrences|   (= 1 - seq_rep_n for the same n)

    1.0 when no n-gram repeats. 0.0 when the output has no n-grams (fewer than n tokens).
    """
    grams = ngrams(tokens, n)
    if not grams:
        return 0.0
    return len(set(grams)) / len(grams)


def length_ratio(output_tokens: int, reference_tokens: int) -> float:
    """output tokens / reference tokens, both counted with the same tokenizer.

    1.0 is an answer as long as the reference; a model that never stops sits at max_new_tokens /
    reference length. An empty reference counts as one token, so the ratio stays finite.
    """
    return output_tokens / max(reference_tokens, 1)


# The metrics of every generated row, by name: the one list of them (rows, summaries and scores read it).
_DEGENERATION = {
    "rep_2": lambda output, reference: rep_n(output, 2),
    "rep_3": lambda output, reference: rep_n(output, 3),
    "rep_4": lambda output, reference: rep_n(output, 4),
    "seq_rep_4": lambda output, reference: seq_rep_n(output, 4),
    "distinct_1": lambda output, reference: distinct_n(output, 1),
    "distinct_2": lambda output, reference: distinct_n(output, 2),
    "length_ratio": lambda output, reference: length_ratio(len(output), len(reference)),
}
METRICS = tuple(_DEGENERATION)


def degeneration_metrics(output: Tokens, reference: Tokens) -> dict[str, float]:
    """Every metric of `METRICS` for one output, as the infer stage writes them into each row."""
    return {name: metric(output, reference) for name, metric in _DEGENERATION.items()}
