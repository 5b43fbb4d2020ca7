"""We-Math (testmini, 1,740 rows = 525 composite problems): official prompt, parsing and metrics.

Parsing (`parse`) is the official pandas chain (github.com/We-Math/We-Math,
evaluation/four_dimensional_metrics.py), exactly: take what follows
the last case-sensitive "Answer", strip, delete every `>`, `<`, `:` and `.`, strip again, and keep
the first character if it is one of A-H (else None). So "Because ..." parses as B, "The answer is B."
as None, "**Answer:** B" as None.

Metrics rebuild the official left merge in plain Python: per step count n (2 or 3) the rows of key
`{n}steps_1` are the base; `{n}steps_2..n` and `{n}steps_multi` join on `ID`. A missing piece is a
third state (NaN in the official frame) that is neither `== True` nor `== False`, so it only drops
the problem from the categories whose condition needs that piece. Categories (S_i sub-steps, M the
composite question): IK = any S wrong and M wrong; IG = all S right and M wrong; CM strict = all S
right and M right; CM loose = any S right and M right; RM strict = any S wrong and M right; RM loose
= all S wrong and M right. Rates: IK, IG, CM over N; RM over (CM + RM) of the same flavour.
Scores: (N - 0.5 IG - RM - IK) / N. The official code hard-codes N = 525; here N defaults to the
number of composite problems (525 on the full set) and can be given.
S1 = mean over sub-step rows of the merged problems, S2 / S3 = mean of M over two / three-step
problems (missing pieces skipped, as pandas' mean does).
"""

from __future__ import annotations

import re
from typing import Any

from rlsd_harness.benchmarks import Metadata, options_scorer
from rlsd_harness.benchmarks._common import (
    check_aligned,
    check_variant,
    decode,
    is_correct,
    load_rows,
    require,
)

NAME = "wemath"
SPLITS = ("testmini",)
VARIANTS = ("official", "vlmevalkit", "vlmevalkit_cot")
MODES = ("official",)
FULL_N = 525

_REQUIREMENT = (
    "Regarding the format, please answer following the template below, and be sure to include two <> symbols:\n"
    "<Thought process>:<<your thought process>>\n<Answer>:<<your option>>."
)


def load(
    source: str, split: str = "testmini", revision: str | None = None, *, allow_missing_images: bool = False
) -> list[dict]:
    """Rows of `testmini.json` / `.jsonl` / parquet; `image_path` is relative to the data file's folder
    (`2steps/image/1-1.png` in the official repository). A missing image file is an error unless
    `allow_missing_images` (then a warning and a text-only prompt for that row)."""
    rows = load_rows(
        NAME, source, split, revision, valid_splits=SPLITS, id_field="ID", image_fields=("image_path",),
        require_image="image_path", allow_missing_images=allow_missing_images,
    )
    for row in rows:
        require(NAME, row, ("key", "question", "option", "answer"), "ID")
    return rows


def option_lines(option: str) -> list[str]:
    """`"A. x;B. y; E. No correct answer"` -> `["A. x", "B. y", "E. No correct answer"]`."""
    return [part.strip() for part in str(option).split(";") if part.strip()]


def prompt(row: dict, variant: str = "official") -> tuple[str, list]:
    """official: the We-Math inference template; vlmevalkit: "Question: ...\\nOptions:\\nA. ..." (one
    option per line); vlmevalkit_cot: that plus the official format requirement."""
    check_variant(NAME, variant, VARIANTS)
    require(NAME, row, ("ID", "question", "option"), "ID")
    q, opt = row["question"], row["option"]
    if variant == "official":
        text = (
            "Now, we require you to solve a multiple-choice math question.\n"
            "Please briefly describe your thought process and provide the final answer(option).\n"
            f"Question: {q}\nOption: {opt}\n{_REQUIREMENT}"
        )
    else:
        text = f"Question: {q}\nOptions:\n" + "\n".join(option_lines(opt))
        if variant == "vlmevalkit_cot":
            text += "\n" + _REQUIREMENT
    img = row.get("image_path")
    return text, ([decode(img)] if img is not None else [])


_DROP = re.compile(r"[><:.]")


def parse(response: str) -> str | None:
    """The official letter parsing, exactly (see the module docstring)."""
    text = "" if response is None else str(response)
    text = _DROP.sub("", text.split("Answer")[-1].strip()).strip()
    return text[0] if text and text[0] in "ABCDEFGH" else None


def score(response: str, row: dict, *, mode: str = "official") -> dict:
    if mode not in MODES:
        raise ValueError(f"{NAME}: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    require(NAME, row, ("ID", "answer"), "ID")
    parsed = parse(response)
    return {"parsed": parsed, "correct": parsed == row["answer"]}


def _steps(key: str) -> tuple[int, str] | None:
    """`"3steps_multi"` -> (3, "multi"); keys outside {2,3}steps_* are ignored, as officially."""
    m = re.fullmatch(r"([23])steps_(\w+)", str(key))
    return (int(m.group(1)), m.group(2)) if m else None


def _mean(flags: list[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None  # the official code divides by zero here


def metrics(
    rows: list[dict], results: list, *, n: int | None = None, concept_domains: dict[str, str] | None = None
) -> dict:
    """IK, IG, CM, RM (strict and loose) counts and rates, Score (Strict/Loose), S1, S2, S3, and
    per knowledge concept accuracy (per domain too when `concept_domains` maps concept -> domain)."""
    check_aligned(NAME, rows, results)
    # pieces[(steps, ID)][part] = joker; later duplicates of a piece overwrite earlier ones.
    pieces: dict[tuple[int, str], dict[str, bool]] = {}
    concepts: dict[tuple[int, str], dict[str, Any]] = {}
    for row, res in zip(rows, results):
        kind = _steps(row.get("key"))
        if kind is None:
            continue
        steps, part = kind
        pid = (steps, str(row.get("ID")))
        pieces.setdefault(pid, {})[part] = is_correct(res)
        concepts.setdefault(pid, {})[part] = row.get("knowledge concept")

    problems = []  # (steps, [S_1..S_n], M) with None for a missing piece
    for (steps, pid), parts in sorted(pieces.items()):
        if "1" not in parts:
            continue  # the official left merge starts from the `{n}steps_1` rows
        subs = [parts.get(str(i)) for i in range(1, steps + 1)]
        problems.append((steps, pid, subs, parts.get("multi")))

    counts = {"IK": 0, "IG": 0, "CM_strict": 0, "CM_loose": 0, "RM_strict": 0, "RM_loose": 0}
    for _, _, subs, m in problems:
        any_wrong = any(s is False for s in subs)
        any_right = any(s is True for s in subs)
        all_right = all(s is True for s in subs)
        all_wrong = all(s is False for s in subs)
        counts["IK"] += any_wrong and m is False
        counts["IG"] += all_right and m is False
        counts["CM_strict"] += all_right and m is True
        counts["CM_loose"] += any_right and m is True
        counts["RM_strict"] += any_wrong and m is True
        counts["RM_loose"] += all_wrong and m is True

    total = len(problems) if n is None else n
    ik, ig = counts["IK"], counts["IG"]
    out: dict[str, Any] = {"N": total, "counts": counts}
    if total:
        out["Score (Strict)"] = (total - 0.5 * ig - counts["RM_strict"] - ik) / total
        out["Score (Loose)"] = (total - 0.5 * ig - counts["RM_loose"] - ik) / total
        out["IK"] = ik / total
        out["IG"] = ig / total
        out["CM (Strict)"] = counts["CM_strict"] / total
        out["CM (Loose)"] = counts["CM_loose"] / total
    else:
        for name in ("Score (Strict)", "Score (Loose)", "IK", "IG", "CM (Strict)", "CM (Loose)"):
            out[name] = None
    out["RM (Strict)"] = _rate(counts["RM_strict"], counts["CM_strict"] + counts["RM_strict"])
    out["RM (Loose)"] = _rate(counts["RM_loose"], counts["CM_loose"] + counts["RM_loose"])

    sub_flags = [s for _, _, subs, _ in problems for s in subs]
    out["S1"] = _mean(sub_flags)
    out["S2"] = _mean([m for steps, _, _, m in problems if steps == 2])
    out["S3"] = _mean([m for steps, _, _, m in problems if steps == 3])

    # Per knowledge concept over the same sub-step rows S1 uses; per domain = mean of concept means.
    per_concept: dict[str, list[bool]] = {}
    for steps, pid, subs, _ in problems:
        for i, flag in enumerate(subs, 1):
            concept = concepts[(steps, pid)].get(str(i))
            if flag is not None and concept is not None:
                per_concept.setdefault(concept, []).append(flag)
    concept_acc = {c: sum(f) / len(f) for c, f in sorted(per_concept.items())}
    out["by_concept"] = concept_acc
    if concept_domains is not None:
        per_domain: dict[str, list[float]] = {}
        for concept, domain in concept_domains.items():
            if concept in concept_acc:
                per_domain.setdefault(domain, []).append(concept_acc[concept])
        out["by_domain"] = {d: sum(v) / len(v) for d, v in sorted(per_domain.items())}
    return out


def problem_scores(ids: list[str], flags: list[list[bool]]) -> dict[str, float]:
    """Each complete composite problem's share of Score (Strict), averaged over the k samples: per sample,
    1 for CM, 0.5 for IG (all steps right, composite wrong), 0 for IK and RM; so that
    Score (Strict) = (N - 0.5 IG - RM - IK) / N is their mean over the N problems. Item ids are
    `ID/key` (`METADATA.row_id`); a problem missing any of its pieces is left out."""
    parts: dict[tuple[int, str], dict[str, list[bool]]] = {}
    for item_id, f in zip(ids, flags):
        pid, _, key = str(item_id).rpartition("/")
        kind = _steps(key)
        if kind is not None:
            parts.setdefault((kind[0], pid), {})[kind[1]] = [bool(x) for x in f]
    out = {}
    for (steps, pid), got in sorted(parts.items()):
        needed = [str(i) for i in range(1, steps + 1)] + ["multi"]
        if any(n not in got for n in needed):
            continue
        per_sample = []
        for j in range(min(len(got[n]) for n in needed)):
            subs, m = [got[str(i)][j] for i in range(1, steps + 1)], got["multi"][j]
            per_sample.append((1.0 if all(subs) else 0.0) if m else (0.5 if all(subs) else 0.0))
        out[f"{steps}steps/{pid}"] = sum(per_sample) / len(per_sample)
    return out


# "ID" names a composite problem; its one-step and multi-step sub-problems share it and differ by "key".
METADATA = Metadata(
    row_id=lambda row: f"{row['ID']}/{row['key']}",
    unit_scores=problem_scores,
    headline="Score (Strict)",
    secondary=(("Score (Loose)", "Score (Loose)"),),
    new_scorer=options_scorer(score),
    unit=lambda row: str(row["ID"]),  # a limited run keeps whole composite problems (their rows are spread out)
)
