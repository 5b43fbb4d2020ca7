"""MMMU (validation, 900 items): official prompt and rule-based scorer (MMMU repo `eval_utils.py`).

Official semantics kept on purpose (github.com/MMMU-Benchmark/MMMU, mmmu/utils/eval_utils.py), the
lenient and the random ones included:
- MC parsing strips `, . ! ? ; : '` one character kind after the other from both ends, pads with
  spaces, then looks for `(X)`, then ` X ` (case-sensitive), then (only with more than 5 tokens) the
  option text; several candidates -> the one whose marker occurs last; none -> a random letter.
- The random fallback draws `rng.choice(all_choices)` from the `rng=` option (a `random.Random`).
  Official code seeds the module-level `random` with 42 once and draws in call order; to reproduce
  that, make one `new_rng()` per run and pass it to every `score` call in dataset order. Without `rng=`,
  each call uses a fresh `random.Random(42)` so that a single call is repeatable on its own.
- Open answers: `parse_open_response` returns a list of candidates (tails after indicator words, every
  number found, lower-cased, numbers rounded to 2 dp, 1-char strings padded); `eval_open` is a substring
  test for strings and float equality for numbers. `parsed` holds that list, sorted for a fixed order.
- Open golds stored on HF as a list literal string (`"['24/7', '3.429']"`) are parsed with
  `ast.literal_eval`, as the official answer dict holds real lists.

`mode="fixed"` differs in one documented way: no random fallback (an unparsable MC answer is wrong,
`parsed` None), so scores carry no luck.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping
from typing import Any

from rlsd_harness.benchmarks import Judge, Metadata, Scorer
from rlsd_harness.benchmarks._common import (
    BenchmarkError,
    acc_entry,
    breakdown,
    check_aligned,
    check_mode,
    check_variant,
    decode,
    is_correct,
    load_rows,
    require,
    row_split,
)

NAME = "mmmu"
SPLITS = ("dev", "validation", "test")
IMAGE_FIELDS = tuple(f"image_{i}" for i in range(1, 8))
VARIANTS = ("official", "lmms_eval", "vlmevalkit", "lm_eval")

# Discipline -> subjects (MMMU `DOMAIN_CAT2SUB_CAT`).
DISCIPLINES = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": [
        "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy", "Public_Health",
    ],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": [
        "Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
        "Energy_and_Power", "Materials", "Mechanical_Engineering",
    ],
}
SUBJECT_TO_DISCIPLINE = {s: d for d, subs in DISCIPLINES.items() for s in subs}
SUBJECTS = sorted(SUBJECT_TO_DISCIPLINE)

_MC_PROMPT = "Answer with the option's letter from the given choices directly."
_OPEN_PROMPT = "Answer the question using a single word or phrase."
_IMAGE_TAG = re.compile(r"<image (\d+)>")


def load(
    source: str, split: str = "validation", revision: str | None = None, *, allow_missing_images: bool = False
) -> list[dict]:
    """Rows of `split` (all 30 subject configs together) from a local folder or `MMMU/MMMU`. An image
    cell that names a file which does not exist is an error unless `allow_missing_images`."""
    rows = load_rows(
        NAME, source, split, revision, valid_splits=SPLITS, id_field="id",
        image_fields=IMAGE_FIELDS, hub_configs=SUBJECTS, allow_missing_images=allow_missing_images,
    )
    for row in rows:
        require(NAME, row, ("question", "options", "answer", "question_type"), "id")
        options(row)  # fail at load, not mid-run, on an unreadable options string
    return rows


def new_rng(seed: int = 42) -> random.Random:
    """The generator the official module seeds (42): one per run, drawn in dataset order."""
    return random.Random(seed)


def subject(row_id: str) -> str:
    return "_".join(str(row_id).split("_")[1:-1])


def options(row: dict) -> list[str]:
    """The option texts; HF stores them as the string repr of a list."""
    raw = row.get("options")
    if isinstance(raw, list | tuple):
        return [str(o) for o in raw]
    try:
        value = ast.literal_eval(raw) if isinstance(raw, str) else None
    except (ValueError, SyntaxError) as exc:
        raise BenchmarkError(NAME, row_split(row), row.get("id"), f"unreadable options {raw!r}") from exc
    if not isinstance(value, list | tuple):
        raise BenchmarkError(NAME, row_split(row), row.get("id"), f"options is not a list: {raw!r}")
    return [str(o) for o in value]


def is_multiple_choice(row: dict) -> bool:
    return row.get("question_type") == "multiple-choice"


def gold(row: dict) -> str | list[str]:
    """The gold answer; a list literal string becomes a list (official answer dict semantics)."""
    answer = row.get("answer")
    if isinstance(answer, list):
        return [str(a) for a in answer]
    answer = str(answer)
    if answer.startswith("["):
        try:
            value = ast.literal_eval(answer)
            if isinstance(value, list):
                return [str(a) for a in value]
        except (ValueError, SyntaxError):
            pass
    return answer


# ----------------------------------------------------------------------------- prompt


def _images_in_order(row: dict, texts: list[str], duplicates: bool) -> list:
    """`image_k` in order of `<image k>` appearance in the texts (first appearance unless
    `duplicates`); with no tag at all, every present image column in order."""
    order: list[int] = []
    for text in texts:
        for m in _IMAGE_TAG.finditer(text):
            k = int(m.group(1))
            if duplicates or k not in order:
                order.append(k)
    if not order:
        order = [k for k in range(1, 8) if row.get(f"image_{k}") is not None]
    images = []
    for k in order:
        img = row.get(f"image_{k}")
        if img is None:
            raise BenchmarkError(NAME, row_split(row), row.get("id"), f"text names <image {k}> but image_{k} is empty")
        images.append(decode(img))
    return images


def prompt(row: dict, variant: str = "official") -> tuple[str, list]:
    """(text, images). `<image N>` tags stay in the text (except lm_eval, which writes `<image>`);
    images come in order of first appearance of their tag in question then options (lm_eval: every
    appearance, duplicates included). Callers that do not interleave put the images first.
    (The official LLaVA runner passes only image_1; passing every named image is the deliberate choice
    here, as lmms-eval, lm-eval and VLMEvalKit all do.)"""
    check_variant(NAME, variant, VARIANTS)
    require(NAME, row, ("id", "question", "question_type"), "id")
    q = row["question"]
    opts = options(row) if is_multiple_choice(row) else []
    letters = [chr(65 + i) for i in range(len(opts))]
    if variant == "official":
        if is_multiple_choice(row):
            block = "".join(f"({L}) {o}\n" for L, o in zip(letters, opts))
            text = f"{q}\n{block}\n{_MC_PROMPT}"
        else:
            text = f"{q}\n{_OPEN_PROMPT}"
    elif variant == "lmms_eval":
        if is_multiple_choice(row):
            block = "\n".join(f"{L}. {o}" for L, o in zip(letters, opts))
            text = f"{q}\n{block}\n\n{_MC_PROMPT}"
        else:
            text = f"{q}\n\n{_OPEN_PROMPT}"
    elif variant == "vlmevalkit":
        text = f"Question: {q}\n"
        if opts:
            text += "Options:\n" + "".join(f"{L}. {o}\n" for L, o in zip(letters, opts))
            text += "Please select the correct answer from the options above."
        else:
            text += _OPEN_PROMPT
    else:  # lm_eval
        if is_multiple_choice(row):
            block = "\n".join(f"({L}) {o}" for L, o in zip(letters, opts))
            text = f"{q}\n\n{block}\n\n{_MC_PROMPT}"
        else:
            text = f"{q}\n\n{_OPEN_PROMPT}"
        images = _images_in_order(row, [q, *opts], duplicates=True)
        return _IMAGE_TAG.sub("<image>", text), images
    return text, _images_in_order(row, [q, *opts], duplicates=False)


# ----------------------------------------------------------------------------- multiple choice


def parse_multi_choice(
    response: str, all_choices: list[str], index2ans: dict[str, str], rng: random.Random | None
) -> tuple[str | None, bool]:
    """(letter, used_random_fallback). `rng=None` means no fallback (fixed mode)."""
    # One character kind after the other, as the official loop does (not a set strip).
    for ch in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(ch)
    response = " " + response + " "

    candidates = [c for c in all_choices if f"({c})" in response]
    marker = "bracket" if candidates else None
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in response]
        marker = "space" if candidates else None
    if not candidates and len(response.split()) > 5:
        lowered = response.lower()
        candidates = [c for c in all_choices if index2ans[c].lower() in lowered]
        marker = "content" if candidates else None

    if not candidates:
        if rng is None:
            return None, False
        return rng.choice(all_choices), True
    if len(candidates) == 1:
        return candidates[0], False
    if marker == "bracket":
        positions = [response.rfind(f"({c})") for c in candidates]
    elif marker == "space":
        positions = [response.rfind(f" {c} ") for c in candidates]
    else:
        lowered = response.lower()
        positions = [lowered.rfind(index2ans[c].lower()) for c in candidates]
    return candidates[positions.index(max(positions))], False  # first maximum, like np.argmax


# ----------------------------------------------------------------------------- open questions

_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
# The two patterns below match exactly what the official ones match; the `(?<!\d)` guards only skip
# start positions inside a digit run, where the official pattern always fails after rescanning the run
# (which makes it quadratic on a long run of digits). tests/test_eval_mmmu.py checks the equivalence.
_NUM_SCI = re.compile(r"-?(?<!\d)\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:(?<!\d)\d+\.\d+|\.\d+|(?<!\d)\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    return _NUM_COMMAS.findall(text) + _NUM_SCI.findall(text) + _NUM_SIMPLE.findall(text)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list[Any]:
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]  # so that a one-letter gold does not match inside words
    return [text]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The official split pattern also has `\.\s(?=[A-Z])`, dead after lower-casing: only newlines split.
    subs = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, sub in enumerate(subs):
        indicators = _INDICATORS + (["="] if index == len(subs) - 1 else [])
        shortest = None
        for ind in indicators:
            if ind in sub:
                tail = sub.split(ind)[-1].strip()
                # `not shortest` (not `is None`): an empty tail is replaced by the next indicator's.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list[Any]:
    keys = _key_subresponses(response)
    preds: list[str] = list(keys)
    for key in keys:
        preds.extend(extract_numbers(key))
    normalized = []
    for p in preds:
        normalized.extend(normalize_str(p))
    unique = set(normalized)
    # Official order is set order (arbitrary); sort so logs repeat. eval_open does not depend on order.
    return sorted(unique, key=lambda x: (isinstance(x, str), str(x)))


def eval_open(gold_answer: str | list[str], preds: list[Any]) -> bool:
    golds = gold_answer if isinstance(gold_answer, list) else [gold_answer]
    norm: list[Any] = []
    for g in golds:
        norm.extend(normalize_str(g))
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in norm):
                return True
        elif pred in norm:
            return True
    return False


# ----------------------------------------------------------------------------- score / metrics


def score(response: str, row: dict, *, mode: str = "official", rng: random.Random | None = None) -> dict:
    """{"parsed", "correct"} (+ "random_fallback" for MC) with official MMMU semantics."""
    check_mode(NAME, mode)
    require(NAME, row, ("id", "answer", "question_type"), "id")
    response = "" if response is None else str(response)
    answer = gold(row)
    if is_multiple_choice(row):
        opts = options(row)
        if not opts:
            raise BenchmarkError(NAME, row_split(row), row.get("id"), "multiple-choice row without options")
        letters = [chr(65 + i) for i in range(len(opts))]
        index2ans = dict(zip(letters, opts))
        if mode == "official" and rng is None:
            rng = new_rng()
        parsed, fallback = parse_multi_choice(response, letters, index2ans, rng if mode == "official" else None)
        correct = parsed in answer if isinstance(answer, list) else parsed == answer
        return {"parsed": parsed, "correct": bool(parsed is not None and correct), "random_fallback": fallback}
    parsed_open = parse_open_response(response)
    return {"parsed": parsed_open, "correct": eval_open(answer, parsed_open)}


def metrics(rows: list[dict], results: list) -> dict:
    """Micro accuracy overall, per subject and per discipline (instance-level, as the official
    `calculate_ins_level_acc`), plus MC/open splits."""
    check_aligned(NAME, rows, results)
    flags = [is_correct(r) for r in results]
    subjects = [subject(row.get("id", "")) for row in rows]
    n_correct = sum(flags)
    out = {
        "accuracy": n_correct / len(rows) if rows else 0.0,
        "correct": n_correct,
        "total": len(rows),
        "by_subject": breakdown(zip(subjects, flags)),
        "by_discipline": breakdown((SUBJECT_TO_DISCIPLINE.get(s, "unknown"), f) for s, f in zip(subjects, flags)),
        "by_question_type": breakdown(
            ("multiple-choice" if is_multiple_choice(r) else "open", f) for r, f in zip(rows, flags)
        ),
    }
    fallbacks = sum(1 for r in results if isinstance(r, dict) and r.get("random_fallback"))
    out["random_fallbacks"] = fallbacks
    out["overall"] = acc_entry(n_correct, len(rows))
    return out


def new_scorer(options: Mapping[str, Any], judge: Judge | None = None) -> Scorer:
    """A scorer for one sample index of a run: its own generator, drawn in dataset order, so that each
    sample repeats an official run's random fallback."""
    rng = new_rng()
    return lambda response, row: score(response, row, rng=rng, **options)


METADATA = Metadata(row_id=lambda row: str(row["id"]), headline="accuracy", new_scorer=new_scorer,
                    stateful_scoring=True)
