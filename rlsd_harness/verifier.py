"""Verifiers: response text + gold answer -> reward and the parsed answer.

`math`: math-verify on the last \\boxed{} only (its default extraction falls back to any number in the text,
which would reward answers given without the required format). `exact`: the last \\boxed{} content compared
as an integer, or as an option letter. Both are bounded in time per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlsd_harness.answers import last_boxed


@dataclass
class Verdict:
    reward: float
    parsed: str | None


_INT = re.compile(r"^[+-]?\d+$")
_OPTION = re.compile(r"^\(?([A-Za-z])\)?$")


class ExactVerifier:
    name = "exact"

    def __call__(self, response: str, gold: str | int) -> Verdict:
        parsed = last_boxed(response, max_len=10_000)
        if parsed is None:
            return Verdict(0.0, None)
        p, g = parsed.strip(), str(gold).strip()
        if _INT.match(p) and _INT.match(g):
            return Verdict(float(int(p) == int(g)), p)
        mp, mg = _OPTION.match(p), _OPTION.match(g)
        if mp and mg:
            return Verdict(float(mp.group(1).upper() == mg.group(1).upper()), p)
        return Verdict(float(p == g), p)


class MathVerifier:
    """math-verify with strict boxed extraction. Its time limits use SIGALRM, so call it from the main thread
    (the trainer does); elsewhere the limits are off and the `max_chars` cap is what bounds the work."""

    name = "math"

    def __init__(self, timeout_s: int = 5, max_chars: int = 20_000) -> None:
        from math_verify import LatexExtractionConfig

        self.config = [LatexExtractionConfig(boxed_match_priority=0)]
        self.timeout_s = timeout_s
        self.max_chars = max_chars

    def __call__(self, response: str, gold: str | int) -> Verdict:
        import threading

        from math_verify import parse, verify

        boxed = last_boxed(response[-self.max_chars :], max_len=10_000)
        if boxed is None:
            return Verdict(0.0, None)
        main = threading.current_thread() is threading.main_thread()
        timeout = self.timeout_s if main else None
        try:
            pred = parse(f"\\boxed{{{boxed}}}", extraction_config=self.config, parsing_timeout=timeout)
            gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
            ok = bool(pred) and verify(gold_parsed, pred, timeout_seconds=timeout)
        except Exception:  # a malformed or pathological answer is wrong, never a crash
            ok = False
        return Verdict(float(ok), boxed)


VERIFIERS = {"exact": ExactVerifier, "math": MathVerifier}


def build_verifier(name: str):
    if name not in VERIFIERS:
        raise KeyError(f"unknown verifier {name!r}; valid: {', '.join(VERIFIERS)}")
    return VERIFIERS[name]()
