"""MathVista: the official normalisation exactly, the fast paths, the rule extractor, the judge hook."""

import math
import time

import numpy as np
import pytest

from rlsd_harness.benchmarks import mathvista
from rlsd_harness.benchmarks._common import BenchmarkError, levenshtein
from tests import benchmark_fixtures as fixtures

MC = {"pid": "5", "question_type": "multi_choice", "answer_type": "text", "choices": ["97", "102", "107", "122"],
      "precision": None, "unit": None, "answer": "97", "query": "Hint: ...\nQuestion: Find $m\\angle H$"}
DUP = dict(MC, pid="740", choices=["15", "100", "50", "50"], answer="50")
INT = {"pid": "2", "question_type": "free_form", "answer_type": "integer", "choices": None, "precision": None,
       "unit": "g", "answer": "1000", "query": "Question: volume? (Unit: g)"}
F1 = dict(INT, pid="31", answer_type="float", precision=1.0, unit=None, answer="1.2")
F2 = dict(INT, pid="479", answer_type="float", precision=2.0, unit=None, answer="2.54")
LIST = dict(INT, pid="225", answer_type="list", unit=None, answer="[2014, 2016]")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return mathvista.load(fixtures.write_mathvista(tmp_path_factory.mktemp("mv")), "testmini")


# ----------------------------------------------------------------------------- normalize (official)


@pytest.mark.parametrize(
    ("extraction", "expected"),
    [
        ("B", "102"),
        (" B ", "102"),
        ("(c) 107", "107"),  # "(X)" letter, upper-cased
        ("F", "97"),  # out of range: Levenshtein-nearest (97 at distance 2, others 3)
        ("", "97"),  # empty: nearest is the shortest choice
        ("a", "97"),  # lower-case letters are not option letters
        ("107.0", "107"),  # nearest text
    ],
)
def test_normalize_multiple_choice(extraction, expected):
    assert mathvista.normalize(extraction, MC) == expected


def test_normalize_empty_can_be_ignored_and_duplicates_map_by_letter():
    assert mathvista.normalize("", MC, ignore_empty_extractions=True) is None
    assert mathvista.normalize("C", DUP) == "50" and mathvista.normalize("D", DUP) == "50"


@pytest.mark.parametrize(
    ("extraction", "expected"),
    [("12.7", "12"), ("-3.9", "-3"), (" 7 ", "7"), ("1e3", "1000"), ("1,000", None), ("", None), (None, None),
     ("nan", None), ("inf", None)],
)
def test_normalize_integer_truncates(extraction, expected):
    assert mathvista.normalize(extraction, INT) == expected


@pytest.mark.parametrize(
    ("row", "extraction", "expected"),
    [
        (F1, "1.25", "1.2"),  # binary tie rounds to even
        (F1, "1.35", "1.4"),  # 1.35 is slightly above 1.35 in binary
        (F1, "1.2", "1.2"),
        (F2, "2.545", "2.54"),  # 2.545 is slightly below: the pid 479 gold
        (F2, "3", "3.0"),  # str(round(3.0, 2)) -- a "3.00" gold could never match
        (F2, "abc", None),
    ],
)
def test_normalize_float_rounds_to_precision(row, extraction, expected):
    assert mathvista.normalize(extraction, row) == expected


def test_normalize_float_precision_from_parquet_types():
    assert mathvista.normalize("1.26", dict(F1, precision=np.float64(1.0))) == "1.3"
    assert mathvista.normalize("1.26", dict(F1, precision=None)) is None
    assert mathvista.normalize("1.26", dict(F1, precision=math.nan)) is None


def test_normalize_list_is_str():
    assert mathvista.normalize([2014, 2016], LIST) == "[2014, 2016]"
    assert mathvista.normalize("[2014,2016]", LIST) == "[2014,2016]"


def _reference_distance(a: str, b: str) -> int:
    """The textbook Wagner-Fischer table, to check the library on random strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_levenshtein_hand_examples():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("abcdef", "azced") == 3  # b->z, delete d, f->d
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0
    assert levenshtein("√2π", "√3π") == 1  # characters, not bytes
    assert levenshtein("kitten sitting " * 50, "sitting kitten") == levenshtein("sitting kitten", "kitten sitting " * 50)


def test_levenshtein_matches_the_reference_on_random_strings():
    rng = np.random.default_rng(0)
    for _ in range(300):
        alphabet = rng.choice(["ab", "abcdef", "0123.,- ", "αβγ√π漢"])
        a, b = ("".join(rng.choice(list(alphabet), size=rng.integers(0, 30))) for _ in range(2))
        assert levenshtein(a, b) == _reference_distance(a, b), (a, b)


# ----------------------------------------------------------------------------- extraction and score


def test_fast_paths_come_first():
    assert mathvista.extract("97", MC) == ("97", "rules")
    assert mathvista.extract(" 1000 ", INT) == ("1000", "rules")  # int() accepts spaces
    assert mathvista.extract("1.20", F1) == ("1.2", "rules")  # str(float(x))
    assert mathvista.extract('Thus, The answer is "102".', MC) == ("102", "rules")  # quick extract


def test_rule_extractor():
    assert mathvista.score("Angle H equals 97 degrees, so the answer is (A) 97.", MC)["parsed"] == "97"
    assert mathvista.score("It holds exactly 1,000 g.", INT)["correct"] is True
    assert mathvista.score("The cup holds \\boxed{1000} grams.", INT)["correct"] is True
    assert mathvista.score("The total is 12.7 grams", INT)["parsed"] == "12"  # official truncation
    assert mathvista.score("x = 2.545", F2)["correct"] is True
    assert mathvista.score("The years are [2014,2016].", LIST)["parsed"] == "[2014, 2016]"
    assert mathvista.score("Final answer: C", DUP)["correct"] is True
    # An article "A" in an unlocated tail is not taken as a letter; the last choice text is.
    assert mathvista.score("A quick look shows the angle is 102", MC)["parsed"] == "102"


def test_empty_response_matches_the_shortest_choice_officially():
    out = mathvista.score("", MC)
    assert out == {"parsed": "97", "correct": True, "extraction": "", "extractor": "rules"}
    assert mathvista.score("", MC, mode="fixed")["correct"] is False
    assert mathvista.score("", INT)["parsed"] is None


def test_judge_hook():
    prompts = []

    def judge(text):
        prompts.append(text)
        return " B "

    out = mathvista.score("I think it is the second one", MC, judge=judge)
    assert out["extractor"] == "judge" and out["parsed"] == "102" and out["correct"] is False
    assert prompts[0].endswith(MC["query"] + "\n\nI think it is the second one\n\nExtracted answer: ")
    # A fast path answers before the judge is asked.
    assert mathvista.score("97", MC, judge=judge)["extractor"] == "rules" and len(prompts) == 1


@pytest.mark.parametrize("response", ["", "blah " * 200_000, "\\boxed{" * 100_000, "7" * 1_000_000])
def test_empty_and_huge_responses_are_scored(response):
    start = time.perf_counter()
    for row in (MC, INT, F2, LIST):
        assert isinstance(mathvista.score(response, row)["correct"], bool)
    assert time.perf_counter() - start < 10


def test_huge_extraction_normalizes():
    start = time.perf_counter()
    assert mathvista.normalize("x" * 1_000_000, MC) in MC["choices"]
    assert time.perf_counter() - start < 10


def test_bad_rows():
    with pytest.raises(BenchmarkError, match="mathvista: split None, row '5': multi_choice row without choices"):
        mathvista.score("A", dict(MC, choices=None))
    with pytest.raises(BenchmarkError, match="missing field 'answer'"):
        mathvista.score("A", {k: v for k, v in MC.items() if k != "answer"})


# ----------------------------------------------------------------------------- prompt and metrics


def test_prompt_is_the_query(rows):
    text, images = mathvista.prompt(rows[0])
    assert text == rows[0]["query"] and text.startswith("Hint: Please answer the question and provide the correct")
    assert len(images) == 1 and images[0].size == (8, 6)
    with pytest.raises(ValueError, match="valid: official, vlmevalkit"):
        mathvista.prompt(rows[0], "lmms")


def test_metrics_breakdowns(rows):
    # Fixture order: pid 5, 2, 479, 31, 225, 740.
    responses = ["(A)", "999", "2.545", "1.3", "[2014, 2016]", "C"]
    results = [mathvista.score(r, row) for r, row in zip(responses, rows)]
    assert [r["correct"] for r in results] == [True, False, True, False, True, True]
    m = mathvista.metrics(rows, results)
    assert (m["correct"], m["total"]) == (4, 6)
    assert m["question_type"]["multi_choice"] == {"accuracy": 1.0, "correct": 2, "total": 2}
    assert m["question_type"]["free_form"] == {"accuracy": 0.5, "correct": 2, "total": 4}
    assert m["skills"]["algebraic reasoning"] == {"accuracy": 1.0, "correct": 2, "total": 2}
    assert m["skills"]["statistical reasoning"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert m["language"]["chinese"]["total"] == 1 and m["language"]["english"]["correct"] == 3
    assert m["extractor"] == {"rules": 6}
