"""ZeroBench (100 main questions, 334 subquestions): official prompt, scoring snippet and metrics.

Scoring is the snippet of the official README (github.com/jonathan-roberts1/zerobench; there is no scoring
module), quirks included: lower-case the stripped
response, take the last non-greedy `{...}` on one line (no DOTALL; `''` when there is none), and
compare it to the gold without stripping the inside of the braces:
`parsed[:len(gt)] == gt.strip().lower() and len(parsed) == len(gt.strip())`. So `11.9` is not
`11.90`, `{ 7}` is not `7`, `{\\frac{1}{2}}` parses as `2`, and a trailing `\\boxed{..}` is caught.

Metrics take k samples per question: several rows with the same `question_id` (or a list of results
for one row) are samples of one question. pass@1 = mean(c/n); pass@k = share of questions with a
correct sample (unbiased 1 - C(n-c,k)/C(n,k) when n > k); k/k reliability = share with all correct
(C(c,k)/C(n,k) when n > k). Subquestions can also be grouped by main question
(`question_id.split("_")[0]`, an assumption to check against your copy of the data).
"""

from __future__ import annotations

from math import comb
from typing import Any

from rlsd_harness.benchmarks import Metadata, options_scorer, pass_at_k
from rlsd_harness.benchmarks._common import (
    check_aligned,
    check_variant,
    decode,
    is_correct,
    load_rows,
    require,
)

NAME = "zerobench"
SPLITS = ("zerobench", "zerobench_subquestions")
VARIANTS = ("official", "vlmevalkit", "lmms_eval")
MODES = ("official",)

_INSTRUCTION = "Let's think step by step and give the final answer in curly braces, like this: {final answer}"
_VLMEVALKIT_INSTRUCTION = (
    "Let's think step by step and give the final answer in curly braces,  like this: {final answer}"
)


def load(
    source: str, split: str = "zerobench", revision: str | None = None, *, allow_missing_images: bool = False
) -> list[dict]:
    """Rows of one split; an image cell that names a file which does not exist is an error unless
    `allow_missing_images` (then a warning, and those rows are prompted without it)."""
    rows = load_rows(
        NAME, source, split, revision, valid_splits=SPLITS, id_field="question_id",
        list_image_fields=("question_images_decoded",), allow_missing_images=allow_missing_images,
    )
    for row in rows:
        require(NAME, row, ("question_text", "question_answer"), "question_id")
    return rows


def prompt(row: dict, variant: str = "official") -> tuple[str, list]:
    """official: the README string (`\\n\\n\\n` before the instruction); vlmevalkit: its string (a
    space before the newlines, two spaces before "like"); lmms_eval: "Answer with only the final
    answer.". Images go before the text, in dataset order."""
    check_variant(NAME, variant, VARIANTS)
    require(NAME, row, ("question_id", "question_text"), "question_id")
    q = row["question_text"]
    if variant == "official":
        text = f"{q}\n\n\n{_INSTRUCTION}"
    elif variant == "vlmevalkit":
        text = f"{q} \n\n\n{_VLMEVALKIT_INSTRUCTION}"
    else:
        text = f"{q}\nAnswer with only the final answer."
    images = [decode(img) for img in (row.get("question_images_decoded") or [])]
    return text, images


def parse(response: str) -> str:
    """`re.findall(r"\\{(.*?)\\}", response.strip().lower())[-1]` or '' — in linear time.

    Scanning left to right: a `{` opens a match that ends at the first `}` before the next newline;
    if there is no such `}`, no `{` up to that newline can match either, so the scan jumps there."""
    text = "" if response is None else str(response).strip().lower()
    last, i, newline = "", 0, -1
    while True:
        i = text.find("{", i)
        if i == -1:
            return last
        if newline < i:
            newline = text.find("\n", i)
            if newline == -1:
                newline = len(text)
        close = text.find("}", i + 1, newline)
        if close == -1:
            i = newline + 1
            continue
        last, i = text[i + 1 : close], close + 1


def score(response: str, row: dict, *, mode: str = "official") -> dict:
    if mode not in MODES:
        raise ValueError(f"{NAME}: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    require(NAME, row, ("question_id", "question_answer"), "question_id")
    gt = str(row["question_answer"])
    parsed = parse(response)
    correct = parsed[: len(gt)].lower() == gt.strip().lower() and len(parsed) == len(gt.strip())
    return {"parsed": parsed, "correct": bool(correct)}


def _all_k(n: int, c: int, k: int) -> float:
    return comb(c, k) / comb(n, k)


def _group(rows: list[dict], results: list, key) -> dict[str, list[bool]]:
    groups: dict[str, list[bool]] = {}
    for row, res in zip(rows, results):
        samples = res if isinstance(res, list) else [res]
        groups.setdefault(key(row), []).extend(is_correct(s) for s in samples)
    return groups


def metrics(rows: list[dict], results: list, *, k: int | None = None, group_subquestions: bool = False) -> dict:
    """pass@1, pass@k and k/k reliability over questions (k = the smallest sample count unless given),
    as fractions (x100 = the count out of 100 on the main split). With `group_subquestions`, also
    the same numbers with subquestions grouped per main question (all subquestions right)."""
    check_aligned(NAME, rows, results)
    groups = _group(rows, results, lambda r: str(r.get("question_id")))
    out = _summarise(groups, k)
    if group_subquestions:
        per_main: dict[str, list[list[bool]]] = {}
        for qid, flags in groups.items():
            per_main.setdefault(qid.split("_")[0], []).append(flags)
        # A main question counts as solved in sample j when all its subquestions are right in sample j.
        merged = {}
        for main, lists in per_main.items():
            n = min(len(f) for f in lists)
            merged[main] = [all(f[j] for f in lists) for j in range(n)]
        out["by_main_question"] = _summarise(merged, k)
    return out


def _summarise(groups: dict[str, list[bool]], k: int | None) -> dict[str, Any]:
    if not groups:
        return {"questions": 0, "samples_per_question": 0, "k": 0, "pass@1": 0.0, "pass@k": 0.0, "k/k": 0.0}
    counts = [(len(f), sum(f)) for f in groups.values()]
    n_min = min(n for n, _ in counts)
    k = n_min if k is None else k
    if k < 1 or k > n_min:
        raise ValueError(f"{NAME}: k={k} needs at least k samples for every question (fewest: {n_min})")
    q = len(counts)
    return {
        "questions": q,
        "samples_per_question": n_min if all(n == n_min for n, _ in counts) else [n for n, _ in counts],
        "k": k,
        "pass@1": sum(c / n for n, c in counts) / q,
        "pass@k": sum(pass_at_k(n, c, k) for n, c in counts) / q,
        "k/k": sum(_all_k(n, c, k) for n, c in counts) / q,
        "correct_questions_any": sum(1 for _, c in counts if c > 0),
        "correct_questions_all": sum(1 for n, c in counts if c == n),
    }


METADATA = Metadata(
    row_id=lambda row: str(row["question_id"]),
    headline="pass@1",
    secondary=(("pass@k", "pass@{k}"), ("k/k", "{k}/{k}")),
    new_scorer=options_scorer(score),
    samples_together=True,  # pass@k and k/k reliability count the k samples of a question together
    # `group_subquestions` scores a main question by all its subquestions ("<main>_<n>"): a limited run keeps
    # them together. On the main split every id is its own unit.
    unit=lambda row: str(row["question_id"]).split("_")[0],
)
