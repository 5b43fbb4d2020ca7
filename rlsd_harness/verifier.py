"""Verifiers: response text + gold answer -> reward and the parsed answer.

`math`: math-verify on the last \\boxed{} only (its default extraction falls back to any number in the text,
which would reward answers given without the required format). `exact`: the last \\boxed{} content compared
as an integer, or as an option letter.

Every verifier is bounded per answer, because the answer is whatever the policy wrote:
- size: only the last `max_chars` characters of a response are searched, and a box's content is read up to
  `max_box_chars`; `math` hands at most `max_answer_chars` of it to the symbolic parser (longer contents are
  compared as text);
- time: `exact` does linear string work only; `math` compares as text an answer whose structure can make
  sympy compute a huge number or recurse deeply (a fixed screen), and runs parsing and comparison of the
  rest under one `time_limit_s` deadline (a SIGALRM timer, so on the main thread only);
- integers are compared as digit strings, never through int(): CPython refuses to convert more than 4,300
  digits (sys.get_int_max_str_digits), and lifting that limit makes a long answer quadratic to convert.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from rlsd_harness.answers import last_boxed


@dataclass
class Verdict:
    reward: float
    parsed: str | None


_INT = re.compile(r"^[+-]?\d+$")
_OPTION = re.compile(r"^\(?([A-Za-z])\)?$")
_SPACE = re.compile(r"\s+")


def _integer_key(text: str) -> str | None:
    """A plain integer as a canonical digit string ("+007" -> "7", "-0" -> "0"); None for anything else."""
    t = text.strip()
    if not _INT.match(t):
        return None
    sign = "-" if t[0] == "-" else ""
    digits = t.lstrip("+-").lstrip("0") or "0"
    return digits if digits == "0" else sign + digits


class ExactVerifier:
    name = "exact"

    def __init__(self, max_chars: int = 20_000, max_box_chars: int = 10_000) -> None:
        self.max_chars, self.max_box_chars = max_chars, max_box_chars

    def __call__(self, response: str, gold: str | int) -> Verdict:
        parsed = last_boxed(response[-self.max_chars :], max_len=self.max_box_chars)
        if parsed is None:
            return Verdict(0.0, None)
        p, g = parsed.strip(), str(gold).strip()
        ip, ig = _integer_key(p), _integer_key(g)
        if ip is not None and ig is not None:
            return Verdict(float(ip == ig), p)
        mp, mg = _OPTION.match(p), _OPTION.match(g)
        if mp and mg:
            return Verdict(float(mp.group(1).upper() == mg.group(1).upper()), p)
        return Verdict(float(p == g), p)


class _OutOfTime(BaseException):
    """Raised by the deadline's signal handler. A BaseException, so that the `except Exception` clauses
    inside math-verify and sympy cannot swallow it and carry on past the deadline."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[bool]:
    """Raise _OutOfTime in this thread after `seconds` (yields whether a deadline is armed: only on the main
    thread, and only when no other timer is pending, which it would replace)."""
    armed = (seconds is not None and threading.current_thread() is threading.main_thread()
             and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not armed:
        yield False
        return

    def expire(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(depth - 1, 0)
    return deepest


# What makes sympy compute a huge exact number: a numeric power in an exponent (9^{9^{9}}; e^{-x^{2}} is
# fine), an exponent of six or more digits (7^{123456789}), a factorial of a five-digit number or of an
# expression ((10^{8})!), a binomial coefficient of such numbers.
_COSTLY = re.compile(r"\^\s*\{[^{}]*\d\s*\^|\^\s*\{?\s*[+-]?\d{6}|\d{5}\s*!|[)}\]]\s*!"
                     r"|\\(?:binom|choose|dbinom|tbinom)\b[^$]*(?:\^|\d{5})")


class _QuietTimeoutNotice(logging.Filter):
    """math-verify warns on every call that its own timeouts are off; here the deadline above replaces them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_WARM: list[bool] = []


def _warm_up(config: list) -> None:
    """Parse and compare a few answers once per process, without a deadline: the first parse loads the LaTeX
    grammar (0.6 s here), which would otherwise run out the first answer's time, and an interrupt in the
    middle of that loading would leave the parser broken for every later answer."""
    if _WARM:
        return
    from math_verify import parse, verify

    for answer, gold in (("\\frac{1}{2}", "0.5"), ("e^{-x^{2}}", "e^{-x^2}"), ("(1,2)", "(1, 2)"),
                         ("\\{1,2\\}", "\\{2,1\\}"), ("[0,1)", "[0, 1)"), ("x=1", "1")):
        verify(parse(f"${gold}$", parsing_timeout=None),
               parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=None), timeout_seconds=None)
    _WARM.append(True)


class MathVerifier:
    """math-verify with strict boxed extraction, bounded per answer (see the module docstring). An answer
    nested deeper than `max_nesting`, or with a construct that makes sympy compute a huge exact number
    (`_COSTLY`), is compared as text instead of symbolically: a screen that does not depend on the machine's
    load. Anything else gets `time_limit_s` for parsing and comparison together (main thread only: off it,
    the screen is the only bound); on a heavily loaded machine a slow but legitimate comparison can run out
    of it and score as wrong, so the limit is a backstop well above the milliseconds a usual answer takes."""

    name = "math"

    def __init__(self, time_limit_s: float = 0.8, max_chars: int = 20_000, max_box_chars: int = 10_000,
                 max_answer_chars: int = 1_000, max_nesting: int = 8) -> None:
        from math_verify import LatexExtractionConfig

        self.config = [LatexExtractionConfig(boxed_match_priority=0)]
        self.time_limit_s = time_limit_s
        self.max_chars, self.max_box_chars = max_chars, max_box_chars
        self.max_answer_chars, self.max_nesting = max_answer_chars, max_nesting
        for name in ("math_verify.parser", "math_verify.grader"):
            log = logging.getLogger(name)
            if not any(isinstance(f, _QuietTimeoutNotice) for f in log.filters):
                log.addFilter(_QuietTimeoutNotice())
        _warm_up(self.config)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _gold(gold: str):
        """The parsed gold answer: the same gold is verified against every response of its group."""
        from math_verify import parse

        return parse(f"${gold}$", parsing_timeout=None)

    def __call__(self, response: str, gold: str | int) -> Verdict:
        from math_verify import parse, verify

        boxed = last_boxed(response[-self.max_chars :], max_len=self.max_box_chars)
        if boxed is None:
            return Verdict(0.0, None)
        gold = str(gold)
        ib, ig = _integer_key(boxed), _integer_key(gold)
        if ib is not None and ig is not None:  # exact, for any number of digits
            return Verdict(float(ib == ig), boxed)
        as_text = float(_SPACE.sub("", boxed) == _SPACE.sub("", gold))
        if len(boxed) > self.max_answer_chars:
            return Verdict(as_text, boxed)
        if _nesting(boxed) > self.max_nesting or _COSTLY.search(boxed):  # deterministic, whatever the load
            return Verdict(as_text, boxed)
        ok = False
        try:
            with _deadline(self.time_limit_s):
                pred = parse(f"\\boxed{{{boxed}}}", extraction_config=self.config, parsing_timeout=None)
                ok = bool(pred) and verify(self._gold(gold), pred, timeout_seconds=None)
        except _OutOfTime:  # too costly to decide symbolically
            ok = bool(as_text)
        except Exception:  # a malformed or pathological answer is wrong, never a crash
            ok = bool(as_text)
        return Verdict(float(ok), boxed)


VERIFIERS = {"exact": ExactVerifier, "math": MathVerifier}


def build_verifier(name: str):
    if name not in VERIFIERS:
        raise KeyError(f"unknown verifier {name!r}; valid: {', '.join(VERIFIERS)}")
    return VERIFIERS[name]()
