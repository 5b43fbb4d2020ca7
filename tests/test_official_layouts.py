"""The official repositories' file layouts (json/jsonl rows with image paths, MathVista's query.json),
missing images, and the two scorer defects: non-ASCII digits in MathVision's quick path and the
quadratic quick-extract regex of MathVista."""

import json
import random
import re
import time
import warnings
from pathlib import Path

import pytest

from rlsd_harness.benchmarks import mathvision, mathvista, wemath
from rlsd_harness.benchmarks._common import BenchmarkError
from rlsd_harness.benchmarks._symbolic import quick_value


def _image(path: Path, size=(9, 7), fmt="JPEG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 120, 200)).save(path, format=fmt)


MATHV_ROWS = [
    {"id": "4", "question": "How many different digits can you find in this picture?\n<image1>", "options": [],
     "answer": "6", "solution": None, "level": 1, "subject": "counting", "image": "images/4.jpg"},
    {"id": "6", "question": "In which picture can we see the kittens?\n<image1>", "options": ["A", "B", "C", "D", "E"],
     "answer": "D", "solution": None, "level": 3, "subject": "logic", "image": "images/6.jpg"},
]


def _mathv_repo(root: Path, with_images=("4", "6")) -> Path:
    """MATH-V's repository layout: `data/testmini.jsonl` beside `images/`, paths relative to the root."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "testmini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATHV_ROWS))
    for rid in with_images:
        _image(root / "images" / f"{rid}.jpg")
    return root


def test_mathvision_jsonl_image_paths_resolve_beside_data(tmp_path):
    root = _mathv_repo(tmp_path / "MATH-V")
    for source in (root, root / "data", root / "data" / "testmini.jsonl"):
        rows = mathvision.load(source, "testmini")
        text, images = mathvision.prompt(rows[0])
        assert text.endswith("How many different digits can you find in this picture?\n<image1>\n")
        assert [img.size for img in images] == [(9, 7)]
        assert rows[0]["image"] == "images/4.jpg"  # the official field is kept as written
        assert rows[0]["_meta"]["missing_images"] == 0


def test_missing_image_is_an_error_naming_row_and_path(tmp_path):
    root = _mathv_repo(tmp_path / "MATH-V", with_images=("4",))
    with pytest.raises(BenchmarkError, match=r"mathvision: split 'testmini', row '6': image 'decoded_image' "
                       r"missing: no file at .*images/6\.jpg.*allow_missing_images=True"):
        mathvision.load(root, "testmini")


def test_allow_missing_images_warns_with_a_count(tmp_path):
    root = _mathv_repo(tmp_path / "MATH-V", with_images=("4",))
    with pytest.warns(UserWarning, match=r"mathvision: split 'testmini': 1 of 2 rows have no image .*row '6'"):
        rows = mathvision.load(root, "testmini", allow_missing_images=True)
    assert rows[0]["_meta"]["missing_images"] == 1
    assert len(mathvision.prompt(rows[0])[1]) == 1 and mathvision.prompt(rows[1])[1] == []


def test_a_row_without_any_image_field_is_missing_its_image(tmp_path):
    root = tmp_path / "MATH-V"
    (root / "data").mkdir(parents=True)
    row = {k: v for k, v in MATHV_ROWS[0].items() if k != "image"}
    (root / "data" / "testmini.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(BenchmarkError, match=r"row '4': image 'decoded_image' missing: the row has no "
                       r"'decoded_image' or 'image' field"):
        mathvision.load(root, "testmini")


def test_wemath_missing_image_path_fails_at_load(tmp_path):
    root = tmp_path / "wemath"
    rows = [
        {"ID": "2steps_1", "key": "2steps_1", "question": "OA = ( ) m", "option": "A. 3;B. 4", "answer": "A",
         "image_path": "2steps/image/1-1.png"},
        {"ID": "2steps_1", "key": "2steps_2", "question": "AB = ( ) m", "option": "A. 3;B. 4", "answer": "B",
         "image_path": "2steps/image/1-2.png"},
    ]
    root.mkdir()
    (root / "testmini.json").write_text(json.dumps(rows))
    _image(root / "2steps" / "image" / "1-1.png", fmt="PNG")
    with pytest.raises(BenchmarkError, match=r"wemath: split 'testmini', row '2steps_1': image 'image_path' "
                       r"missing: no file at .*2steps/image/1-2\.png"):
        wemath.load(root, "testmini")
    _image(root / "2steps" / "image" / "1-2.png", fmt="PNG")
    loaded = wemath.load(root, "testmini")
    assert [len(wemath.prompt(r)[1]) for r in loaded] == [1, 1]


# ----------------------------------------------------------------------------- MathVista query.json

MV_ROWS = {
    "5": {"question": "Find $m\\angle H$", "image": "images/5.jpg", "choices": ["97", "102", "107", "122"],
          "unit": None, "precision": None, "answer": "97", "question_type": "multi_choice", "answer_type": "text",
          "pid": "5", "metadata": {"split": "testmini"}},
    "2": {"question": "what is the total volume of the measuring cup?", "image": "images/2.jpg", "choices": None,
          "unit": "g", "precision": None, "answer": "1000", "question_type": "free_form", "answer_type": "integer",
          "pid": "2", "metadata": {"split": "testmini"}},
    "31": {"question": "Is the value of Russia has the highest transport? ", "image": "images/31.jpg",
           "choices": None, "unit": None, "precision": 1, "answer": "1.2", "question_type": "free_form",
           "answer_type": "float", "pid": "31", "metadata": {"split": "testmini"}},
}
MV_REBUILT = {
    "5": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
         "Question: Find $m\\angle H$\nChoices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122",
    "2": "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
         "at the end.\nQuestion: what is the total volume of the measuring cup? (Unit: g)",
    "31": "Hint: Please answer the question requiring a floating-point number with one decimal place and provide "
          "the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: Is the value of Russia has the highest "
          "transport?",
}


def _mathvista_repo(root: Path, queries: dict | None) -> Path:
    """MathVista's repository layout: `data/testmini.json` ({pid: row}, no query), `data/query.json`,
    images unzipped into `data/images/`."""
    data = root / "data"
    data.mkdir(parents=True)
    (data / "testmini.json").write_text(json.dumps(MV_ROWS))
    if queries is not None:
        (data / "query.json").write_text(json.dumps(queries))
    for pid in MV_ROWS:
        _image(data / "images" / f"{pid}.jpg")
    return root


def test_mathvista_prompt_is_query_json_of_pid(tmp_path):
    official = {pid: f"official query of {pid}" for pid in ("5", "2")}  # "31" is absent: rebuilt
    rows = {r["pid"]: r for r in mathvista.load(_mathvista_repo(tmp_path / "MathVista", official), "testmini")}
    assert mathvista.prompt(rows["5"])[0] == "official query of 5"
    assert mathvista.prompt(rows["2"])[0] == "official query of 2"
    assert mathvista.prompt(rows["31"])[0] == MV_REBUILT["31"]
    assert [img.size for img in mathvista.prompt(rows["5"])[1]] == [(9, 7)]


def test_mathvista_query_rebuilt_without_query_json(tmp_path):
    rows = mathvista.load(_mathvista_repo(tmp_path / "MathVista", None) / "data", "testmini")
    assert {r["pid"]: mathvista.prompt(r)[0] for r in rows} == MV_REBUILT
    # A row handed in directly, without `query`, gets the same.
    assert mathvista.prompt({k: v for k, v in rows[0].items() if k != "query"})[0] == MV_REBUILT[rows[0]["pid"]]


def test_mathvista_rebuild_refuses_unknown_hints():
    with pytest.raises(BenchmarkError, match=r"row '31': no official hint for a float answer with precision 3 "
                       r"\(valid: 1, 2\)"):
        mathvista.build_query(dict(MV_ROWS["31"], precision=3))


# ----------------------------------------------------------------------------- MathVision ASCII digits


@pytest.mark.parametrize("digits", ["٣", "３", "৩"])  # Arabic-Indic, full-width, Bengali three
def test_mathvision_non_ascii_digits_are_not_numbers(digits):
    row = {"id": "7", "answer": "3", "options": [], "question": "q<image1>", "level": 1, "subject": "algebra"}
    assert quick_value(digits) == (False, None)
    out = mathvision.score(f"\\boxed{{{digits}}}", row)
    assert out["parsed"] == digits and out["correct"] is False  # latex2sympy cannot read it: an error, wrong
    assert mathvision.score("\\boxed{3}", row)["correct"] is True


def test_quick_value_still_covers_ascii():
    assert quick_value("-12") == (True, -12) and quick_value("2.50") == (True, 2.5)


# ----------------------------------------------------------------------------- MathVista quick extract


_OFFICIAL_QUICK = re.compile(r'The answer is "(.*)"\.')


def test_quick_extract_matches_the_official_regex():
    rng = random.Random(0)
    pieces = ['The answer is "', '".', '"', ".", "\n", "x", " ", "The answer is ", "\r", "é"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        m = _OFFICIAL_QUICK.search(text)
        assert mathvista.quick_extract_answer(text) == (m.group(1) if m else None), repr(text)
    for text in ['Thus, The answer is "102".', 'The answer is "A". The answer is "B".', 'The answer is "".']:
        assert mathvista.quick_extract_answer(text) == _OFFICIAL_QUICK.search(text).group(1)


MC = {"pid": "5", "question_type": "multi_choice", "answer_type": "text", "choices": ["97", "102", "107", "122"],
      "precision": None, "unit": None, "answer": "97", "query": "q"}
INT = {"pid": "2", "question_type": "free_form", "answer_type": "integer", "choices": None, "precision": None,
       "unit": "g", "answer": "1000", "query": "q"}


@pytest.mark.parametrize(
    "response",
    ['The answer is "' * 10_000, 'The answer is "x' * 9_375, 'The answer is "x' * 9_375 + '".',
     ('The answer is "' * 100 + "\n") * 99],
    ids=["openings", "openings-with-text", "closed-at-the-end", "many-lines"],
)
def test_quick_extract_is_fast_on_150kb(response):
    assert len(response) >= 148_000
    for row in (MC, INT):
        start = time.perf_counter()
        out = mathvista.score(response, row)
        elapsed = time.perf_counter() - start
        assert isinstance(out["correct"], bool)
        assert elapsed < 0.5, f"{elapsed:.2f} s on a {len(response)}-character response"
    if response.endswith('".'):
        assert mathvista.score(response, MC)["extraction"] == response[len('The answer is "'):-2]


def test_no_warning_when_every_image_is_there(tmp_path):
    root = _mathv_repo(tmp_path / "MATH-V")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mathvision.load(root, "testmini", allow_missing_images=True)
