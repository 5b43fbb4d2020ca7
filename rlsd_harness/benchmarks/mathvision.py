"""MathVision / MATH-V (test 3,040, testmini 304): official prompts and rule-based scorer.

Scoring follows MATH-V's `evaluation/evaluate.py` + `evaluation/utils.py` (github.com/mathllm/MATH-V), quirks
included: the letter shortcuts, the `is ` number shortcut, the answer flags (only when no `oxed{`),
the last box winning when there are several, the greedy `oxed{(.*)}`, `\\text`/`\\mbox` removed with
their braces kept, `_fix_sqrt` and `_fix_fracs` run only when "sqrt" is present, and
`correct = is_equal(gold, pred) or is_equal(option_text_of_gold, pred)` on the raw gold.

Deviations, all forced by safety or the environment:
- `eval` is replaced by the restricted evaluator of `benchmarks._symbolic` (numbers, arithmetic,
  `math` names and functions only), run in a worker process with a per-item deadline (`timeout=`,
  5 s by default); an item that times out is wrong and reported with `"timed_out": True`.
- latex2sympy comes from `latex2sympy2_extended==1.11` (the official pin `latex2sympy2==1.9.1` cannot
  be installed beside math-verify: antlr4 pin conflict). The two parse a few strings differently
  (e.g. `1:2` is 1/2 here; `e` is Euler's number, printed `E`, which is not a `math` name).
- Integers of 4,000+ digits and integer powers with exponents above 10,000 count as unequal.
"""

from __future__ import annotations

import time
from typing import Any

from rlsd_harness.benchmarks import Metadata, options_scorer
from rlsd_harness.benchmarks._common import (
    BenchmarkError,
    breakdown,
    check_aligned,
    check_variant,
    decode,
    is_correct,
    load_rows,
    require,
    row_split,
)
from rlsd_harness.benchmarks._symbolic import SymbolicEvaluator, SymbolicTimeout, default_evaluator

NAME = "mathvision"
SPLITS = ("test", "testmini")
VARIANTS = ("official", "direct", "lmms_eval")
MODES = ("official",)
DEFAULT_TIMEOUT = 5.0

_COT = (
    'Please solve the problem step by step and put your answer in one "\\boxed{}". '
    'If it is a multiple choice question, only one letter is allowed in the "\\boxed{}".\n'
)
_LMMS_COT = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'
_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


def load(
    source: str, split: str = "test", revision: str | None = None, *, allow_missing_images: bool = False
) -> list[dict]:
    """Rows from the hub parquet (`decoded_image` bytes) or the official repository's jsonl (`image`,
    a path relative to the repository root, beside `data/`). A row without its image file is an error
    unless `allow_missing_images` (then a warning and a text-only prompt for that row)."""
    rows = load_rows(
        NAME, source, split, revision, valid_splits=SPLITS, id_field="id", image_fields=("decoded_image",),
        image_paths={"decoded_image": "image"}, require_image="decoded_image",
        allow_missing_images=allow_missing_images,
    )
    for row in rows:
        _gold_pair(row)
        require(NAME, row, ("question", "level", "subject"), "id")
    return rows


def _options(row: dict) -> list[str]:
    opts = row.get("options")
    return [] if opts is None else [str(o) for o in list(opts)]


def _gold_pair(row: dict) -> tuple[str, str]:
    """(raw gold, option text of the gold letter or '' for free-form), as evaluate.py builds them."""
    require(NAME, row, ("id", "answer"), "id")
    gold = str(row["answer"])
    opts = _options(row)
    if not opts:
        return gold, ""
    if len(gold) != 1 or not 0 <= ord(gold) - 65 < len(opts):
        raise BenchmarkError(NAME, row_split(row), row.get("id"), f"gold {gold!r} is not one of the option letters")
    return gold, opts[ord(gold) - 65]


# ----------------------------------------------------------------------------- prompt


def _options_block(opts: list[str]) -> str:
    # Options drawn inside the image are stored as the letters themselves; then no block is printed.
    if not opts or "".join(opts) == "ABCDE":
        return ""
    return "".join(f"({chr(65 + i)}) {o}\n" for i, o in enumerate(opts))


def prompt(row: dict, variant: str = "official") -> tuple[str, list]:
    """official: the CoT prompt of the GPT-4/Qwen-VL scripts; direct: the short-answer prompt;
    lmms_eval: lmms-eval's (no separator, choices always listed). `<image1>` stays in the text."""
    check_variant(NAME, variant, VARIANTS)
    require(NAME, row, ("id", "question"), "id")
    q, opts = row["question"], _options(row)
    if variant == "official":
        text = _COT + f"{q}\n{_options_block(opts)}"
    elif variant == "direct":
        text = f"{q}\n{_options_block(opts)}\nAnswer the question using a single word or phrase."
    else:
        text = _LMMS_COT + q
        if opts:
            text += "\nChoices: " + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(opts))
            text += "\nAnswer the question with the option's letter from the given choices directly."
    img = row.get("decoded_image")
    return text, ([decode(img)] if img is not None else [])


# ----------------------------------------------------------------------------- extraction


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _fix_sqrt(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`: brace the first character after each bare `\\sqrt`."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        out += "\\sqrt{" + part[0] + "}" + part[1:] if part and part[0] != "{" else "\\sqrt" + part
    return out


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`; a bare `\\frac` with fewer than two
    characters after it leaves the whole string unchanged."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part and part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


# (old, new) replacements of `_strip_string`, in order, before its other steps.
_STRIP_REPLACE = (
    ("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
    ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""),
)


def _strip_string(s: str) -> str:
    for old, new in _STRIP_REPLACE:
        s = s.replace(old, new)
    s = s.split("\\text{ ")[0]  # units written as `\text{ cm}` on the right
    s = s.replace("\\%", "")  # only the escaped percent sign; a bare `%` stays
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2:
        s = s.split("=")[-1]
    if len(s.split("\\approx")) == 2:
        s = s.split("\\approx")[-1]
    if "sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:  # the official gate: fractions are only fixed when a sqrt is present
        s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


# (old, new) replacements of `find_math_answer`, in order, after the box and `=`/`\approx` cuts.
_FIND_REPLACE = (
    (" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
    ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
    ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""), ("{units}", ""), ("units", ""),
    ("{km}", ""), ("km", ""),
)


def find_math_answer(s: str) -> str:
    s = s.lower()
    if "{}" in s:
        s = s.replace("{}", "")
    # The official greedy `re.findall('oxed{(.*)}', s, re.S)[-1]` has at most one match: from the first
    # `oxed{` to the last `}` (when that `}` comes after it). Computed directly, in linear time.
    start, end = s.find("oxed{"), s.rfind("}")
    ans = s[start + 5 : end] if start != -1 and end >= start + 5 else s
    close, open_ = ans.find("}"), ans.find("{")
    if close != -1 and (open_ == -1 or close < open_):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1]
    ans = ans.split("\\approx")[-1]
    for old, new in _FIND_REPLACE:
        ans = ans.replace(old, new)
    return _strip_string(ans)


def extract_answer(response: str) -> str:
    """The model answer as evaluate.py computes it from the raw response."""
    ans = response.strip()
    for c in "ABCDE":
        if (
            ans.endswith(f" {c}.") or ans.endswith(f" ({c}).") or ans.startswith(f"{c}\n")
            or ans.startswith(f"({c})\n") or ans.startswith(f"({c}) {c}\n")
        ):
            ans = c
    tail = ans.split("is ")[-1].rstrip(".")
    if _is_number(tail):
        ans = tail
    if "oxed{" not in ans:
        for flag in _FLAGS:
            for f in (flag, flag.replace("the", "The")):
                before = ans
                ans = ans.split(f)[-1].strip()
                if f in before:
                    ans = ans.split("\n")[0].split(". ")[0]
    elif ans.count("oxed{") > 1:
        ans = "\\boxed{" + ans.split("oxed{")[-1]
    ans = find_math_answer(ans)
    for c in "abcde":
        ans = ans.replace(f"({c})", c)
    for c in "abcde":
        ans = ans.replace("{" + c + "}", c)
    return ans.rstrip(".").lstrip(":").strip()


# ----------------------------------------------------------------------------- equality


def _eval_tuple(s: str, ev: SymbolicEvaluator, deadline: float) -> str:
    """`(x,y)` / `[x,y]` with every element replaced by str(its 2-dp value); the original string if
    any element fails. Elements containing `infty`, and `a` / `-a`, are kept as written."""
    if not ((s[0] == "(" and s[-1] == ")") or (s[0] == "[" and s[-1] == "]")):
        return s
    parts = s[1:-1].split(",")
    if len(parts) < 2:
        return s
    out = []
    for p in parts:  # one by one, as the official loop: the first failure ends it
        if "infty" in p or p in ("a", "-a"):
            out.append(p)
            continue
        value = ev.values([p], deadline)[0]
        if value is None:
            return s
        out.append(str(value))
    return s[0] + ",".join(out) + s[-1]


def is_equal(a: str, b: str, *, evaluator: SymbolicEvaluator | None = None, deadline: float | None = None) -> bool:
    """Official `is_equal(a, b)`: lower-case; empty (spaces only) -> False; equal after strip -> True;
    equal after `eval_tuple` -> True; else equal 2-dp values through latex2sympy. Raises
    SymbolicTimeout when the deadline passes."""
    ev = evaluator or default_evaluator()
    deadline = time.monotonic() + DEFAULT_TIMEOUT if deadline is None else deadline
    a, b = a.lower(), b.lower()
    if a.replace(" ", "") == "" or b.replace(" ", "") == "":
        return False
    if a.strip() == b.strip():
        return True
    a, b = _eval_tuple(a, ev, deadline), _eval_tuple(b, ev, deadline)
    if a == b:
        return True
    # The official line evaluates the second argument first; an error on either side means False.
    vb = ev.values([b], deadline)[0]
    if vb is None:
        return False
    va = ev.values([a], deadline)[0]
    return va is not None and va == vb


# ----------------------------------------------------------------------------- score / metrics


def score(
    response: str,
    row: dict,
    *,
    mode: str = "official",
    timeout: float = DEFAULT_TIMEOUT,
    evaluator: SymbolicEvaluator | None = None,
) -> dict:
    """{"parsed", "correct", "timed_out"}: `parsed` is the extracted model answer."""
    if mode not in MODES:
        raise ValueError(f"{NAME}: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    gold, gold_text = _gold_pair(row)
    response = "" if response is None else str(response)
    pred = extract_answer(response)
    deadline = time.monotonic() + timeout
    try:
        correct = is_equal(gold, pred, evaluator=evaluator, deadline=deadline) or is_equal(
            gold_text, pred, evaluator=evaluator, deadline=deadline
        )
        timed_out = False
    except SymbolicTimeout:
        correct, timed_out = False, True
    return {"parsed": pred, "correct": bool(correct), "timed_out": timed_out}


def metrics(rows: list[dict], results: list) -> dict:
    """Accuracy with breakdowns by level, subject and subject x level (as evaluate.py's keys)."""
    check_aligned(NAME, rows, results)
    flags = [is_correct(r) for r in results]
    n_correct = sum(flags)
    levels = [f"level{r.get('level')}" for r in rows]
    subjects = [str(r.get("subject")) for r in rows]
    out: dict[str, Any] = {
        "accuracy": n_correct / len(rows) if rows else 0.0,
        "correct": n_correct,
        "total": len(rows),
        "by_level": breakdown(zip(levels, flags)),
        "by_subject": breakdown(zip(subjects, flags)),
        "by_subject_level": breakdown((f"{s}_{lv}", f) for s, lv, f in zip(subjects, levels, flags)),
        "timed_out": sum(1 for r in results if isinstance(r, dict) and r.get("timed_out")),
    }
    return out


METADATA = Metadata(row_id=lambda row: str(row["id"]), headline="accuracy", new_scorer=options_scorer(score))
