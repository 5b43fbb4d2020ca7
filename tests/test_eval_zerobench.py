"""ZeroBench: exact match on the last braces with no stripping inside, and pass@k / k/k metrics."""

import random
import re
import time

import pytest

from rlsd_harness.benchmarks import zerobench
from rlsd_harness.benchmarks._common import BenchmarkError
from tests import benchmark_fixtures as fixtures


def row(answer, qid="1"):
    return {"question_id": qid, "question_text": "q", "question_answer": answer}


@pytest.mark.parametrize(
    ("response", "answer", "correct"),
    [
        ("So I save {11.90}.", "11.90", True),
        ("{11.9}", "11.90", False),  # decimal formatting matters
        ("{ 11.90}", "11.90", False),  # no strip inside the braces
        ("{$11.90}", "11.90", False),
        ("{42.}", "42", False),
        ("First {3}, finally {7}", "7", True),  # the last braces
        ("\\boxed{7}", "7", True),  # a box is caught as braces
        ("{17}", "7", False),  # exact, not substring (VLMEvalKit would accept)
        ("{MONTELLIER}", "montellier", True),  # case-insensitive
        ("{11.90}", "11.90 ", True),  # the gold is stripped
        ("{11.\n90}", "11.90", False),  # braces across a newline never match
        ("11.90", "11.90", False),  # no braces: parsed is ''
        ("{\\frac{1}{2}}", "\\frac{1}{2}", False),  # nested braces parse as "2"
    ],
)
def test_official_exact_match(response, answer, correct):
    assert zerobench.score(response, row(answer))["correct"] is correct


def test_parse_examples():
    assert zerobench.parse("{\\frac{1}{2}}") == "2"
    assert zerobench.parse("{a{b}") == "a{b"
    assert zerobench.parse("  {X} \n") == "x"
    assert zerobench.parse("") == ""


def test_parse_equals_the_official_findall():
    rnd = random.Random(5)
    for _ in range(5000):
        s = "".join(rnd.choice("{}a1 \n.") for _ in range(rnd.randint(0, 16)))
        found = re.findall(r"\{(.*?)\}", s.strip().lower())
        assert zerobench.parse(s) == (found[-1] if found else ""), repr(s)


@pytest.mark.parametrize("response", ["", "{" * 1_000_000, "{a}" * 300_000, "x" * 1_000_000])
def test_empty_and_huge_responses_are_scored(response):
    start = time.perf_counter()
    assert isinstance(zerobench.score(response, row("7"))["correct"], bool)
    assert time.perf_counter() - start < 5


def test_prompts(tmp_path):
    root = fixtures.write_zerobench(tmp_path)
    rows = zerobench.load(root, "zerobench")
    q = rows[1]["question_text"]
    text, images = zerobench.prompt(rows[1])
    assert text == q + "\n\n\nLet's think step by step and give the final answer in curly braces, like this: {final answer}"
    assert len(images) == 2 and images[0].size == (8, 6)
    assert zerobench.prompt(rows[1], "vlmevalkit")[0] == (
        q + " \n\n\nLet's think step by step and give the final answer in curly braces,  like this: {final answer}"
    )
    assert zerobench.prompt(rows[1], "lmms_eval")[0] == q + "\nAnswer with only the final answer."
    with pytest.raises(ValueError, match="official, vlmevalkit, lmms_eval"):
        zerobench.prompt(rows[1], "inspect")


def test_bad_row():
    with pytest.raises(BenchmarkError, match=r"zerobench: split None, row '9': missing field 'question_answer'"):
        zerobench.score("{1}", {"question_id": "9"})


# ----------------------------------------------------------------------------- metrics


SAMPLES = {"1": [1, 0, 0, 0, 0], "2": [0, 0, 0, 0, 0], "3": [1, 1, 1, 1, 1]}


def test_pass_at_k_and_reliability_from_repeated_rows():
    rows, results = [], []
    for qid, flags in SAMPLES.items():
        for f in flags:
            rows.append(row("x", qid))
            results.append({"correct": bool(f)})
    m = zerobench.metrics(rows, results)
    assert m["questions"] == 3 and m["k"] == 5 and m["samples_per_question"] == 5
    assert m["pass@1"] == pytest.approx((0.2 + 0 + 1) / 3)
    assert m["pass@k"] == pytest.approx(2 / 3)
    assert m["k/k"] == pytest.approx(1 / 3)


def test_unbiased_estimators_when_n_exceeds_k():
    rows = [row("x", q) for q in SAMPLES]
    results = [[{"correct": bool(f)} for f in flags] for flags in SAMPLES.values()]
    m = zerobench.metrics(rows, results, k=2)
    # q1: 1 - C(4,2)/C(5,2) = 0.4; q2: 0; q3: 1.  All-2: q1 C(1,2)=0; q3 1.
    assert m["pass@k"] == pytest.approx(1.4 / 3)
    assert m["k/k"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="k=6"):
        zerobench.metrics(rows, results, k=6)


def test_greedy_single_sample_and_subquestion_grouping(tmp_path):
    root = fixtures.write_zerobench(tmp_path)
    rows = zerobench.load(root, "zerobench_subquestions")
    assert [r["question_id"] for r in rows] == ["1_1", "1_2", "2_1"]
    results = [zerobench.score(r, x) for r, x in zip(["{4}", "{2.1}", "{4}"], rows)]
    m = zerobench.metrics(rows, results, group_subquestions=True)
    assert m["pass@1"] == pytest.approx(2 / 3) and m["pass@k"] == pytest.approx(2 / 3)
    assert m["by_main_question"]["questions"] == 2
    assert m["by_main_question"]["pass@1"] == pytest.approx(0.5)  # main 1 needs both subquestions
