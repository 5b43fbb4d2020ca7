"""WeMath: the case-sensitive "Answer" split and the four-dimensional metrics (hand-computed)."""

import time

import pytest

from rlsd_harness.benchmarks import wemath
from rlsd_harness.benchmarks._common import BenchmarkError
from tests import benchmark_fixtures as fixtures


@pytest.mark.parametrize(
    ("response", "parsed"),
    [
        ("<Thought process>: add the lengths\n<Answer>: <<C>>.", "C"),
        ("Answer: D", "D"),
        ("Because OA is 300 m, ...", "B"),  # no "Answer": the first character of the whole response
        ("Hence the answer is B", "H"),
        ("The answer is B.", None),  # lower-case "answer" does not split
        ("**Answer:** B", None),
        ("Answer: (B)", None),
        ("ANSWER: B", "A"),
        ("Answer: the option is C", None),
        ("Answer A, not Answer: E", "E"),  # the last "Answer"
        ("Answer: e", None),
        ("", None),
        ("Answer", None),
        ("   G", "G"),
    ],
)
def test_parse_is_the_official_rule(response, parsed):
    assert wemath.parse(response) == parsed


def test_huge_response_is_parsed():
    start = time.perf_counter()
    assert wemath.parse("x" * 1_000_000 + "Answer: C") == "C"
    assert wemath.parse("<>:." * 250_000) is None
    assert time.perf_counter() - start < 5


def test_score_and_bad_row():
    row = {"ID": "2steps_1", "key": "2steps_1", "answer": "C"}
    assert wemath.score("<Answer>: C", row) == {"parsed": "C", "correct": True}
    assert wemath.score("", row) == {"parsed": None, "correct": False}
    with pytest.raises(BenchmarkError, match=r"wemath: split None, row '2steps_1': missing field 'answer'"):
        wemath.score("A", {"ID": "2steps_1", "key": "2steps_1"})


def _rows(problems):
    """Two-step problems from (S1, S2, M) flags: rows and results."""
    rows, results = [], []
    for i, flags in enumerate(problems):
        for part, flag in zip(("1", "2", "multi"), flags):
            rows.append({"ID": f"2steps_{i}", "key": f"2steps_{part}", "answer": "A", "knowledge concept": f"c{part}"})
            results.append({"correct": flag})
    return rows, results


def test_four_dimensions_on_complete_problems():
    problems = [
        (True, True, False),  # IG
        (False, False, False),  # IK
        (True, True, True),  # CM strict and loose
        (False, False, True),  # RM strict and loose
        (True, False, True),  # CM loose, RM strict
        (True, False, False),  # IK
    ]
    m = wemath.metrics(*_rows(problems))
    assert m["counts"] == {"IK": 2, "IG": 1, "CM_strict": 1, "CM_loose": 2, "RM_strict": 2, "RM_loose": 1}
    assert m["N"] == 6
    assert m["Score (Strict)"] == pytest.approx((6 - 0.5 * 1 - 2 - 2) / 6)  # 0.25
    assert m["Score (Loose)"] == pytest.approx((6 - 0.5 * 1 - 1 - 2) / 6)
    assert m["IK"] == pytest.approx(2 / 6) and m["IG"] == pytest.approx(1 / 6)
    assert m["CM (Strict)"] == pytest.approx(1 / 6) and m["CM (Loose)"] == pytest.approx(2 / 6)
    assert m["RM (Strict)"] == pytest.approx(2 / 3) and m["RM (Loose)"] == pytest.approx(1 / 3)
    assert m["S1"] == pytest.approx(6 / 12) and m["S2"] == pytest.approx(3 / 6) and m["S3"] is None
    assert m["by_concept"] == {"c1": pytest.approx(4 / 6), "c2": pytest.approx(2 / 6)}


def test_official_n_is_a_parameter():
    m = wemath.metrics(*_rows([(True, True, True)]), n=525)
    assert m["N"] == 525 and m["Score (Strict)"] == pytest.approx(1.0)  # (525 - 0) / 525
    m = wemath.metrics(*_rows([(True, True, False)]), n=525)
    assert m["Score (Strict)"] == pytest.approx((525 - 0.5) / 525)


def test_rm_rate_guards_zero_division():
    m = wemath.metrics(*_rows([(False, True, False)]))
    assert m["RM (Strict)"] is None and m["RM (Loose)"] is None and m["IK"] == 1.0


def test_fixture_with_a_missing_step(tmp_path):
    rows = wemath.load(fixtures.write_wemath(tmp_path), "testmini")
    assert len(rows) == 9 and rows[0]["_meta"]["revision"] == fixtures.REVISION
    text, images = wemath.prompt(rows[0])
    assert text.startswith("Now, we require you to solve a multiple-choice math question.\n")
    assert "\nOption: A. 300, 400;B. 400, 300;" in text and text.endswith("<Answer>:<<your option>>.")
    assert images[0].size == (8, 6)
    assert wemath.prompt(rows[0], "vlmevalkit")[0].endswith("Options:\nA. 300, 400\nB. 400, 300\n"
                                                           "C. 3000, 4000\nD. 4000, 3000\nE. No correct answer")
    # 2steps_1: S1 right, S2 right, M wrong (IG).  3steps_1: S1 right, S2 wrong, S3 right, M right (CM loose,
    # RM strict).  2steps_2: S1 wrong, no S2 row, M right: RM strict only (the missing S2 is neither
    # right nor wrong, so not "all wrong").
    responses = ["<Answer>: C", "Answer: A", "Answer: B", "Answer: B", "Answer: A", "Answer: A", "Answer: C",
                 "Answer: C", "Answer: B"]
    results = [wemath.score(r, row) for r, row in zip(responses, rows)]
    assert [r["correct"] for r in results] == [True, True, False, True, False, True, True, False, True]
    m = wemath.metrics(rows, results, concept_domains={"Angles": "Measurement", "Area of Triangles": "Measurement"})
    assert m["counts"] == {"IK": 0, "IG": 1, "CM_strict": 0, "CM_loose": 1, "RM_strict": 2, "RM_loose": 0}
    assert m["N"] == 3
    assert m["Score (Strict)"] == pytest.approx((3 - 0.5 - 2 - 0) / 3)
    assert m["Score (Loose)"] == pytest.approx((3 - 0.5 - 0 - 0) / 3)
    assert m["RM (Strict)"] == 1.0 and m["RM (Loose)"] == 0.0
    assert m["S1"] == pytest.approx(4 / 6) and m["S2"] == 0.5 and m["S3"] == 1.0
    assert m["by_concept"]["Angles"] == 0.5 and m["by_concept"]["Area of Triangles"] == 0.0
    assert m["by_domain"] == {"Measurement": 0.25}
