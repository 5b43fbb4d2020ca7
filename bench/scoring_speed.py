"""Scoring throughput: responses scored per second per benchmark on synthetic responses.

    python -m benchmarks.scoring_speed [--n 10000] [--symbolic-n 2000]

Responses are chain-of-thought-like text (about 1 KB of filler, then an answer in one of the forms
models use) against rows in each official schema (the fixture rows, without images). MathVision is
reported twice: items settled by the rules and cached/plain values, and items whose every answer is a
fresh LaTeX expression that must go through latex2sympy in the worker process (reported with the
mean and worst time per item; each item is bounded by its deadline).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from rlsd_harness.benchmarks import mathvision, mathvista, mmmu, wemath, zerobench
from tests import benchmark_fixtures as fixtures

_WORDS = "the of triangle so we compute area value sum angle then since therefore length ratio is a".split()


def _filler(rng: random.Random, size: int = 1000) -> str:
    words, n = [], 0
    while n < size:
        w = rng.choice(_WORDS)
        words.append(w)
        n += len(w) + 1
    return " ".join(words) + ".\n"


def _time(score: Callable[[str, dict], dict], pairs: list[tuple[str, dict]]) -> tuple[float, list[float]]:
    per_item = []
    start = time.perf_counter()
    for response, row in pairs:
        t = time.perf_counter()
        score(response, row)
        per_item.append(time.perf_counter() - t)
    return time.perf_counter() - start, per_item


def _mmmu_pairs(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    rows = [{k: v for k, v in r.items() if k != "images"} for r in fixtures.MMMU_ROWS]
    forms = ["The answer is ({L}).", "{L}", "So the final answer is {L}", "Answer: {N}", "It is {N} units", "hmm"]
    out = []
    for _ in range(n):
        row = rng.choice(rows)
        form = rng.choice(forms).format(L=rng.choice("ABCD"), N=round(rng.uniform(0, 100), 2))
        out.append((_filler(rng) + form, row))
    return out


def _mathvista_pairs(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    rows = [dict(r, query=fixtures._mathvista_query(r)) for r in fixtures.MATHVISTA_ROWS]
    forms = ["The answer is (B).", "\\boxed{{{N}}}", "Final answer: {N}", "[2014, 2016]", "so it is {N} g", "{N}"]
    out = []
    for _ in range(n):
        row = rng.choice(rows)
        form = rng.choice(forms).format(N=round(rng.uniform(0, 2000), rng.choice([0, 1, 2])))
        out.append((form if form[0].isdigit() and rng.random() < 0.3 else _filler(rng) + form, row))
    return out


def _mathvision_rule_pairs(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    mc = fixtures.MATHVISION_ROWS[0]
    free = dict(fixtures.MATHVISION_ROWS[2], answer="12")
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append((_filler(rng) + f"The answer is \\boxed{{{rng.choice('ABCDE')}}}", mc))
        else:
            out.append((_filler(rng) + f"so the area is \\boxed{{{rng.randint(0, 40)}}}", free))
    return out


def _mathvision_symbolic_pairs(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    free = dict(fixtures.MATHVISION_ROWS[3])  # gold "$4 \\pi$"
    out = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        latex = rng.choice([f"\\frac{{{a}}}{{{b + i}}}", f"{a}\\sqrt{{{b + i}}}", f"{a}\\pi+{i}", f"\\frac{{{a}\\pi}}{{{b + i}}}"])
        out.append((_filler(rng) + f"Therefore \\boxed{{{latex}}}", free))
    return out


def _zerobench_pairs(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    rows = fixtures.ZEROBENCH_ROWS
    return [(_filler(rng) + f"so the total is {{{round(rng.uniform(0, 20), 2)}}}", rng.choice(rows)) for _ in range(n)]


def _wemath_pairs(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    rows = fixtures.WEMATH_ROWS
    forms = ["<Thought process>: {F}<Answer>: <<{L}>>.", "Answer: {L}", "Because {F}", "The answer is {L}."]
    return [
        (rng.choice(forms).format(F=_filler(rng), L=rng.choice("ABCDE")), rng.choice(rows)) for _ in range(n)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="responses per benchmark")
    parser.add_argument("--symbolic-n", type=int, default=2_000, help="responses for MathVision's symbolic path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    mmmu_rng = mmmu.new_rng()
    evaluator = mathvision.default_evaluator()
    evaluator.values(["\\frac{1}{7}"], time.monotonic() + 120)  # start the worker outside the timing
    cases = [
        ("mmmu", lambda r, row: mmmu.score(r, row, rng=mmmu_rng), _mmmu_pairs(rng, args.n)),
        ("mathvista (rules)", mathvista.score, _mathvista_pairs(rng, args.n)),
        ("mathvision (rules)", mathvision.score, _mathvision_rule_pairs(rng, args.n)),
        ("mathvision (symbolic)", mathvision.score, _mathvision_symbolic_pairs(rng, args.symbolic_n)),
        ("zerobench", zerobench.score, _zerobench_pairs(rng, args.n)),
        ("wemath", wemath.score, _wemath_pairs(rng, args.n)),
    ]
    print(f"{'benchmark':<24}{'responses':>10}{'seconds':>10}{'per second':>12}{'mean ms':>10}{'max ms':>10}")
    for name, score, pairs in cases:
        total, per_item = _time(score, pairs)
        print(
            f"{name:<24}{len(pairs):>10}{total:>10.2f}{len(pairs) / total:>12.0f}"
            f"{1000 * total / len(pairs):>10.3f}{1000 * max(per_item):>10.1f}"
        )
    print(f"mathvision per-item deadline: {mathvision.DEFAULT_TIMEOUT:.1f} s; worker restarts: {evaluator.restarts}")


if __name__ == "__main__":
    main()
