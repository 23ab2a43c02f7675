"""Generate the demo question-answer dataset (Korean and English).

Run `python data/demo/make_demo.py` to rewrite `train.jsonl` and `test.jsonl`
next to this file, or pass `--out DIR` to write them elsewhere.

Every fact below is written by hand and kept to facts that do not change
and are not disputed, so the answers can serve as ground truth for judging.
The output is deterministic: no randomness, sorted JSON keys, a fixed order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Iterator, NamedTuple

# --------------------------------------------------------------------------
# Fact tables
# --------------------------------------------------------------------------

# Continent keys -> (Korean, English). Countries that span two continents
# (Russia, Turkey) or whose "continent" depends on the model taught
# (Australia, New Zealand) get None and are left out of the continent questions.
CONTINENTS = {
    "europe": ("유럽", "Europe"),
    "asia": ("아시아", "Asia"),
    "africa": ("아프리카", "Africa"),
    "north-america": ("북아메리카", "North America"),
    "south-america": ("남아메리카", "South America"),
}

# (key, country ko, country en, capital ko, capital en, continent key or None)
# Countries whose capital is split or contested (e.g. the Netherlands,
# Switzerland, Bolivia, South Africa) are deliberately absent.
COUNTRIES = [
    ("france", "프랑스", "France", "파리", "Paris", "europe"),
    ("germany", "독일", "Germany", "베를린", "Berlin", "europe"),
    ("italy", "이탈리아", "Italy", "로마", "Rome", "europe"),
    ("spain", "스페인", "Spain", "마드리드", "Madrid", "europe"),
    ("portugal", "포르투갈", "Portugal", "리스본", "Lisbon", "europe"),
    ("united-kingdom", "영국", "the United Kingdom", "런던", "London", "europe"),
    ("ireland", "아일랜드", "Ireland", "더블린", "Dublin", "europe"),
    ("belgium", "벨기에", "Belgium", "브뤼셀", "Brussels", "europe"),
    ("austria", "오스트리아", "Austria", "빈", "Vienna", "europe"),
    ("poland", "폴란드", "Poland", "바르샤바", "Warsaw", "europe"),
    ("czech-republic", "체코", "the Czech Republic", "프라하", "Prague", "europe"),
    ("hungary", "헝가리", "Hungary", "부다페스트", "Budapest", "europe"),
    ("greece", "그리스", "Greece", "아테네", "Athens", "europe"),
    ("sweden", "스웨덴", "Sweden", "스톡홀름", "Stockholm", "europe"),
    ("norway", "노르웨이", "Norway", "오슬로", "Oslo", "europe"),
    ("denmark", "덴마크", "Denmark", "코펜하겐", "Copenhagen", "europe"),
    ("finland", "핀란드", "Finland", "헬싱키", "Helsinki", "europe"),
    ("iceland", "아이슬란드", "Iceland", "레이캬비크", "Reykjavík", "europe"),
    ("romania", "루마니아", "Romania", "부쿠레슈티", "Bucharest", "europe"),
    ("bulgaria", "불가리아", "Bulgaria", "소피아", "Sofia", "europe"),
    ("serbia", "세르비아", "Serbia", "베오그라드", "Belgrade", "europe"),
    ("croatia", "크로아티아", "Croatia", "자그레브", "Zagreb", "europe"),
    ("ukraine", "우크라이나", "Ukraine", "키이우", "Kyiv", "europe"),
    ("russia", "러시아", "Russia", "모스크바", "Moscow", None),
    ("turkey", "튀르키예", "Turkey", "앙카라", "Ankara", None),
    ("south-korea", "대한민국", "South Korea", "서울", "Seoul", "asia"),
    ("japan", "일본", "Japan", "도쿄", "Tokyo", "asia"),
    ("china", "중국", "China", "베이징", "Beijing", "asia"),
    ("mongolia", "몽골", "Mongolia", "울란바토르", "Ulaanbaatar", "asia"),
    ("vietnam", "베트남", "Vietnam", "하노이", "Hanoi", "asia"),
    ("thailand", "태국", "Thailand", "방콕", "Bangkok", "asia"),
    ("philippines", "필리핀", "the Philippines", "마닐라", "Manila", "asia"),
    ("malaysia", "말레이시아", "Malaysia", "쿠알라룸푸르", "Kuala Lumpur", "asia"),
    ("laos", "라오스", "Laos", "비엔티안", "Vientiane", "asia"),
    ("cambodia", "캄보디아", "Cambodia", "프놈펜", "Phnom Penh", "asia"),
    ("india", "인도", "India", "뉴델리", "New Delhi", "asia"),
    ("pakistan", "파키스탄", "Pakistan", "이슬라마바드", "Islamabad", "asia"),
    ("bangladesh", "방글라데시", "Bangladesh", "다카", "Dhaka", "asia"),
    ("nepal", "네팔", "Nepal", "카트만두", "Kathmandu", "asia"),
    ("afghanistan", "아프가니스탄", "Afghanistan", "카불", "Kabul", "asia"),
    ("iran", "이란", "Iran", "테헤란", "Tehran", "asia"),
    ("iraq", "이라크", "Iraq", "바그다드", "Baghdad", "asia"),
    ("saudi-arabia", "사우디아라비아", "Saudi Arabia", "리야드", "Riyadh", "asia"),
    ("qatar", "카타르", "Qatar", "도하", "Doha", "asia"),
    ("jordan", "요르단", "Jordan", "암만", "Amman", "asia"),
    ("lebanon", "레바논", "Lebanon", "베이루트", "Beirut", "asia"),
    ("syria", "시리아", "Syria", "다마스쿠스", "Damascus", "asia"),
    ("egypt", "이집트", "Egypt", "카이로", "Cairo", "africa"),
    ("kenya", "케냐", "Kenya", "나이로비", "Nairobi", "africa"),
    ("nigeria", "나이지리아", "Nigeria", "아부자", "Abuja", "africa"),
    ("ethiopia", "에티오피아", "Ethiopia", "아디스아바바", "Addis Ababa", "africa"),
    ("morocco", "모로코", "Morocco", "라바트", "Rabat", "africa"),
    ("ghana", "가나", "Ghana", "아크라", "Accra", "africa"),
    ("algeria", "알제리", "Algeria", "알제", "Algiers", "africa"),
    ("tunisia", "튀니지", "Tunisia", "튀니스", "Tunis", "africa"),
    ("canada", "캐나다", "Canada", "오타와", "Ottawa", "north-america"),
    ("mexico", "멕시코", "Mexico", "멕시코시티", "Mexico City", "north-america"),
    ("cuba", "쿠바", "Cuba", "아바나", "Havana", "north-america"),
    ("brazil", "브라질", "Brazil", "브라질리아", "Brasília", "south-america"),
    ("argentina", "아르헨티나", "Argentina", "부에노스아이레스", "Buenos Aires", "south-america"),
    ("chile", "칠레", "Chile", "산티아고", "Santiago", "south-america"),
    ("peru", "페루", "Peru", "리마", "Lima", "south-america"),
    ("colombia", "콜롬비아", "Colombia", "보고타", "Bogotá", "south-america"),
    ("venezuela", "베네수엘라", "Venezuela", "카라카스", "Caracas", "south-america"),
    ("uruguay", "우루과이", "Uruguay", "몬테비데오", "Montevideo", "south-america"),
    ("paraguay", "파라과이", "Paraguay", "아순시온", "Asunción", "south-america"),
    ("ecuador", "에콰도르", "Ecuador", "키토", "Quito", "south-america"),
    ("australia", "호주", "Australia", "캔버라", "Canberra", None),
    ("new-zealand", "뉴질랜드", "New Zealand", "웰링턴", "Wellington", None),
]

# (English name = key, Korean name, symbol). Korean names follow current
# Korean chemistry usage; elements whose Korean name changed recently and is
# still taught both ways (sodium, potassium, titanium, iodine...) are left out.
ELEMENTS = [
    ("hydrogen", "수소", "H"),
    ("helium", "헬륨", "He"),
    ("lithium", "리튬", "Li"),
    ("beryllium", "베릴륨", "Be"),
    ("boron", "붕소", "B"),
    ("carbon", "탄소", "C"),
    ("nitrogen", "질소", "N"),
    ("oxygen", "산소", "O"),
    ("fluorine", "플루오린", "F"),
    ("neon", "네온", "Ne"),
    ("magnesium", "마그네슘", "Mg"),
    ("aluminium", "알루미늄", "Al"),
    ("silicon", "규소", "Si"),
    ("phosphorus", "인", "P"),
    ("sulfur", "황", "S"),
    ("chlorine", "염소", "Cl"),
    ("argon", "아르곤", "Ar"),
    ("calcium", "칼슘", "Ca"),
    ("iron", "철", "Fe"),
    ("cobalt", "코발트", "Co"),
    ("nickel", "니켈", "Ni"),
    ("copper", "구리", "Cu"),
    ("zinc", "아연", "Zn"),
    ("silver", "은", "Ag"),
    ("tin", "주석", "Sn"),
    ("tungsten", "텅스텐", "W"),
    ("platinum", "백금", "Pt"),
    ("gold", "금", "Au"),
    ("mercury", "수은", "Hg"),
    ("lead", "납", "Pb"),
    ("uranium", "우라늄", "U"),
]

# Operands for the arithmetic questions. Multiplication covers the classic
# 2-9 times table (each unordered pair once); addition mixes two-digit sums.
TIMES_TABLE = range(2, 10)
ADDENDS_LEFT = [14, 27, 38, 56, 73]
ADDENDS_RIGHT = [9, 16, 25, 48]

# (key, ko unit, en singular, en plural, target unit key, factor, quantities)
# Only exact, definitional conversions.
UNITS = [
    ("kilometer", "킬로미터", "kilometer", "kilometers", "meter", 1000, [1, 5]),
    ("meter", "미터", "meter", "meters", "centimeter", 100, [1, 3]),
    ("centimeter", "센티미터", "centimeter", "centimeters", "millimeter", 10, [1, 7]),
    ("kilogram", "킬로그램", "kilogram", "kilograms", "gram", 1000, [1, 2]),
    ("ton", "톤", "metric ton", "metric tons", "kilogram", 1000, [1]),
    ("liter", "리터", "liter", "liters", "milliliter", 1000, [1, 2]),
    ("hour", "시간", "hour", "hours", "minute", 60, [1, 3]),
    ("minute", "분", "minute", "minutes", "second", 60, [1, 5]),
    ("day", "일", "day", "days", "hour", 24, [1, 2]),
    ("week", "주", "week", "weeks", "day", 7, [1, 4]),
    ("foot", "피트", "foot", "feet", "inch", 12, [1, 3]),
    ("yard", "야드", "yard", "yards", "foot", 3, [1, 10]),
    ("century", "세기", "century", "centuries", "year", 100, [1]),
]

# Target units: key -> (Korean "how many ..." phrase, Korean unit, English plural).
# Korean asks "며칠" for days, never "몇 일", hence a whole phrase per unit.
UNIT_TARGETS = {
    "meter": ("몇 미터", "미터", "meters"),
    "centimeter": ("몇 센티미터", "센티미터", "centimeters"),
    "millimeter": ("몇 밀리미터", "밀리미터", "millimeters"),
    "gram": ("몇 그램", "그램", "grams"),
    "kilogram": ("몇 킬로그램", "킬로그램", "kilograms"),
    "milliliter": ("몇 밀리리터", "밀리리터", "milliliters"),
    "minute": ("몇 분", "분", "minutes"),
    "second": ("몇 초", "초", "seconds"),
    "hour": ("몇 시간", "시간", "hours"),
    "day": ("며칠", "일", "days"),
    "inch": ("몇 인치", "인치", "inches"),
    "foot": ("몇 피트", "피트", "feet"),
    "year": ("몇 년", "년", "years"),
}

MONTHS_EN = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]
# Days per month in a common year; February is handled on its own.
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

WEEKDAYS = [  # (Korean, English), Monday first
    ("월요일", "Monday"),
    ("화요일", "Tuesday"),
    ("수요일", "Wednesday"),
    ("목요일", "Thursday"),
    ("금요일", "Friday"),
    ("토요일", "Saturday"),
    ("일요일", "Sunday"),
]

# Hand-written facts about Korea: (key, ko question, ko answer, en question, en answer).
# Holidays are the public-holiday dates in South Korea.
KOREA_FACTS = [
    ("hangul-day",
     "한글날은 몇 월 며칠인가요?", "한글날은 10월 9일입니다.",
     "On what date is Hangul Day in South Korea?", "Hangul Day in South Korea is on October 9."),
    ("liberation-day",
     "광복절은 몇 월 며칠인가요?", "광복절은 8월 15일입니다.",
     "On what date is Liberation Day in South Korea?", "Liberation Day in South Korea is on August 15."),
    ("independence-movement-day",
     "삼일절은 몇 월 며칠인가요?", "삼일절은 3월 1일입니다.",
     "On what date is Independence Movement Day in South Korea?",
     "Independence Movement Day in South Korea is on March 1."),
    ("foundation-day",
     "개천절은 몇 월 며칠인가요?", "개천절은 10월 3일입니다.",
     "On what date is National Foundation Day in South Korea?",
     "National Foundation Day in South Korea is on October 3."),
    ("constitution-day",
     "제헌절은 몇 월 며칠인가요?", "제헌절은 7월 17일입니다.",
     "On what date is Constitution Day in South Korea?", "Constitution Day in South Korea is on July 17."),
    ("memorial-day",
     "현충일은 몇 월 며칠인가요?", "현충일은 6월 6일입니다.",
     "On what date is Memorial Day in South Korea?", "Memorial Day in South Korea is on June 6."),
    ("childrens-day",
     "어린이날은 몇 월 며칠인가요?", "어린이날은 5월 5일입니다.",
     "On what date is Children's Day in South Korea?", "Children's Day in South Korea is on May 5."),
    ("jeju-highest-mountain",
     "제주도에서 가장 높은 산은 무엇인가요?", "제주도에서 가장 높은 산은 한라산입니다.",
     "What is the highest mountain on Jeju Island?", "The highest mountain on Jeju Island is Hallasan."),
    ("largest-island",
     "대한민국에서 가장 큰 섬은 어디인가요?", "대한민국에서 가장 큰 섬은 제주도입니다.",
     "What is the largest island of South Korea?", "The largest island of South Korea is Jeju Island."),
    ("seoul-river",
     "서울을 가로질러 흐르는 큰 강은 무엇인가요?", "서울을 가로질러 흐르는 큰 강은 한강입니다.",
     "Which large river flows through Seoul?", "The Han River flows through Seoul."),
    ("national-flower",
     "대한민국의 국화는 무엇인가요?", "대한민국의 국화는 무궁화입니다.",
     "What is the national flower of South Korea?",
     "The national flower of South Korea is the rose of Sharon (mugunghwa)."),
    ("national-flag",
     "대한민국 국기의 이름은 무엇인가요?", "대한민국 국기의 이름은 태극기입니다.",
     "What is the South Korean flag called?", "The South Korean flag is called Taegeukgi."),
    ("national-anthem",
     "대한민국 국가의 이름은 무엇인가요?", "대한민국 국가의 이름은 애국가입니다.",
     "What is the national anthem of South Korea called?",
     "The national anthem of South Korea is called Aegukga."),
    ("currency",
     "대한민국의 화폐 단위는 무엇인가요?", "대한민국의 화폐 단위는 원입니다.",
     "What is the currency of South Korea?", "The currency of South Korea is the won."),
    ("alphabet-name",
     "한국어를 적는 고유 문자의 이름은 무엇인가요?", "한국어를 적는 고유 문자의 이름은 한글입니다.",
     "What is the Korean alphabet called?", "The Korean alphabet is called Hangul."),
    ("hangul-letters",
     "현대 한글의 기본 자모는 모두 몇 개인가요?", "현대 한글의 기본 자모는 모두 24개입니다.",
     "How many basic letters does modern Hangul have?", "Modern Hangul has 24 basic letters."),
    ("hangul-consonants",
     "현대 한글의 기본 자음은 몇 개인가요?", "현대 한글의 기본 자음은 14개입니다.",
     "How many basic consonants does modern Hangul have?", "Modern Hangul has 14 basic consonants."),
    ("hangul-vowels",
     "현대 한글의 기본 모음은 몇 개인가요?", "현대 한글의 기본 모음은 10개입니다.",
     "How many basic vowels does modern Hangul have?", "Modern Hangul has 10 basic vowels."),
]

# --------------------------------------------------------------------------
# Korean particles
# --------------------------------------------------------------------------

# Each particle pair: (form after a final consonant, form after a vowel).
PARTICLE_PAIRS = {
    "은": ("은", "는"), "는": ("은", "는"),
    "이": ("이", "가"), "가": ("이", "가"),
    "을": ("을", "를"), "를": ("을", "를"),
    "과": ("과", "와"), "와": ("과", "와"),
}

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
JONGSEONG_COUNT = 28  # 27 final consonants + "no final consonant"

# How a number is read aloud decides the particle after digits:
# last non-zero digit read in Sino-Korean (일, 이, 삼, ...) ...
DIGIT_HAS_FINAL = {
    "0": True, "1": True, "2": False, "3": True, "4": False,
    "5": False, "6": True, "7": True, "8": True, "9": False,
}
# ... or, for round numbers, the place word: 십, 백, 천, 만 all end in a consonant.
# (Beyond 만, 십만/백만/천만 still end in 만 and 억 ends in ㄱ.)


def has_final_consonant(word: str) -> bool:
    """True if `word` is read with a final consonant (받침) at its end.

    Handles Hangul syllables and Arabic numerals (read in Sino-Korean).
    Anything else raises, so a template never silently gets a wrong particle.
    """
    last = word.rstrip()[-1]
    if HANGUL_FIRST <= ord(last) <= HANGUL_LAST:
        return (ord(last) - HANGUL_FIRST) % JONGSEONG_COUNT != 0
    if last.isdigit():
        digits = word.rstrip().replace(",", "")
        trimmed = digits.rstrip("0")
        if not trimmed or trimmed == digits:
            # No trailing zeros (or the number 0 itself, 영): the last digit decides.
            return DIGIT_HAS_FINAL[digits[-1]]
        return True  # ends in 십/백/천/만/억
    raise ValueError(f"cannot choose a Korean particle after {word!r}")


def particle(word: str, which: str) -> str:
    """The form of particle `which` (any of 은/는, 이/가, 을/를, 과/와) after `word`."""
    after_consonant, after_vowel = PARTICLE_PAIRS[which]
    return after_consonant if has_final_consonant(word) else after_vowel


def with_particle(word: str, which: str) -> str:
    return word + particle(word, which)


# --------------------------------------------------------------------------
# Facts -> question/answer pairs
# --------------------------------------------------------------------------


class Fact(NamedTuple):
    category: str
    key: str
    ko_question: str
    ko_answer: str
    en_question: str
    en_answer: str
    # Facts that give each other away (Monday->Tuesday and Tuesday->Monday,
    # 1 km and 5 km in metres) share a group, and a group goes to one split.
    # Empty means the fact is its own group.
    group: str = ""


def sentence_case(text: str) -> str:
    """Capitalise only the first letter ("the Philippines ..." -> "The Philippines ...")."""
    return text[:1].upper() + text[1:]


def number(n: int) -> str:
    return f"{n:,}"


def capital_facts() -> Iterator[Fact]:
    for key, ko, en, capital_ko, capital_en, _ in COUNTRIES:
        yield Fact(
            "capital", key,
            f"{ko}의 수도는 어디인가요?", f"{ko}의 수도는 {capital_ko}입니다.",
            f"What is the capital of {en}?", f"The capital of {en} is {capital_en}.",
        )


def continent_facts() -> Iterator[Fact]:
    for key, ko, en, _, _, continent in COUNTRIES:
        if continent is None:
            continue
        continent_ko, continent_en = CONTINENTS[continent]
        topic = with_particle(ko, "은")
        yield Fact(
            "continent", key,
            f"{topic} 어느 대륙에 있나요?", f"{topic} {continent_ko}에 있습니다.",
            f"On which continent is {en}?", f"{sentence_case(en)} is in {continent_en}.",
        )


def element_facts() -> Iterator[Fact]:
    for en, ko, symbol in ELEMENTS:
        yield Fact(
            "element", en,
            f"{ko}의 원소 기호는 무엇인가요?", f"{ko}의 원소 기호는 {symbol}입니다.",
            f"What is the chemical symbol for {en}?", f"The chemical symbol for {en} is {symbol}.",
        )


def multiplication_facts() -> Iterator[Fact]:
    for a in TIMES_TABLE:
        for b in TIMES_TABLE:
            if b < a:
                continue  # one question per unordered pair
            b_topic = with_particle(str(b), "은")
            yield Fact(
                "multiplication", f"{a}-times-{b}",
                f"{a} 곱하기 {b_topic} 얼마인가요?", f"{a} 곱하기 {b_topic} {a * b}입니다.",
                f"What is {a} times {b}?", f"{a} times {b} is {a * b}.",
            )


def addition_facts() -> Iterator[Fact]:
    for a in ADDENDS_LEFT:
        for b in ADDENDS_RIGHT:
            b_topic = with_particle(str(b), "은")
            yield Fact(
                "addition", f"{a}-plus-{b}",
                f"{a} 더하기 {b_topic} 얼마인가요?", f"{a} 더하기 {b_topic} {a + b}입니다.",
                f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.",
            )


def unit_facts() -> Iterator[Fact]:
    for key, ko, en_one, en_many, target, factor, quantities in UNITS:
        how_many_ko, target_ko, target_en = UNIT_TARGETS[target]
        for qty in quantities:
            amount_ko = with_particle(f"{qty}{ko}", "은")
            en_unit = en_one if qty == 1 else en_many
            result = number(qty * factor)
            yield Fact(
                "unit", f"{key}-to-{target}-{qty}",
                f"{amount_ko} {how_many_ko}인가요?", f"{amount_ko} {result}{target_ko}입니다.",
                f"How many {target_en} are in {qty} {en_unit}?",
                f"{qty} {en_unit} is {result} {target_en}.",  # an amount takes "is"
                group=f"{key}-to-{target}",
            )


def calendar_facts() -> Iterator[Fact]:
    yield from month_length_facts()
    yield from weekday_facts()
    yield from month_order_facts()


def month_length_facts() -> Iterator[Fact]:
    for index, (name, days) in enumerate(zip(MONTHS_EN, MONTH_DAYS), start=1):
        ko_question = f"{index}월은 며칠까지 있나요?"
        en_question = f"How many days are in {name}?"
        if name == "February":
            ko_answer = "2월은 평년에는 28일, 윤년에는 29일까지 있습니다."
            en_answer = "February has 28 days, or 29 days in a leap year."
        else:
            ko_answer = f"{index}월은 {days}일까지 있습니다."
            en_answer = f"{name} has {days} days."
        yield Fact("calendar", f"days-in-{name.lower()}",
                   ko_question, ko_answer, en_question, en_answer)


def weekday_facts() -> Iterator[Fact]:
    for i, (ko, en) in enumerate(WEEKDAYS):
        next_ko, next_en = WEEKDAYS[(i + 1) % 7]
        prev_ko, prev_en = WEEKDAYS[(i - 1) % 7]
        yield Fact(
            "calendar", f"day-after-{en.lower()}",
            f"{ko} 다음 날은 무슨 요일인가요?", f"{ko} 다음 날은 {next_ko}입니다.",
            f"What day comes after {en}?", f"The day after {en} is {next_en}.",
        )
        yield Fact(
            "calendar", f"day-before-{en.lower()}",
            f"{ko} 전날은 무슨 요일인가요?", f"{ko} 전날은 {prev_ko}입니다.",
            f"What day comes before {en}?", f"The day before {en} is {prev_en}.",
            group=f"day-after-{prev_en.lower()}",  # the same fact read backwards
        )


def month_order_facts() -> Iterator[Fact]:
    for i, name in enumerate(MONTHS_EN):
        following = (i + 1) % 12
        yield Fact(
            "calendar", f"month-after-{name.lower()}",
            f"{i + 1}월 다음 달은 몇 월인가요?", f"{i + 1}월 다음 달은 {following + 1}월입니다.",
            f"Which month comes after {name}?", f"The month after {name} is {MONTHS_EN[following]}.",
        )


# The three letter counts give each other away (14 + 10 = 24).
KOREA_GROUPS = {"hangul-consonants": "hangul-letters", "hangul-vowels": "hangul-letters"}


def korea_facts() -> Iterator[Fact]:
    for key, ko_q, ko_a, en_q, en_a in KOREA_FACTS:
        yield Fact("korea", key, ko_q, ko_a, en_q, en_a, group=KOREA_GROUPS.get(key, ""))


FACT_SOURCES = [
    capital_facts, continent_facts, element_facts, multiplication_facts,
    addition_facts, unit_facts, calendar_facts, korea_facts,
]


def all_facts() -> list[Fact]:
    return [fact for source in FACT_SOURCES for fact in source()]


# --------------------------------------------------------------------------
# Split and output
# --------------------------------------------------------------------------

TEST_BUCKETS = 6  # about 1 fact in 6 goes to test


def split_of(fact: Fact) -> str:
    """'test' or 'train', from a stable hash of the fact's category and group.

    hashlib rather than hash(): Python salts str hashes per process.
    Hashing the fact (not the row) keeps its Korean and English versions
    together, so nothing in the test split is seen during training.
    """
    split_key = f"{fact.category}/{fact.group or fact.key}"
    digest = hashlib.sha256(split_key.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_BUCKETS == 0 else "train"


def rows_of(fact: Fact) -> list[dict[str, str]]:
    return [
        {"id": f"ko-{fact.category}-{fact.key}", "lang": "ko", "category": fact.category,
         "question": fact.ko_question, "answer": fact.ko_answer},
        {"id": f"en-{fact.category}-{fact.key}", "lang": "en", "category": fact.category,
         "question": fact.en_question, "answer": fact.en_answer},
    ]


def build_splits() -> dict[str, list[dict[str, str]]]:
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for fact in all_facts():
        splits[split_of(fact)].extend(rows_of(fact))
    return splits


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) for row in rows]
    # newline="" so the file is byte-identical on every platform.
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for train.jsonl and test.jsonl (default: next to this script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in build_splits().items():
        write_jsonl(args.out / f"{name}.jsonl", rows)
        print(f"{name}: {len(rows)} rows -> {args.out / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
