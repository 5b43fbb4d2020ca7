"""MathVista (testmini, 1,000 items): official prompt (`query`), extraction and normalisation.

The official extraction (github.com/lupantech/MathVista, evaluation/extract_answer.py) calls GPT-4 after
a few rule-based fast paths, so a network-free score is an approximation. This module does, in order:
1. the official fast paths (empty response; MC response equal to a choice; `int()` for integer
   answers; `float()` for float answers), then the official quick-extract regex
   `The answer is "(.*)"\\.`;
2. then either a judge (any callable `judge(prompt_text) -> str`, e.g. a local model; the prompt is
   built like the official one: few-shot demos + query + response + "Extracted answer: ") or the
   deterministic rules of this project (`rules_extract`): last `\\boxed{...}`, else the text after the
   last answer marker, then for MC a standalone letter / `(X)` / option text, for numbers the last
   number, for lists the last `[...]` with `, ` spacing.
3. the exact official `normalize_extracted_answer` (`normalize`) and string equality.

`score` says which extractor produced the extraction: `"extractor": "rules"` (fast path or rules)
or `"judge"`. The few-shot demos in the judge prompt are this project's own, not the official text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlsd_harness.answers import last_boxed
from rlsd_harness.benchmarks import Judge, Metadata, Scorer
from rlsd_harness.benchmarks._common import (
    BenchmarkError,
    breakdown,
    check_aligned,
    check_mode,
    check_variant,
    decode,
    first_of,
    is_correct,
    levenshtein,
    load_rows,
    require,
    row_split,
)

NAME = "mathvista"
SPLITS = ("testmini", "test")
VARIANTS = ("official", "vlmevalkit")
METADATA_KEYS = ("language", "source", "category", "task", "context", "grade", "skills")


def load(
    source: str, split: str = "testmini", revision: str | None = None, *, allow_missing_images: bool = False
) -> list[dict]:
    """Rows from the hub parquet (`decoded_image` bytes, `query`) or the official repository's
    `data/<split>.json` (`{pid: row}`, `image` a path relative to `data/`, no `query`). A row without
    `query` takes `query.json[pid]` from a `query.json` beside its data file (the official prompts),
    else the query rebuilt from the row (`build_query`). A row without its image file is an error
    unless `allow_missing_images` (then a warning and a text-only prompt for that row)."""
    rows = load_rows(
        NAME, source, split, revision, valid_splits=SPLITS, id_field="pid", image_fields=("decoded_image",),
        image_paths={"decoded_image": "image"}, require_image="decoded_image",
        allow_missing_images=allow_missing_images,
    )
    for row in rows:
        _check_row(row)
    if any(not row.get("query") for row in rows):
        queries = _query_files(source, rows)
        for row in rows:
            if not row.get("query"):
                official = queries.get(str(row["pid"]))
                row["query"] = official if official is not None else build_query(row)
    return rows


def _query_files(source: str, rows: list[dict]) -> dict[str, str]:
    """{pid: query} from every `query.json` in the folders of the data files that were read."""
    src = Path(str(source)).expanduser()
    if not src.exists():
        return {}
    root = src if src.is_dir() else src.parent
    folders = sorted({(root / f).parent for f in (rows[0]["_meta"]["files"] if rows else [])})
    merged: dict[str, str] = {}
    for folder in folders:
        path = folder / "query.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BenchmarkError(NAME, row_split(rows[0]), None, f"unreadable {path}: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise BenchmarkError(NAME, row_split(rows[0]), None, f"{path} is not a {{pid: query string}} mapping")
        merged.update({str(k): v for k, v in data.items()})
    return merged


_HINTS = {
    "multi_choice": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "integer": "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, "
    "3, at the end.",
    ("float", 1): "Hint: Please answer the question requiring a floating-point number with one decimal place and "
    "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    ("float", 2): "Hint: Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
    "[1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def build_query(row: dict) -> str:
    """The official zero-shot query of a row (what `query.json` and the hub's `query` hold): the hint
    for its question / answer type, `Question: ...` with ` (Unit: u)` when the row has a unit, and the
    choices as `(A) ...` lines under `Choices:`; the whole stripped of outer whitespace."""
    require(NAME, row, ("pid", "question", "question_type", "answer_type"), "pid")
    qtype, atype = row["question_type"], row["answer_type"]
    if qtype == "multi_choice":
        key: Any = "multi_choice"
    elif atype == "float":
        precision = row.get("precision")
        key = ("float", int(precision)) if precision is not None and float(precision) in (1.0, 2.0) else None
        if key is None:
            raise BenchmarkError(
                NAME, row_split(row), row.get("pid"),
                f"no official hint for a float answer with precision {precision!r} (valid: 1, 2); "
                "give the row a `query` or put the official query.json beside the data file",
            )
    elif atype in ("integer", "list"):
        key = atype
    else:
        raise BenchmarkError(
            NAME, row_split(row), row.get("pid"),
            f"no official hint for answer_type {atype!r} (valid for free_form: integer, float, list)",
        )
    parts = [_HINTS[key], f"Question: {row['question']}"]
    if row.get("unit"):
        parts[-1] += f" (Unit: {row['unit']})"
    choices = _choices(row)
    if choices:
        parts.append("Choices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices)))
    return "\n".join(parts).strip()


def _check_row(row: dict) -> None:
    require(NAME, row, ("pid", "question_type", "answer_type", "answer"), "pid")
    if row["question_type"] == "multi_choice" and not _choices(row):
        raise BenchmarkError(NAME, row_split(row), row.get("pid"), "multi_choice row without choices")


def _choices(row: dict) -> list[str]:
    # pandas hands numpy arrays for list columns; `if choices:` would raise on those.
    choices = row.get("choices")
    return [] if choices is None else [str(c) for c in list(choices)]


def prompt(row: dict, variant: str = "official") -> tuple[str, list]:
    """The `query` field as is (VLMEvalKit's TSV question is the same pre-built query); a row handed
    in without one gets `build_query(row)`."""
    check_variant(NAME, variant, VARIANTS)
    require(NAME, row, ("pid",), "pid")
    img = row.get("decoded_image")
    return row.get("query") or build_query(row), ([decode(img)] if img is not None else [])


# ----------------------------------------------------------------------------- normalisation (official)


def normalize(extraction: Any, row: dict, *, ignore_empty_extractions: bool = False) -> str | None:
    """The official `normalize_extracted_answer(extraction, choices, question_type, answer_type,
    precision)`, exactly: MC -> `(X)` letter, sequential letter, else Levenshtein-nearest choice (the
    shortest choice for an empty extraction); integer -> `str(int(float(x)))` (truncates); float ->
    `str(round(float(x), int(precision)))`; list -> `str(x)`; any failure -> None."""
    question_type, answer_type = row.get("question_type"), row.get("answer_type")
    if question_type == "multi_choice":
        choices = _choices(row)
        if isinstance(extraction, str):
            extraction = extraction.strip()
        else:
            try:
                extraction = str(extraction)
            except Exception:
                extraction = ""
        if ignore_empty_extractions and not extraction:
            return None
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        sequential = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in sequential:
            return choices[sequential.index(extraction)]
        if not choices:
            return None  # official code raises here (min of an empty list); no choice can match anyway
        return first_of(choices, lambda c: levenshtein(extraction, c))
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))
        except Exception:
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), int(row.get("precision"))))
        except Exception:
            return None
    if answer_type == "list":
        try:
            return str(extraction)
        except Exception:
            return None
    # Official code leaves the name unbound for any other free-form type; hand the extraction back.
    return extraction


def safe_equal(prediction: Any, answer: Any) -> bool:
    try:
        return bool(prediction == answer)
    except Exception:
        return False


# ----------------------------------------------------------------------------- extraction


def fast_path(response: str, row: dict, quick_extract: bool = True) -> str | None:
    """The official rule-based shortcuts before the LLM call; None when none applies."""
    if response == "":
        return ""
    if row.get("question_type") == "multi_choice" and response in _choices(row):
        return response
    if row.get("answer_type") == "integer":
        try:
            return str(int(response))
        except Exception:
            pass
    if row.get("answer_type") == "float":
        try:
            return str(float(response))
        except Exception:
            pass
    if quick_extract:
        return quick_extract_answer(response)
    return None


_QUICK_OPEN = 'The answer is "'
_QUICK_CLOSE = '".'


def quick_extract_answer(response: str) -> str | None:
    """What the official `re.search(r'The answer is "(.*)"\\.', response).group(1)` returns (None for
    no match), in linear time. The regex tries every opening and runs `.*` to the end of the line
    from each, so a line with many openings and no closing costs quadratic time (8 s on 150 kB).
    Here: `.` stops at newlines only, so a match lies within one line; on the first line where one
    exists it starts at the line's first opening (a later opening only shortens the room left) and,
    `.*` being greedy, ends at the line's last closing."""
    for line in response.split("\n"):
        start = line.find(_QUICK_OPEN)
        if start == -1:
            continue
        start += len(_QUICK_OPEN)
        end = line.rfind(_QUICK_CLOSE)
        if end >= start:
            return line[start:end]
    return None


_MARKER = re.compile(r"(?:final answer|answer is|answer:|answer\s*=)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+")
_LIST = re.compile(r"\[[^\[\]]*\]")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_LONE_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
_END_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])[.)]?\s*$")
_TAIL = 300  # look at the end of long responses only: the answer is stated last


def _candidate(response: str) -> tuple[str, bool]:
    """(where the answer most likely is, whether an explicit box/marker located it): the last box,
    else the line after the last answer marker, else the tail of the response."""
    boxed = last_boxed(response, tries=3)
    if boxed is not None:
        return boxed.strip(), True
    window = response[-5000:]
    markers = list(_MARKER.finditer(window))
    if markers:
        tail = window[markers[-1].end() :].strip()
        line = tail.split("\n")[0].strip()
        return (line or tail).strip().rstrip(".").strip(), True
    return response[-_TAIL:].strip(), False


def _strip_latex(text: str) -> str:
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\(?:mathrm|mathbf)\{([^{}]*)\}", r"\1", text)
    return text.replace("$", "").replace("\\%", "%").replace("\\,", "").strip()


def rules_extract(response: str, row: dict) -> str:
    """The deterministic fallback extractor, this project's own rules where the official code asks GPT-4;
    '' when nothing is found."""
    cand, located = _candidate(response)
    cand = _strip_latex(cand)
    qtype, atype = row.get("question_type"), row.get("answer_type")
    if qtype == "multi_choice":
        choices = _choices(row)
        letters = [chr(65 + i) for i in range(len(choices))]
        # An exact choice text wins; then the last (X); then a standalone capital letter (anywhere in a
        # located answer, only as the last token of an unlocated tail, where "A" is usually an article);
        # then the choice text that occurs last.
        for c in choices:
            if cand == c.strip():
                return c
        found = [x.upper() for x in _PAREN_LETTER.findall(cand) if x.upper() in letters]
        if not found:
            lone = _LONE_LETTER.findall(cand) if located else _END_LETTER.findall(cand)
            found = [x for x in lone if x in letters]
        if found:
            return found[-1]
        best, best_pos = "", -1
        lowered = cand.lower()
        for c in choices:
            pos = lowered.rfind(c.lower().strip()) if c.strip() else -1
            if pos > best_pos:
                best, best_pos = c, pos
        return best
    if atype == "list":
        lists = _LIST.findall(cand) or _LIST.findall(response[-_TAIL:])
        if not lists:
            return ""
        items = [x.strip() for x in lists[-1][1:-1].split(",") if x.strip()]
        return "[" + ", ".join(items) + "]"
    if atype in ("integer", "float"):
        unit = (row.get("unit") or "").strip()
        text = cand.replace(unit, " ") if unit else cand
        nums = _NUMBER.findall(text.replace("$", " ").replace("%", " "))
        if not nums:
            nums = _NUMBER.findall(response[-_TAIL:])
        return nums[-1].replace(",", "") if nums else ""
    return cand


_DEMOS = """Extract the final answer from the model response, in the form the question asks for. Reply with the answer only.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: How many red blocks are left of the cube?

Model response: Counting from the left there are four red blocks before the cube, so the answer is 4.

Extracted answer: 4

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.
Question: What is the slope of the line?

Model response: Rise over run gives 3/4, that is 0.75.

Extracted answer: 0.75

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: Which shape has the largest area?
Choices:
(A) circle
(B) square
(C) triangle

Model response: The square covers more of the grid than the other two, so I pick (B).

Extracted answer: B

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.
Question: Which years had sales above 10?

Model response: The bars pass 10 in 2019 and again in 2021.

Extracted answer: [2019, 2021]"""


def judge_prompt(response: str, row: dict) -> str:
    """Same layout as the official extractor prompt: demos, query, response, 'Extracted answer: '."""
    return f"{_DEMOS.strip()}\n\n{row.get('query', '')}\n\n{response}\n\nExtracted answer: "


def extract(response: str, row: dict, *, judge: Judge | None = None, quick_extract: bool = True) -> tuple[str, str]:
    """(extraction, extractor) where extractor is "rules" or "judge"."""
    quick = fast_path(response, row, quick_extract)
    if quick is not None:
        return quick, "rules"
    if judge is not None:
        out = judge(judge_prompt(response, row))
        return ("" if out is None else str(out)).strip(), "judge"
    return rules_extract(response, row), "rules"


def score(
    response: str,
    row: dict,
    *,
    mode: str = "official",
    judge: Judge | None = None,
    quick_extract: bool = True,
    ignore_empty_extractions: bool = False,
) -> dict:
    """{"parsed", "correct", "extraction", "extractor"}. `parsed` is the normalised prediction.
    mode="fixed" sets `ignore_empty_extractions` for MC (an empty extraction is wrong instead of being
    matched to the shortest choice)."""
    check_mode(NAME, mode)
    _check_row(row)
    response = "" if response is None else str(response)
    extraction, extractor = extract(response, row, judge=judge, quick_extract=quick_extract)
    ignore = ignore_empty_extractions or mode == "fixed"
    prediction = normalize(extraction, row, ignore_empty_extractions=ignore)
    return {
        "parsed": prediction,
        "correct": safe_equal(prediction, row["answer"]),
        "extraction": extraction,
        "extractor": extractor,
    }


def metrics(rows: list[dict], results: list) -> dict:
    """Accuracy plus the official breakdowns (question_type, answer_type and the metadata keys; a
    row counts once under each of its skills), and how many extractions each extractor produced."""
    check_aligned(NAME, rows, results)
    flags = [is_correct(r) for r in results]
    n_correct = sum(flags)
    out: dict[str, Any] = {
        "accuracy": n_correct / len(rows) if rows else 0.0,
        "correct": n_correct,
        "total": len(rows),
        "question_type": breakdown((r.get("question_type"), f) for r, f in zip(rows, flags)),
        "answer_type": breakdown((r.get("answer_type"), f) for r, f in zip(rows, flags)),
    }
    for key in METADATA_KEYS:
        pairs = []
        for r, f in zip(rows, flags):
            value = (r.get("metadata") or {}).get(key)
            if value is None:
                continue
            values = list(value) if key == "skills" else [value]
            pairs.extend((v, f) for v in values)
        out[key] = breakdown(pairs)
    extractors: dict[str, int] = {}
    for r in results:
        if isinstance(r, dict) and r.get("extractor"):
            extractors[r["extractor"]] = extractors.get(r["extractor"], 0) + 1
    out["extractor"] = extractors
    return out


def new_scorer(options: Mapping[str, Any], judge: Judge | None = None) -> Scorer:
    """A scorer that extracts with `judge` when one is given, else with the rules."""
    return lambda response, row: score(response, row, judge=judge, **options)


METADATA = Metadata(row_id=lambda row: str(row["pid"]), headline="accuracy", new_scorer=new_scorer, judged=True)
