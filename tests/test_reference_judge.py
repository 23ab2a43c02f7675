"""The offline reference judge: tokens that keep Hangul, F1 / ROUGE-L / exact match with known values,
and the documented mapping of metrics onto the rubric's criteria."""

import pytest

from sftlab.judge import load_rubric
from sftlab.judge import reference as ref

KO = "영국의 수도는 런던입니다."


@pytest.fixture(scope="module")
def ko_rubric():
    return load_rubric("params/rubrics/qa_ko.yaml")


@pytest.fixture(scope="module")
def en_rubric():
    return load_rubric("params/rubrics/qa_en.yaml")


def generation(output, reference=KO, question="영국의 수도는 어디인가요?", **metrics):
    row = {"id": "s1", "checkpoint": "base", "prompt": [{"role": "user", "content": question}],
           "reference": reference, "output": output, "eos_terminated": True, "seq_rep_4": 0.0, "length_ratio": 1.0}
    return {**row, **metrics}


def test_korean_is_split_into_morphemes_and_punctuation_dropped():
    # rouge-score's default tokenizer would return [] here: it keeps only [a-z0-9].
    assert ref.tokenize(KO) == ["영국", "의", "수도", "는", "런던", "이", "ᆸ니다"]
    assert ref.tokenizer_name() == "kiwi"
    assert ref.tokenize("The GPU는 fast!") == ["the", "gpu", "는", "fast"]
    assert ref.tokenize("London은 3번째") == ["london", "은", "3", "번", "째"]


def test_korean_f1_rouge_and_exact_match_have_known_values():
    out, gold = ref.tokenize("수도는 런던"), ref.tokenize(KO)  # 3 tokens, all among the reference's 7
    assert ref.token_f1(out, gold) == pytest.approx(0.6)  # P 1, R 3/7 -> 2PR/(P+R) = 0.6
    assert ref.rouge_l(out, gold) == pytest.approx({"precision": 1.0, "recall": 3 / 7, "f": 0.6})
    assert not ref.exact_match(out, gold)
    assert ref.exact_match(ref.tokenize("영국의 수도는 런던입니다"), gold)  # punctuation does not count
    assert ref.token_f1(ref.tokenize("파리"), gold) == 0.0


def test_english_f1_and_rouge_l_have_known_values():
    out, gold = ref.tokenize("The capital of the UK is London."), ref.tokenize("London is the capital.")
    assert ref.token_f1(out, gold) == pytest.approx(8 / 11)  # overlap 4: P 4/7, R 1
    rouge = ref.rouge_l(out, gold)  # LCS "the capital": 2
    assert (rouge["precision"], rouge["recall"], rouge["f"]) == pytest.approx((2 / 7, 1 / 2, 4 / 11))
    assert ref.exact_match(ref.tokenize("london is THE capital"), gold)


def test_without_kiwi_hangul_falls_back_to_character_bigrams(monkeypatch):
    monkeypatch.setattr(ref, "_kiwi", lambda: None)
    ref._tokens.cache_clear()
    try:
        assert ref.tokenize("런던입니다 ok") == ["런던", "던입", "입니", "니다", "ok"]
        assert ref.judge_model() == "reference-v1+bigram"
    finally:
        ref._tokens.cache_clear()


def test_scale_mapping_rounds_halves_up():
    assert [ref.to_scale(v, (1, 5)) for v in (0.0, 0.124, 0.125, 0.5, 0.99, 1.0, 1.7)] == [1, 1, 2, 3, 5, 5, 5]


def test_a_perfect_answer_gets_full_marks_with_reasons_that_state_the_numbers(ko_rubric):
    result = ref.evaluate(generation(KO), ko_rubric)
    assert result["scores"] == {k: 5 for k in ko_rubric.keys}
    assert "token F1 1.00, exact match yes" in result["reasons"]["accuracy"]
    assert result["metrics"]["exact_match"] is True and result["metrics"]["tokenizer"] == "kiwi"


def test_an_answer_in_the_wrong_language_scores_lowest_on_fluency(ko_rubric, en_rubric):
    english = ref.evaluate(generation("The capital is London."), ko_rubric)
    assert english["scores"]["fluency"] == 1
    assert english["scores"]["accuracy"] == 1  # no Korean token in common with the reference
    korean_for_en = ref.evaluate(generation(KO, reference="London.", question="Capital of the UK?"), en_rubric)
    assert korean_for_en["scores"]["fluency"] == 1


def test_a_repeating_answer_that_never_stops_scores_low_on_termination_and_conciseness(ko_rubric):
    looping = ref.evaluate(generation(KO + " 런던입니다." * 12, eos_terminated=False, seq_rep_4=0.8,
                                      length_ratio=6.0), ko_rubric)
    assert looping["scores"]["termination"] == 1 + round(0.1 * 4)  # 0.5 * 0 + 0.5 * (1 - 0.8) = 0.1
    assert looping["scores"]["conciseness"] == 1
    assert looping["scores"]["completeness"] == 5  # it did say the whole reference: length is not rewarded
    assert "ended with EOS: no; seq-rep-4 0.80" in looping["reasons"]["termination"]


def test_missing_infer_metrics_are_computed_from_the_text(ko_rubric):
    row = generation("런던 런던 런던 런던 런던 런던", finish_reason="length")
    del row["eos_terminated"], row["seq_rep_4"], row["length_ratio"]
    result = ref.evaluate(row, ko_rubric)
    assert "ended with EOS: no" in result["reasons"]["termination"]
    assert "seq-rep-4 0.67" in result["reasons"]["termination"]  # 3 four-grams, 1 distinct


def test_a_rubric_without_reference_metrics_is_refused_by_name(ko_rubric):
    broken = ko_rubric.model_copy(update={"criteria": (ko_rubric.criteria[0].model_copy(
        update={"reference_metric": None}),)})
    with pytest.raises(ValueError, match="criterion 'accuracy' has reference_metric None"):
        ref.check_rubric(broken, "my_rubric.yaml")
