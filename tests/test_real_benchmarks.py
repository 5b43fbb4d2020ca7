"""The real benchmark files, as the official repositories ship them, through the public loaders, prompts
and scorers: every row loads with its image, the official-variant prompts are the official ones, and the
model responses shipped with the official verdicts are re-scored to the same verdicts.

The files (MATH-V testmini with images and three models' graded responses, MathVista testmini with
query.json and two models' graded responses, We-Math testmini with images, MMMU example outputs) are
not part of the repository; these tests read them from REAL below and skip, naming it, when absent.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

from rlsd_harness.benchmarks import mathvision, mathvista, mmmu, wemath
from rlsd_harness.benchmarks._common import BenchmarkError

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-benchmarks"
pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"no real benchmark files: {REAL} does not exist"),
]

# Disagreements with the shipped official verdicts that a documented deviation explains:
# {(output file, row id): reason}. The test fails on any other disagreement, and on an entry here that
# no longer disagrees (so the list cannot go stale).
MATHVISION_DEVIATIONS = {
    ("Gemini-Pro-CoT.jsonl", "270"): (
        "gold option B is '$1080^{\\circ}$' and the model answered 1080: latex2sympy2_extended 1.11 reads "
        "`^{\\circ}` as degrees and values it 1080, the official latex2sympy2 1.9.1 fails on it, so the "
        "official verdict is wrong and ours right (benchmarks/mathvision.py documents the version swap)"
    ),
}
MATHVISION_TIMEOUT = 5.0  # seconds per item for the symbolic step; a timeout counts as a disagreement


def _agreement(name: str, same: int, total: int) -> str:
    return f"{name}: {same} / {total} agree ({100 * same / total:.2f} %)"


# ----------------------------------------------------------------------------- MATH-V


@pytest.fixture(scope="module")
def mathv_rows():
    return mathvision.load(REAL / "mathvision", "testmini")


def _mathv_official_prompt(row: dict) -> str:
    """The CoT prompt of MATH-V's GPT-4 / Qwen-VL inference scripts: the instruction, the question, then
    `(A) text` lines unless the options are the bare letters (options drawn in the image)."""
    options = list(row["options"])
    lines = "" if options in ([], ["A", "B", "C", "D", "E"]) else "".join(
        f"({letter}) {text}\n" for letter, text in zip("ABCDE", options)
    )
    return (
        'Please solve the problem step by step and put your answer in one "\\boxed{}". If it is a multiple '
        'choice question, only one letter is allowed in the "\\boxed{}".\n' + f"{row['question']}\n{lines}"
    )


def test_mathvision_rows_images_and_official_prompts(mathv_rows):
    assert len(mathv_rows) == 304 and len({r["id"] for r in mathv_rows}) == 304
    same = 0
    for row in mathv_rows:
        text, images = mathvision.prompt(row)
        assert len(images) == 1 and min(images[0].size) > 0, row["id"]
        same += text == _mathv_official_prompt(row)
    assert same == 304


@pytest.mark.parametrize("model", ["Gemini-Pro-CoT.jsonl", "LLaVA-v1.5-7B.jsonl", "Qwen-VL-Max.jsonl"])
def test_mathvision_verdicts_match_official(mathv_rows, model, real_data_report):
    by_id = {r["id"]: r for r in mathv_rows}
    outputs = [json.loads(line) for line in (REAL / "mathvision" / "outputs" / model).read_text().splitlines()]
    assert len(outputs) == 304
    disagree, extracted, timed_out = {}, 0, 0
    start = time.perf_counter()
    for out in outputs:
        got = mathvision.score(out["response"], by_id[out["id"]], timeout=MATHVISION_TIMEOUT)
        extracted += got["parsed"] == out["model_answer"]
        timed_out += got["timed_out"]
        if got["correct"] != out["correct"]:
            disagree[(model, out["id"])] = (out["model_answer"], out["correct"], got["correct"])
    elapsed = time.perf_counter() - start
    real_data_report(
        f"MATH-V {_agreement(model, len(outputs) - len(disagree), len(outputs))}; extraction "
        f"{extracted} / {len(outputs)}; {timed_out} timed out; {elapsed:.1f} s"
        + "".join(f"\n    allowed {key[1]}: {MATHVISION_DEVIATIONS[key][:90]}..." for key in disagree
                  if key in MATHVISION_DEVIATIONS)
    )
    assert extracted == len(outputs)  # the official extraction is deterministic: it must match exactly
    unexplained = {k: v for k, v in disagree.items() if k not in MATHVISION_DEVIATIONS}
    assert not unexplained, f"verdicts differ from the official ones (model answer, official, ours): {unexplained}"
    stale = [k for k in MATHVISION_DEVIATIONS if k[0] == model and k not in disagree]
    assert not stale, f"allow-listed deviations that now agree: {stale}"


# ----------------------------------------------------------------------------- MathVista


@pytest.fixture(scope="module")
def mathvista_rows():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = mathvista.load(REAL / "mathvista", "testmini", allow_missing_images=True)
    return rows, [str(w.message) for w in caught]


def test_mathvista_images_are_missing_and_said_so(mathvista_rows):
    # The official repository ships no images (they are a separate download): an error by default ...
    with pytest.raises(BenchmarkError, match=r"mathvista: split 'testmini', row '1': image 'decoded_image' "
                       r"missing: no file at .*data/images/1\.jpg.*\(999 more row\(s\) too\)"):
        mathvista.load(REAL / "mathvista", "testmini")
    # ... and with allow_missing_images one warning that counts them.
    rows, messages = mathvista_rows
    assert [m for m in messages if "1000 of 1000 rows have no image" in m]
    assert rows[0]["_meta"]["missing_images"] == 1000 and all(mathvista.prompt(r)[1] == [] for r in rows)


def test_mathvista_prompts_are_query_json(mathvista_rows):
    rows, _ = mathvista_rows
    queries = json.loads((REAL / "mathvista" / "data" / "query.json").read_text(encoding="utf-8"))
    assert len(rows) == 1000
    assert sum(mathvista.prompt(r)[0] == queries[r["pid"]] for r in rows) == 1000
    # The rebuilt query (used where no query.json is beside the data) is the official one too.
    assert sum(mathvista.build_query(r) == queries[r["pid"]] for r in rows) == 1000


@pytest.mark.parametrize("model", ["output_bard.json", "output_llava_llama_2_13b.json"])
def test_mathvista_verdicts_match_official(mathvista_rows, model, real_data_report):
    """The official extraction is a GPT-4 call; its stored `extraction` is handed in as the judge, so
    the fast paths, normalisation and comparison are the project's and the verdict must be the official
    `true_false` on every row. The rule-based extractor's agreement is reported for information."""
    rows = {r["pid"]: r for r in mathvista_rows[0]}
    results = json.loads((REAL / "mathvista" / "results" / model).read_text(encoding="utf-8"))
    assert len(results) == 1000
    disagree, rules_same, prediction_same = [], 0, 0
    for pid, res in results.items():
        row = rows[pid]
        got = mathvista.score(res["response"], row, judge=lambda _prompt, e=res["extraction"]: e)
        if got["correct"] != res["true_false"]:
            disagree.append((pid, res["extraction"], res["true_false"], got["correct"]))
        if got["parsed"] == res["prediction"]:
            prediction_same += 1
        else:
            # Only where the stored prediction came from an older official normalisation, `int(x)`,
            # which gave None for a decimal extraction of an integer answer; the current one is
            # `int(float(x))`. Both are wrong against the gold, so the verdict is the same.
            assert res["prediction"] is None and row["answer_type"] == "integer", (pid, res, got)
            assert got["parsed"] == str(int(float(res["extraction"]))) and got["parsed"] != row["answer"]
        rules_same += mathvista.score(res["response"], row)["correct"] == res["true_false"]
    real_data_report(
        f"MathVista {_agreement(model, 1000 - len(disagree), 1000)} (official extraction as judge); "
        f"prediction {prediction_same} / 1000; rule extractor alone {rules_same} / 1000 (information)"
    )
    assert not disagree, f"verdicts differ (pid, extraction, official, ours): {disagree[:20]}"


# ----------------------------------------------------------------------------- We-Math

_WEMATH_REQUIREMENT = (
    "Regarding the format, please answer following the template below, and be sure to include two <> symbols:",
    "<Thought process>:<<your thought process>>",
    "<Answer>:<<your option>>.",
)


def test_wemath_rows_images_prompts_and_groups():
    rows = wemath.load(REAL / "wemath", "testmini")
    assert len(rows) == 1740 and len({(r["ID"], r["key"]) for r in rows}) == 1740
    same = 0
    for row in rows:
        text, images = wemath.prompt(row)
        assert len(images) == 1 and min(images[0].size) > 0, (row["ID"], row["key"])
        official = "\n".join((
            "Now, we require you to solve a multiple-choice math question.",
            "Please briefly describe your thought process and provide the final answer(option).",
            f"Question: {row['question']}", f"Option: {row['option']}", *_WEMATH_REQUIREMENT,
        ))
        same += text == official
    assert same == 1740
    # The gold letters as responses, in the official answer template, score every row right, and the
    # one-step / multi-step groups of the real file are the 525 composite problems of the official N.
    results = [wemath.score(f"<Thought process>: ... <Answer>: {r['answer']}", r) for r in rows]
    assert all(r["correct"] for r in results)
    m = wemath.metrics(rows, results)
    assert m["N"] == wemath.FULL_N == 525
    assert m["Score (Strict)"] == 1.0 and m["counts"]["CM_strict"] == 525 and m["S1"] == 1.0


# ----------------------------------------------------------------------------- MMMU


def test_mmmu_example_outputs_score(real_data_report):
    """MMMU's repository ships responses but no verdicts and no question rows (those are on the hub
    only), so there is no official verdict to agree with: every response is scored from rows rebuilt from
    `answer` / `index2ans`, MC answers parse to a listed letter, and the accuracy is reported."""
    files = sorted((REAL / "mmmu" / "example_outputs" / "qwen_vl").glob("*/output.json"))
    assert len(files) == 30 and sorted(f.parent.name for f in files) == mmmu.SUBJECTS
    rng = mmmu.new_rng()
    rows, results = [], []
    for path in files:
        for out in json.loads(path.read_text(encoding="utf-8")):
            row = {"id": out["id"], "question_type": out["question_type"], "answer": out["answer"],
                   "question": "", "options": str([out["index2ans"][c] for c in out["all_choices"]])
                   if out["question_type"] == "multiple-choice" else "[]"}
            got = mmmu.score(out["response"], row, rng=rng)
            if mmmu.is_multiple_choice(row):
                assert got["parsed"] in out["all_choices"], (out["id"], got)
            rows.append(row)
            results.append(got)
    m = mmmu.metrics(rows, results)
    assert m["total"] == 900 and m["by_question_type"]["multiple-choice"]["total"] == 847
    real_data_report(
        f"MMMU qwen_vl example outputs: {m['correct']} / 900 correct ({100 * m['accuracy']:.2f} %), "
        f"{m['random_fallbacks']} random fallbacks; no official verdicts ship with these files to compare"
    )
