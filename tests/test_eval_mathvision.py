"""MathVision: the official extraction quirks, is_equal semantics, and the safety of the symbolic step."""

import os
import time

import pytest

from rlsd_harness.benchmarks import mathvision
from rlsd_harness.benchmarks._common import BenchmarkError
from rlsd_harness.benchmarks._symbolic import SymbolicEvaluator, quick_value, safe_eval, symbolic_value
from tests import benchmark_fixtures as fixtures

WEEKDAY = {"id": "15", "answer": "A", "options": ["Wednesday", "Thursday", "Friday", "Tuesday", "Sunday"],
           "question": "Which weekday was that?\n<image1>", "level": 2, "subject": "arithmetic"}
IN_IMAGE = dict(WEEKDAY, id="21", options=["A", "B", "C", "D", "E"], answer="C")


def free(answer, rid="7"):
    return {"id": rid, "answer": answer, "options": [], "question": "q<image1>", "level": 1, "subject": "algebra"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return mathvision.load(fixtures.write_mathvision(tmp_path_factory.mktemp("mvis")), "test")


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\\boxed{\\text{Sunday}}", "{sunday}"),  # \text goes, its braces stay
        ("\\boxed{\\frac12}", "\\frac12"),  # _fix_fracs runs only when "sqrt" is present
        ("\\boxed{\\sqrt2/\\frac12}", "\\sqrt{2}/\\frac{1}{2}"),  # ... and then fixes both
        ("\\boxed{8 cm}", "8cm"),
        ("\\boxed{8 km}", "8"),
        ("The final answer is 12 apples. Done", "12apples"),
        ("First \\boxed{3}, then \\boxed{5}", "5"),  # the last box wins
        ("We get \\boxed{x = 2\\sqrt{2}}", "2\\sqrt{2}"),  # text after the last "="
        ("So it is (B).", "b"),
        ("B\nBecause the net folds that way.", "b"),
        ("The area is 25.", "25"),
        ("\\boxed{(C)}", "c"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{50%}", "50%"),  # only the escaped percent sign is removed
        ("\\boxed{3/4}", "\\frac{3}{4}"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("the answer should be 7\nand more", "7"),
        ("", ""),
    ],
)
def test_extract_answer(response, expected):
    assert mathvision.extract_answer(response) == expected


# ----------------------------------------------------------------------------- equality and score


def test_letter_and_option_text_golds():
    assert mathvision.score("The answer is A.", WEEKDAY)["correct"] is True
    assert mathvision.score("\\boxed{Wednesday}", WEEKDAY)["correct"] is True  # via the option text
    assert mathvision.score("\\boxed{\\text{Wednesday}}", WEEKDAY)["correct"] is False
    assert mathvision.score("\\boxed{B}", WEEKDAY)["correct"] is False
    assert mathvision.score("\\boxed{C}", IN_IMAGE)["correct"] is True


def test_numeric_equivalence_at_two_decimals():
    assert mathvision.score("\\boxed{12.57}", free("$4 \\pi$"))["correct"] is True
    assert mathvision.score("\\boxed{12.56}", free("$4 \\pi$"))["correct"] is False
    assert mathvision.score("\\boxed{2\\sqrt{2}}", free("2.83"))["correct"] is True
    assert mathvision.score("\\boxed{11}", free("11 "))["correct"] is True  # gold's trailing space
    assert mathvision.score("\\boxed{\\frac12}", free("\\frac{1}{2}"))["correct"] is False
    assert mathvision.score("\\boxed{8 km}", free("8"))["correct"] is True
    assert mathvision.score("\\boxed{8 cm}", free("8"))["correct"] is False
    assert mathvision.score("\\boxed{\\frac{36}{13}}", free("\x0crac{36}{13}"))["correct"] is False  # data artifact


def test_tuples_compare_element_values_as_strings():
    assert mathvision.score("\\boxed{(3, -4)}", free("(3,-4)"))["correct"] is True
    # eval_tuple turns "3.0" into "3.0" and "3" into "3": the strings differ and a tuple has no value.
    assert mathvision.score("\\boxed{(3.0,-4)}", free("(3,-4)"))["correct"] is False
    assert mathvision.score("\\boxed{(\\frac{6}{2},-4)}", free("(3,-4)"))["correct"] is True


def test_is_equal_basic_rules():
    assert mathvision.is_equal("  ", "  ") is False  # spaces only count as empty
    assert mathvision.is_equal("ABC", "abc") is True
    assert mathvision.is_equal("x", "y") is False


def test_quick_values_match_latex2sympy():
    cases = ["0", "7", "-4", "007", "-0", "3.0", "-0.0", "-0.001", "2.675", "0.125", "-0.5", "1.005",
             "12.345678901234", "0.000000000000001", "a", "e", "i", "z"]
    for s in cases:
        known, value = quick_value(s)
        assert known and str(value) == str(symbolic_value(s)), s
        assert type(value) is type(symbolic_value(s)), s


# ----------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo pwned')",
        "(1).__class__",
        "open('/etc/passwd')",
        "[1, 2]",
        "(3, -4)",
        "'abc'",
        "E",
        "x",
        "abs(-1)",  # builtins are not in scope
        "sqrt",
        "lambda: 1",
        "2**100000",
        "sqrt(x=4)",
    ],
)
def test_safe_eval_refuses_everything_but_arithmetic(text):
    with pytest.raises(Exception):  # noqa: B017 - any error is the point
        safe_eval(text)


def test_safe_eval_allows_math():
    assert safe_eval("2*sqrt(2)") == pytest.approx(2.8284271247)
    assert safe_eval("log(8, 2) + pi - e") == pytest.approx(3 + 3.14159265 - 2.71828183)
    assert safe_eval("-7 // 2 + 7 % 3 + 1/4") == -4 + 1 + 0.25
    assert safe_eval("True") is True


def test_adversarial_answers_neither_hang_nor_run_code(tmp_path):
    marker = tmp_path / "pwned"
    ev = SymbolicEvaluator()
    try:
        evil = f"\\boxed{{__import__('os').system('touch {marker}')}}"
        assert mathvision.score(evil, free("1"), evaluator=ev)["correct"] is False
        assert not marker.exists()
        # math.factorial(10**7) runs for a long time: the deadline kills the worker.
        start = time.perf_counter()
        out = mathvision.score("\\boxed{(10^{7})!}", free("3"), evaluator=ev, timeout=0.5)
        assert out == {"parsed": "(10^{7})!", "correct": False, "timed_out": True}
        assert time.perf_counter() - start < 30
        # The next item gets a fresh worker and scores normally.
        assert mathvision.score("\\boxed{\\frac{9}{3}}", free("3"), evaluator=ev)["correct"] is True
        assert ev.restarts == 2
    finally:
        ev.close()
    assert ev.proc is None


@pytest.mark.parametrize("response", ["", "word " * 200_000, "\\boxed{" * 100_000 + "}", "1" * 1_000_000])
def test_empty_and_huge_responses_are_scored(response):
    start = time.perf_counter()
    for row in (WEEKDAY, free("12")):
        out = mathvision.score(response, row, timeout=2.0)
        assert isinstance(out["correct"], bool)
    assert time.perf_counter() - start < 20


def test_bad_rows():
    with pytest.raises(BenchmarkError, match=r"mathvision: split None, row '15': gold 'Z' is not one of the option"):
        mathvision.score("A", dict(WEEKDAY, answer="Z"))
    with pytest.raises(BenchmarkError, match="row '7': missing field 'answer'"):
        mathvision.score("A", {"id": "7", "options": []})


# ----------------------------------------------------------------------------- prompt and metrics


def test_prompts(rows):
    weekday, in_image = rows[0], rows[1]
    text, images = mathvision.prompt(weekday)
    assert text == (
        'Please solve the problem step by step and put your answer in one "\\boxed{}". If it is a multiple choice '
        'question, only one letter is allowed in the "\\boxed{}".\n' + weekday["question"]
        + "\n(A) Wednesday\n(B) Thursday\n(C) Friday\n(D) Tuesday\n(E) Sunday\n"
    )
    assert len(images) == 1
    assert mathvision.prompt(in_image)[0].endswith(in_image["question"] + "\n")  # options drawn in the image
    direct = mathvision.prompt(in_image, "direct")[0]
    assert direct == in_image["question"] + "\n\nAnswer the question using a single word or phrase."
    lmms = mathvision.prompt(in_image, "lmms_eval")[0]
    assert lmms.startswith('Please solve the problem step by step and put your answer in one "\\boxed{}".Which')
    assert "\nChoices: A. A\nB. B" in lmms
    with pytest.raises(ValueError, match="official, direct, lmms_eval"):
        mathvision.prompt(weekday, "cot")


def test_metrics_by_level_and_subject(rows):
    responses = {"15": "\\boxed{A}", "21": "\\boxed{D}", "103": "\\boxed{11}", "400": "\\boxed{4\\pi}",
                 "512": "\\boxed{\\frac{36}{13}}", "777": "\\boxed{(3,-4)}", "901": "\\boxed{\\frac{16}{7}}"}
    results = [mathvision.score(responses[r["id"]], r) for r in rows]
    flags = {r["id"]: res["correct"] for r, res in zip(rows, results)}
    assert flags == {"15": True, "21": False, "103": True, "400": True, "512": False, "777": True, "901": True}
    m = mathvision.metrics(rows, results)
    assert (m["correct"], m["total"]) == (5, 7)
    # Levels: 1 -> ids 21 (F), 103 (T); 2 -> 15 (T); 3 -> 400 (T); 4 -> 777 (T), 901 (T); 5 -> 512 (F).
    assert m["by_level"]["level1"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert m["by_level"]["level4"]["accuracy"] == 1.0 and m["by_level"]["level5"]["accuracy"] == 0.0
    assert m["by_subject"]["metric geometry - area"]["correct"] == 0
    assert m["by_subject_level"]["counting_level1"]["correct"] == 1
    assert m["timed_out"] == 0


def test_worker_process_is_not_left_behind():
    ev = SymbolicEvaluator()
    ev.values(["\\frac{1}{3}"], time.monotonic() + 30)
    pid = ev.proc.pid
    ev.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
