"""Checks on the shipped demo dataset in data/demo and on its generator."""

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
SPLITS = ("train", "test")
KEYS = {"id", "lang", "category", "question", "answer"}
MIN_ROWS = {"train": 400, "test": 80}
MAX_ANSWER_WORDS = 20


def load_generator():
    """Import make_demo.py by path: data/demo is a folder of data, not a package."""
    spec = importlib.util.spec_from_file_location("make_demo", DEMO_DIR / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    # Keep the data folder free of __pycache__ litter.
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def read_rows(split):
    with (DEMO_DIR / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def rows():
    return {split: read_rows(split) for split in SPLITS}


def find(rows, row_id):
    matches = [row for split_rows in rows.values() for row in split_rows if row["id"] == row_id]
    assert len(matches) == 1, row_id
    return matches[0]


# ---------------------------------------------------------------- shape


@pytest.mark.parametrize("split", SPLITS)
def test_row_counts(rows, split):
    assert len(rows[split]) >= MIN_ROWS[split]


@pytest.mark.parametrize("split", SPLITS)
def test_at_least_half_korean_in_each_split(rows, split):
    langs = Counter(row["lang"] for row in rows[split])
    assert set(langs) == {"ko", "en"}
    assert langs["ko"] * 2 >= len(rows[split])


def test_at_least_half_korean_overall(rows):
    everything = rows["train"] + rows["test"]
    assert sum(row["lang"] == "ko" for row in everything) * 2 >= len(everything)


@pytest.mark.parametrize("split", SPLITS)
def test_rows_have_exactly_the_keys_with_nonempty_strings(rows, split):
    for row in rows[split]:
        assert set(row) == KEYS, row
        for key in KEYS:
            assert isinstance(row[key], str) and row[key].strip(), (key, row)
        assert row["lang"] in ("ko", "en")
        assert row["id"].startswith(f"{row['lang']}-{row['category']}-")


@pytest.mark.parametrize("split", SPLITS)
def test_answers_are_short_sentences(rows, split):
    for row in rows[split]:
        answer = row["answer"]
        assert answer.endswith("."), row
        assert len(answer.split()) <= MAX_ANSWER_WORDS, row
        assert "\n" not in answer


@pytest.mark.parametrize("split", SPLITS)
def test_korean_rows_are_in_hangul_and_polite(rows, split):
    for row in rows[split]:
        if row["lang"] == "ko":
            assert any("\uac00" <= ch <= "\ud7a3" for ch in row["question"]), row
            assert row["answer"].endswith("니다."), row


@pytest.mark.parametrize("split", SPLITS)
def test_several_categories_per_split(rows, split):
    assert len({row["category"] for row in rows[split]}) >= 5


# ---------------------------------------------------------------- uniqueness and split


def test_ids_unique_across_both_files(rows):
    ids = [row["id"] for split in SPLITS for row in rows[split]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("split", SPLITS)
def test_no_duplicate_questions_within_a_split(rows, split):
    questions = [row["question"] for row in rows[split]]
    assert len(questions) == len(set(questions))


def test_questions_disjoint_between_splits(rows):
    train = {row["question"] for row in rows["train"]}
    test = {row["question"] for row in rows["test"]}
    assert not train & test


def test_korean_and_english_versions_share_a_split(rows):
    # ids are "<lang>-<category>-<key>"; strip the language to pair them up.
    for split in SPLITS:
        facts = Counter(row["id"].split("-", 1)[1] for row in rows[split])
        assert all(count == 2 for count in facts.values()), split


def test_split_follows_the_documented_hash_rule():
    generator = load_generator()
    ids = {split: {row["id"] for row in read_rows(split)} for split in SPLITS}
    for fact in generator.all_facts():
        split = generator.split_of(fact)
        for lang in ("ko", "en"):
            assert f"{lang}-{fact.category}-{fact.key}" in ids[split]


# ---------------------------------------------------------------- regeneration


def test_regenerating_gives_byte_identical_files(tmp_path):
    # In-process through the script's own entry point: same code path as
    # `python data/demo/make_demo.py --out DIR`, without a subprocess.
    load_generator().main(["--out", str(tmp_path)])
    for split in SPLITS:
        name = f"{split}.jsonl"
        assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), name


def test_committed_files_are_utf8_jsonl_with_trailing_newline():
    for split in SPLITS:
        raw = (DEMO_DIR / f"{split}.jsonl").read_bytes()
        assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
        assert b"\\u" not in raw  # Korean is stored as text, not escapes
        raw.decode("utf-8")


# ---------------------------------------------------------------- Korean particles


@pytest.mark.parametrize(
    "word, which, expected",
    [
        ("파리", "은", "는"),
        ("파리", "이", "가"),
        ("서울", "은", "은"),
        ("서울", "이", "이"),
        ("도쿄", "을", "를"),
        ("도쿄", "는", "는"),
        ("런던", "를", "을"),
        ("일본", "와", "과"),
        ("프랑스", "과", "와"),
        ("대한민국", "가", "이"),
    ],
)
def test_particle_after_hangul(word, which, expected):
    assert load_generator().particle(word, which) == expected


@pytest.mark.parametrize(
    "number, expected",
    [
        ("2", "는"),  # 이
        ("8", "은"),  # 팔
        ("9", "는"),  # 구
        ("6", "은"),  # 육
        ("10", "은"),  # 십
        ("20", "은"),  # 이십
        ("25", "는"),  # 이십오
        ("100", "은"),  # 백
        ("1,000", "은"),  # 천
        ("0", "은"),  # 영
    ],
)
def test_particle_after_numbers(number, expected):
    assert load_generator().particle(number, "은") == expected


def test_particle_refuses_words_it_cannot_read():
    with pytest.raises(ValueError):
        load_generator().particle("Au", "은")


# ---------------------------------------------------------------- spot checks


@pytest.mark.parametrize(
    "row_id, question, answer",
    [
        ("ko-capital-france", "프랑스의 수도는 어디인가요?", "프랑스의 수도는 파리입니다."),
        ("en-capital-france", "What is the capital of France?", "The capital of France is Paris."),
        ("ko-capital-south-korea", "대한민국의 수도는 어디인가요?", "대한민국의 수도는 서울입니다."),
        ("en-capital-japan", "What is the capital of Japan?", "The capital of Japan is Tokyo."),
        ("ko-continent-japan", "일본은 어느 대륙에 있나요?", "일본은 아시아에 있습니다."),
        ("en-continent-philippines", "On which continent is the Philippines?", "The Philippines is in Asia."),
        ("ko-element-gold", "금의 원소 기호는 무엇인가요?", "금의 원소 기호는 Au입니다."),
        ("en-element-iron", "What is the chemical symbol for iron?",
         "The chemical symbol for iron is Fe."),
        ("ko-multiplication-7-times-8", "7 곱하기 8은 얼마인가요?", "7 곱하기 8은 56입니다."),
        ("ko-multiplication-3-times-9", "3 곱하기 9는 얼마인가요?", "3 곱하기 9는 27입니다."),
        ("en-addition-73-plus-48", "What is 73 plus 48?", "73 plus 48 is 121."),
        ("ko-unit-week-to-day-1", "1주는 며칠인가요?", "1주는 7일입니다."),
        ("ko-unit-hour-to-minute-3", "3시간은 몇 분인가요?", "3시간은 180분입니다."),
        ("en-calendar-days-in-april", "How many days are in April?", "April has 30 days."),
        ("ko-calendar-day-after-monday", "월요일 다음 날은 무슨 요일인가요?",
         "월요일 다음 날은 화요일입니다."),
        ("en-calendar-month-after-december", "Which month comes after December?",
         "The month after December is January."),
        ("ko-korea-hangul-day", "한글날은 몇 월 며칠인가요?", "한글날은 10월 9일입니다."),
    ],
)
def test_spot_checks(rows, row_id, question, answer):
    row = find(rows, row_id)
    assert (row["question"], row["answer"]) == (question, answer)


def test_arithmetic_answers_are_right(rows):
    # Recompute every sum and product from the question, independently of the generator.
    for split_rows in rows.values():
        for row in split_rows:
            if row["lang"] != "en" or row["category"] not in ("addition", "multiplication"):
                continue
            a, op, b = row["question"].removeprefix("What is ").removesuffix("?").split()
            expected = int(a) * int(b) if op == "times" else int(a) + int(b)
            assert row["answer"] == f"{a} {op} {b} is {expected}.", row
