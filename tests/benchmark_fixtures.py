"""Small local copies of the five benchmarks in their official HF schemas, for tests and demos.

`write_all(folder)` writes one folder per benchmark and returns {name: path}; each `load()` reads
them with no network. Layouts follow the hub repositories: MMMU per-subject folders of parquet,
MathVista and MathVision `data/<split>-00000-of-00001.parquet` (with a `test` file beside `testmini`
so that split matching is exercised), ZeroBench an arrow stream in a `save_to_disk`-style folder plus
a parquet file, WeMath a `testmini.jsonl` whose `image_path` is a relative PNG path. Images are real
PNGs made with Pillow. The rows are made up but carry the tricky cases of each official scorer (see the
benchmark modules' docstrings).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

REVISION = "fixture-0001"


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 6)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _img(color: tuple[int, int, int], name: str) -> dict:
    return {"bytes": png_bytes(color), "path": name}


def _write_parquet(path: Path, rows: list[dict], features: Any) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), path)
    return path


def _write_arrow_stream(path: Path, rows: list[dict], features: Any) -> Path:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


# ----------------------------------------------------------------------------- MMMU

MMMU_ROWS: list[dict] = [
    {
        "id": "validation_Accounting_1",
        "question": "<image 1> Baxter Company has a relevant range of production between 15,000 and 30,000 units. "
        "If 30,000 units are produced, what are the per unit manufacturing overhead costs incurred?",
        "options": "['$6', '$7', '$8', '$9']",
        "answer": "B",
        "question_type": "multiple-choice",
        "subfield": "Managerial Accounting",
        "img_type": "['Tables']",
        "topic_difficulty": "Medium",
        "explanation": "",
        "images": [1],
    },
    {
        "id": "validation_Art_3",
        "question": "Compare <image 2> with <image 1>. Which one is older?",
        "options": "['<image 1>', '<image 2>', 'Same age', 'Unknown']",
        "answer": "A",
        "question_type": "multiple-choice",
        "subfield": "Art History",
        "img_type": "['Paintings']",
        "topic_difficulty": "Easy",
        "explanation": "",
        "images": [1, 2],
    },
    {
        "id": "validation_Math_15",
        "question": "<image 1> What is the ratio of the two areas?",
        "options": "[]",
        "answer": "['24/7', '3.429']",
        "question_type": "short-answer",
        "subfield": "Geometry",
        "img_type": "['Geometric Shapes']",
        "topic_difficulty": "Hard",
        "explanation": "",
        "images": [1],
    },
    {
        "id": "validation_Geography_4",
        "question": "<image 1> Which city is marked on the map?",
        "options": "[]",
        "answer": "['Tampa', 'Florida']",
        "question_type": "open",
        "subfield": "Human Geography",
        "img_type": "['Maps']",
        "topic_difficulty": "Easy",
        "explanation": "",
        "images": [1],
    },
    {
        "id": "validation_Biology_2",
        "question": "<image 1> Which label marks the nucleus?",
        "options": "[]",
        "answer": "C",
        "question_type": "open",
        "subfield": "Cell Biology",
        "img_type": "['Diagrams']",
        "topic_difficulty": "Medium",
        "explanation": "",
        "images": [1],
    },
    {
        "id": "validation_Physics_7",
        "question": "<image 1> What is the current in amperes?",
        "options": "[]",
        "answer": "1.06",
        "question_type": "open",
        "subfield": "Electromagnetism",
        "img_type": "['Diagrams']",
        "topic_difficulty": "Medium",
        "explanation": "",
        "images": [1],
    },
]


def _mmmu_features():
    from datasets import Features, Image, Value

    cols = {
        "id": Value("string"), "question": Value("string"), "options": Value("string"),
        "explanation": Value("string"),
    }
    cols.update({f"image_{i}": Image() for i in range(1, 8)})
    for name in ("img_type", "answer", "topic_difficulty", "question_type", "subfield"):
        cols[name] = Value("string")
    return Features(cols)


def write_mmmu(folder: Path) -> Path:
    root = Path(folder) / "mmmu"
    features = _mmmu_features()
    colors = {1: (250, 0, 0), 2: (0, 0, 250)}
    by_subject: dict[str, list[dict]] = {}
    for spec in MMMU_ROWS:
        row = {k: v for k, v in spec.items() if k != "images"}
        for i in range(1, 8):
            row[f"image_{i}"] = _img(colors[i], f"{spec['id']}_{i}.png") if i in spec["images"] else None
        subject = "_".join(spec["id"].split("_")[1:-1])
        by_subject.setdefault(subject, []).append(row)
    for subject, rows in by_subject.items():
        _write_parquet(root / subject / "validation-00000-of-00001.parquet", rows, features)
    dev = dict(by_subject["Accounting"][0], id="dev_Accounting_1")
    _write_parquet(root / "Accounting" / "dev-00000-of-00001.parquet", [dev], features)
    (root / "REVISION").write_text(REVISION + "\n")
    return root


# ----------------------------------------------------------------------------- MathVista


def _meta(**kw: Any) -> dict:
    base = {
        "category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school",
        "img_height": 6, "img_width": 8, "language": "english", "skills": ["geometry reasoning"],
        "source": "Geometry3K", "split": "testmini", "task": "geometry problem solving",
    }
    base.update(kw)
    return base


_MC_HINT = "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
_INT_HINT = (
    "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end."
)
_F1_HINT = (
    "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final "
    "value, e.g., 1.2, 1.3, 1.4, at the end."
)
_F2_HINT = (
    "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final "
    "value, e.g., 1.23, 1.34, 1.45, at the end."
)
_LIST_HINT = (
    "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
    "[1, 2, 3], [1.2, 1.3, 1.4], at the end."
)


def _mc_query(question: str, choices: list[str]) -> str:
    block = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return f"{_MC_HINT}\nQuestion: {question}\nChoices:\n{block}"


MATHVISTA_ROWS: list[dict] = [
    {
        "pid": "5", "question": "Find $m\\angle H$", "choices": ["97", "102", "107", "122"], "unit": None,
        "precision": None, "answer": "97", "question_type": "multi_choice", "answer_type": "text",
        "metadata": _meta(skills=["geometry reasoning", "algebraic reasoning"]),
    },
    {
        "pid": "2", "question": "what is the total volume of the measuring cup?", "choices": None, "unit": "g",
        "precision": None, "answer": "1000", "question_type": "free_form", "answer_type": "integer",
        "metadata": _meta(category="general-vqa", context="natural image", source="VQA2.0",
                          task="visual question answering", skills=["numeric commonsense"], grade="daily life"),
    },
    {
        "pid": "479", "question": "What is the value of x?", "choices": None, "unit": None, "precision": 2.0,
        "answer": "2.54", "question_type": "free_form", "answer_type": "float",
        "metadata": _meta(skills=["algebraic reasoning"]),
    },
    {
        "pid": "31", "question": "What is the average of the bars?", "choices": None, "unit": None, "precision": 1.0,
        "answer": "1.2", "question_type": "free_form", "answer_type": "float",
        "metadata": _meta(category="general-vqa", context="bar chart", source="ChartQA", task="figure question answering",
                          skills=["statistical reasoning"], language="english"),
    },
    {
        "pid": "225", "question": "Which years had the two highest values?", "choices": None, "unit": None,
        "precision": None, "answer": "[2014, 2016]", "question_type": "free_form", "answer_type": "list",
        "metadata": _meta(context="line plot", source="FigureQA", task="figure question answering",
                          skills=["statistical reasoning"]),
    },
    {
        "pid": "740", "question": "What is the measure of the angle?", "choices": ["15", "100", "50", "50"],
        "unit": None, "precision": None, "answer": "50", "question_type": "multi_choice", "answer_type": "text",
        "metadata": _meta(language="chinese", source="GeoQA+"),
    },
]


def _mathvista_query(row: dict) -> str:
    q = row["question"] + (f" (Unit: {row['unit']})" if row["unit"] else "")
    if row["question_type"] == "multi_choice":
        return _mc_query(q, row["choices"])
    hint = {"integer": _INT_HINT, "list": _LIST_HINT}.get(row["answer_type"])
    if hint is None:
        hint = _F1_HINT if row["precision"] == 1.0 else _F2_HINT
    return f"{hint}\nQuestion: {q}"


def write_mathvista(folder: Path) -> Path:
    from datasets import Features, Image, List, Value

    root = Path(folder) / "mathvista"
    meta = {
        "category": Value("string"), "context": Value("string"), "grade": Value("string"),
        "img_height": Value("int64"), "img_width": Value("int64"), "language": Value("string"),
        "skills": List(Value("string")), "source": Value("string"), "split": Value("string"),
        "task": Value("string"),
    }
    features = Features({
        "pid": Value("string"), "question": Value("string"), "image": Value("string"),
        "decoded_image": Image(), "choices": List(Value("string")), "unit": Value("string"),
        "precision": Value("float64"), "answer": Value("string"), "question_type": Value("string"),
        "answer_type": Value("string"), "metadata": meta, "query": Value("string"),
    })
    rows = []
    for spec in MATHVISTA_ROWS:
        row = dict(spec, image=f"images/{spec['pid']}.jpg", decoded_image=_img((0, 120, 0), f"{spec['pid']}.png"))
        row["query"] = _mathvista_query(spec)
        rows.append(row)
    _write_parquet(root / "data" / "testmini-00000-of-00001-0123abcd.parquet", rows, features)
    test_row = dict(rows[0], pid="1001", answer="", metadata=_meta(split="test"))
    _write_parquet(root / "data" / "test-00000-of-00001-4567ef01.parquet", [test_row], features)
    (root / "REVISION").write_text(REVISION + "\n")
    return root


# ----------------------------------------------------------------------------- MathVision

MATHVISION_ROWS: list[dict] = [
    {
        "id": "15", "question": "Emily celebrated her birthday on Thursday, and her sister Liepa 8 days earlier. "
        "Which weekday was that?\n<image1>", "options": ["Wednesday", "Thursday", "Friday", "Tuesday", "Sunday"],
        "answer": "A", "solution": None, "level": 2, "subject": "arithmetic",
    },
    {
        "id": "21", "question": "Which of the pictures shows the folded net?\n<image1>",
        "options": ["A", "B", "C", "D", "E"], "answer": "C", "solution": None, "level": 1,
        "subject": "descriptive geometry",
    },
    {
        "id": "103", "question": "How many dots are hidden?\n<image1>", "options": [], "answer": "11 ",
        "solution": None, "level": 1, "subject": "counting",
    },
    {
        "id": "400", "question": "What is the circumference of the circle?\n<image1>", "options": [],
        "answer": "$4 \\pi$", "solution": "The radius is 2.", "level": 3, "subject": "metric geometry - length",
    },
    {
        "id": "512", "question": "Find the ratio of the areas.\n<image1>", "options": [],
        "answer": "\x0crac{36}{13}", "solution": None, "level": 5, "subject": "metric geometry - area",
    },
    {
        "id": "777", "question": "Where does the point land?\n<image1>", "options": [], "answer": "(3,-4)",
        "solution": None, "level": 4, "subject": "analytic geometry",
    },
    {
        "id": "901", "question": "What fraction is shaded?\n<image1>", "options": [],
        "answer": "$\\boxed{\\frac{16}{7}}$", "solution": None, "level": 4, "subject": "algebra",
    },
]


def write_mathvision(folder: Path) -> Path:
    from datasets import Features, Image, List, Value

    root = Path(folder) / "mathvision"
    features = Features({
        "id": Value("string"), "question": Value("string"), "options": List(Value("string")),
        "image": Value("string"), "decoded_image": Image(), "answer": Value("string"),
        "solution": Value("string"), "level": Value("int64"), "subject": Value("string"),
    })
    rows = [
        dict(spec, image=f"images/{spec['id']}.jpg", decoded_image=_img((30, 30, 200), f"{spec['id']}.png"))
        for spec in MATHVISION_ROWS
    ]
    _write_parquet(root / "data" / "test-00000-of-00001.parquet", rows, features)
    _write_parquet(root / "data" / "testmini-00000-of-00001.parquet", rows[:2], features)
    (root / "REVISION").write_text(REVISION + "\n")
    return root


# ----------------------------------------------------------------------------- ZeroBench

ZEROBENCH_ROWS: list[dict] = [
    {"question_id": "1", "question_text": "How much do I save with a loyalty card? Give your final answer in dollars.",
     "question_answer": "11.90", "n_images": 1},
    {"question_id": "2", "question_text": "How many squares are there in total?", "question_answer": "7",
     "n_images": 2},
    {"question_id": "3", "question_text": "What fraction of the grid is shaded?", "question_answer": "\\frac{1}{2}",
     "n_images": 1},
]
ZEROBENCH_SUB_ROWS: list[dict] = [
    {"question_id": "1_1", "question_text": "How many Montellier bottles are on the top shelf?",
     "question_answer": "4", "n_images": 1},
    {"question_id": "1_2", "question_text": "What is the loyalty price of one bottle?", "question_answer": "2.15",
     "n_images": 1},
    {"question_id": "2_1", "question_text": "How many small squares are there?", "question_answer": "4",
     "n_images": 2},
]


def write_zerobench(folder: Path) -> Path:
    from datasets import Features, Image, List, Value

    root = Path(folder) / "zerobench"
    features = Features({
        "question_id": Value("string"), "question_text": Value("string"),
        "question_images_decoded": List(Image()), "question_answer": Value("string"),
        "question_images": List(Value("string")), "image_attribution": Value("string"),
    })

    def build(specs: list[dict]) -> list[dict]:
        rows = []
        for spec in specs:
            names = [f"images/{spec['question_id']}_{i}.png" for i in range(spec["n_images"])]
            imgs = [_img((40 * i, 200, 40), n) for i, n in enumerate(names)]
            row = {k: v for k, v in spec.items() if k != "n_images"}
            rows.append(dict(row, question_images_decoded=imgs, question_images=names, image_attribution="Own"))
        return rows

    # `save_to_disk` layout for the main split (an arrow stream), hub parquet for the subquestions.
    _write_arrow_stream(root / "zerobench" / "data-00000-of-00001.arrow", build(ZEROBENCH_ROWS), features)
    (root / "zerobench" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    _write_parquet(root / "data" / "zerobench_subquestions-00000-of-00001.parquet", build(ZEROBENCH_SUB_ROWS), features)
    (root / "REVISION").write_text(REVISION + "\n")
    return root


# ----------------------------------------------------------------------------- WeMath

_OPTION = "A. 300, 400;B. 400, 300;C. 3000, 4000;D. 4000, 3000; E. No correct answer"

# Composite problems: "2steps_1" complete, "3steps_1" complete, "2steps_2" missing its second step.
WEMATH_ROWS: list[dict] = [
    {"ID": "2steps_1", "key": "2steps_1", "question number": 1, "answer": "C",
     "knowledge concept": "Conversion Rates and Calculations Between Length Units"},
    {"ID": "2steps_1", "key": "2steps_2", "question number": 2, "answer": "A",
     "knowledge concept": "Perimeter of Rectangles"},
    {"ID": "2steps_1", "key": "2steps_multi", "question number": 3, "answer": "D",
     "knowledge concept": "Perimeter of Rectangles"},
    {"ID": "3steps_1", "key": "3steps_1", "question number": 4, "answer": "B",
     "knowledge concept": "Angles"},
    {"ID": "3steps_1", "key": "3steps_2", "question number": 5, "answer": "E",
     "knowledge concept": "Area of Triangles"},
    {"ID": "3steps_1", "key": "3steps_3", "question number": 6, "answer": "A",
     "knowledge concept": "Perimeter of Rectangles"},
    {"ID": "3steps_1", "key": "3steps_multi", "question number": 7, "answer": "C",
     "knowledge concept": "Area of Triangles"},
    {"ID": "2steps_2", "key": "2steps_1", "question number": 8, "answer": "B",
     "knowledge concept": "Angles"},
    {"ID": "2steps_2", "key": "2steps_multi", "question number": 9, "answer": "B",
     "knowledge concept": "Angles"},
]


def write_wemath(folder: Path) -> Path:
    from PIL import Image

    root = Path(folder) / "wemath"
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, spec in enumerate(WEMATH_ROWS):
        name = f"images/{spec['ID']}-{spec['key'].split('_')[-1]}.png"
        Image.new("RGB", (8, 6), (i * 20, 90, 160)).save(root / name)
        row = dict(
            spec, split="testmini", question=f"Question {i + 1}: OA = ( ) m, AB = ( ) m", option=_OPTION,
            image_path=name, **{"knowledge concept description": "Made-up description."},
        )
        lines.append(json.dumps(row, ensure_ascii=False))
    (root / "testmini.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "REVISION").write_text(REVISION + "\n")
    return root


def write_all(folder: str | Path) -> dict[str, Path]:
    """Write every fixture under `folder`; {benchmark name: folder to pass to its `load`}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "mmmu": write_mmmu(folder),
        "mathvista": write_mathvista(folder),
        "mathvision": write_mathvision(folder),
        "zerobench": write_zerobench(folder),
        "wemath": write_wemath(folder),
    }
