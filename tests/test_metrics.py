"""Degeneration metrics on hand-made token lists with values worked out by hand (see sftlab.metrics)."""

import pytest

from sftlab import metrics
from sftlab.metrics import distinct_n, length_ratio, ngrams, rep_n, seq_rep_n


def words(text: str) -> list[str]:
    return text.split()


def test_ngrams_overlap_and_short_inputs():
    assert ngrams(words("a b c"), 2) == [("a", "b"), ("b", "c")]
    assert ngrams(words("a a a"), 2) == [("a", "a"), ("a", "a")]
    assert ngrams(words("a"), 2) == [] and ngrams([], 1) == []
    with pytest.raises(ValueError, match="at least 1"):
        ngrams(words("a b"), 0)


def test_text_without_repetition():
    tokens = words("the cat sat on the mat")
    assert rep_n(tokens, 2) == rep_n(tokens, 3) == rep_n(tokens, 4) == 0.0
    assert seq_rep_n(tokens, 4) == 0.0
    assert distinct_n(tokens, 1) == 5 / 6  # "the" twice
    assert distinct_n(tokens, 2) == 1.0
    assert rep_n(tokens, 1) == 1 / 6  # the second "the" covers one token of six


def test_alternating_loop():
    tokens = words("a b a b a b")
    # bigrams: ab ba ab ba ab -> the last three repeat an earlier one, covering tokens 3..6.
    assert seq_rep_n(tokens, 2) == pytest.approx(3 / 5)
    assert rep_n(tokens, 2) == pytest.approx(4 / 6)
    assert distinct_n(tokens, 2) == pytest.approx(2 / 5)
    assert distinct_n(tokens, 1) == pytest.approx(2 / 6)
    # 4-grams: abab baba abab -> one repeat of three; it covers tokens 3..6.
    assert seq_rep_n(tokens, 4) == pytest.approx(1 / 3)
    assert rep_n(tokens, 4) == pytest.approx(4 / 6)
    assert rep_n(tokens, 3) == pytest.approx(4 / 6)  # aba bab aba bab: the last two repeat, tokens 3..6


def test_rep_n_and_seq_rep_n_differ_as_documented():
    # A phrase said twice: the second "a b" and "b c" repeat -> 2 of 5 bigrams, covering 3 of 6 tokens.
    tokens = words("a b c a b c")
    assert seq_rep_n(tokens, 2) == pytest.approx(2 / 5)
    assert rep_n(tokens, 2) == pytest.approx(3 / 6)
    # One repeated phrase in a long answer: a small share of the 4-grams, a larger share of the text.
    long = words("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 x y z q x y z q")
    assert seq_rep_n(long, 4) == pytest.approx(1 / 15)  # only "x y z q" repeats, once, among 15
    assert rep_n(long, 4) == pytest.approx(4 / 18)


def test_single_token_loop_never_ending():
    tokens = words("x x x x x")
    assert seq_rep_n(tokens, 4) == pytest.approx(1 / 2)  # two 4-grams, one unique
    assert rep_n(tokens, 4) == pytest.approx(4 / 5)  # the second 4-gram covers tokens 2..5
    assert rep_n(tokens, 2) == pytest.approx(4 / 5)
    assert distinct_n(tokens, 1) == pytest.approx(1 / 5)
    assert distinct_n(tokens, 2) == pytest.approx(1 / 4)


def test_distinct_is_one_minus_seq_rep_for_the_same_n():
    tokens = words("to be or not to be that is the question to be")
    for n in (1, 2, 3, 4):
        assert distinct_n(tokens, n) == pytest.approx(1 - seq_rep_n(tokens, n))


def test_empty_and_short_outputs_are_well_defined():
    for tokens in ([], words("a"), words("a a a")):
        assert seq_rep_n(tokens, 4) == 0.0 and rep_n(tokens, 4) == 0.0 and distinct_n(tokens, 4) == 0.0
    assert rep_n([], 2) == distinct_n([], 1) == 0.0
    assert distinct_n(words("a"), 1) == 1.0 and distinct_n(words("a"), 2) == 0.0
    row = metrics.degeneration_metrics([], [1, 2, 3])
    assert row == {"rep_2": 0.0, "rep_3": 0.0, "rep_4": 0.0, "seq_rep_4": 0.0, "distinct_1": 0.0, "distinct_2": 0.0,
                   "length_ratio": 0.0}


def test_length_ratio():
    assert length_ratio(10, 5) == 2.0
    assert length_ratio(3, 6) == 0.5
    assert length_ratio(3, 0) == 3.0  # an empty reference counts as one token
    assert metrics.degeneration_metrics([7] * 8, [1, 2, 3, 4])["length_ratio"] == 2.0


def test_korean_counts_tokenizer_tokens_not_whitespace_words(builtin_model_path):
    """Korean particles glue onto words: four 'different' words, one repeated stem (서울, Seoul)."""
    from transformers import AutoTokenizer

    text = "서울은 서울이 서울을 서울에"
    assert rep_n(words(text), 1) == 0.0 and distinct_n(words(text), 1) == 1.0  # words see no repetition

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    # SmolLM2's byte-level tokens, pinned so the values below can be checked by hand: 서울 is
    # [183, 222, 246, 183, 244, 133] at the start and [18601, 222, 246, 183, 244, 133] after a space.
    seoul, spaced_seoul = [183, 222, 246, 183, 244, 133], [18601, 222, 246, 183, 244, 133]
    assert tokens == seoul + [26638, 218] + spaced_seoul + [46258] + spaced_seoul + [26638, 222] + spaced_seoul + [183, 241, 234]
    # 29 four-grams; 9 repeat one seen before: 2 inside the second 서울 (matching the first), 4 across
    # the third and 3 across the fourth. They cover tokens 10-14, 16-22 and 24-29: 18 of 32.
    assert seq_rep_n(tokens, 4) == pytest.approx(9 / 29)
    assert rep_n(tokens, 4) == pytest.approx(18 / 32)
    assert distinct_n(tokens, 4) == pytest.approx(20 / 29)
