"""MathVision's symbolic step, `round(eval(str(latex2sympy(s))), 2)`, made safe.

The official scorer evaluates model and dataset strings with Python `eval` after latex2sympy. Here:
- `safe_eval` walks the AST of `str(latex2sympy(s))` and allows only numeric literals (int, float,
  bool), unary +/-, the binary operators + - * / // % **, names from `math` (what `from math import *`
  puts in scope: pi, e, tau, inf, nan) and calls of `math` functions with positional arguments. Any
  other node (attribute, subscript, lambda, string, tuple, builtins, ...) is an error, and errors
  count as "not equal", as the official bare `except` does. Integer powers with an exponent above
  10,000 on a base other than 0/1/-1 are refused (they would only exhaust memory).
- latex2sympy and the evaluation run in a separate worker process (`python _symbolic.py`), fed over
  a pipe, under a 2 GiB address-space limit. The caller gives every request a deadline; a worker that
  misses it is killed and a fresh one is started on the next request. So a pathological string costs
  at most its deadline and never runs code.
- Values are cached per string in the parent (the value of a string does not depend on the item);
  plain numbers and single letters are answered without the worker (tests check that they match).
- Strings longer than 1,000 characters count as unequal without being parsed (no gold comes near
  that; a 1 MB response would otherwise cost a full deadline and a worker restart).

This file imports nothing from the project so that the worker starts fast and alone.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import re
import select
import subprocess
import sys
import threading
import time
from typing import Any

_MATH = {name: getattr(math, name) for name in dir(math) if not name.startswith("_")}
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_MAX_INT_EXPONENT = 10_000
_MAX_ABS_INT = 10**4000  # larger ints cannot be printed by Python's default int/str limit anyway
MAX_SYMBOLIC_CHARS = 1000


def _ev(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float, bool):
            return node.value
        raise ValueError(f"literal {type(node.value).__name__} not allowed")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _ev(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _ev(node.left), _ev(node.right)
        if (
            isinstance(node.op, ast.Pow)
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(right) > _MAX_INT_EXPONENT
            and abs(left) > 1
        ):
            raise OverflowError("integer power too large")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Name):
        value = _MATH.get(node.id)
        if value is None or callable(value):
            raise NameError(node.id)
        return value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and callable(_MATH.get(node.func.id))
        and not node.keywords
        and not any(isinstance(a, ast.Starred) for a in node.args)
    ):
        return _MATH[node.func.id](*[_ev(a) for a in node.args])
    raise ValueError(f"{type(node).__name__} not allowed")


def safe_eval(text: str) -> Any:
    """Evaluate an arithmetic expression over `math` names; raise on anything else."""
    return _ev(ast.parse(text.strip(), mode="eval").body)


def symbolic_value(s: str) -> int | float | None:
    """`round(eval(str(latex2sympy(s))), 2)`, or None where the official code would raise."""
    from latex2sympy2_extended import latex2sympy

    try:
        value = round(safe_eval(str(latex2sympy(s))), 2)
    except BaseException as exc:  # noqa: BLE001 - RecursionError/MemoryError are "not equal" too
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return None
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float) or (isinstance(value, int) and abs(value) >= _MAX_ABS_INT):
        return None
    return value


# ----------------------------------------------------------------------------- answers without the worker

# ASCII digits only: `\d` also matches other scripts' digits (Arabic-Indic, full-width), which Python's
# int()/float() read as numbers but latex2sympy's grammar does not, so the official value is an error.
_PLAIN_INT = re.compile(r"-?[0-9]{1,15}")
_PLAIN_DEC = re.compile(r"-?[0-9]+\.[0-9]+")


def quick_value(s: str) -> tuple[bool, int | float | None]:
    """(known, value) for strings whose latex2sympy value is certain without running it: ASCII integers
    (sympy Integer), decimals with at most 15 significant digits (a 53-bit sympy Float prints them back
    to the same double) and single letters (a Symbol, or E for "e": not a `math` name, so an error)."""
    if _PLAIN_INT.fullmatch(s):
        return True, int(s)
    if _PLAIN_DEC.fullmatch(s) and len(s.lstrip("-").replace(".", "").lstrip("0")) <= 15:
        value = float(s)
        return True, round(value if value != 0 else 0.0, 2)  # sympy has no negative zero: "-0.0" is 0.0
    if len(s) == 1 and s.isascii() and s.isalpha():
        return True, None
    return False, None


# ----------------------------------------------------------------------------- the worker process


def _worker_main() -> None:
    try:
        import resource

        limit = 2 * 1024**3
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    sys.set_int_max_str_digits(0)
    from latex2sympy2_extended import latex2sympy

    latex2sympy("1+1")  # warm the parser before saying ready
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        strings = json.loads(line)
        out.write(json.dumps([symbolic_value(s) for s in strings]) + "\n")
        out.flush()


class SymbolicTimeout(Exception):
    """The worker missed the deadline; it has been killed."""


class SymbolicEvaluator:
    """Values of strings through a worker process, with a cache and per-request deadlines."""

    def __init__(self, startup_timeout: float = 120.0, max_cache: int = 200_000):
        self.startup_timeout = startup_timeout
        self.max_cache = max_cache
        self.cache: dict[str, int | float | None] = {}
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="utf-8", bufsize=1,
        )
        line = self._read_line(proc, time.monotonic() + self.startup_timeout)
        if line != "ready":
            self._kill(proc)
            raise RuntimeError("mathvision: the symbolic worker did not start")
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen, deadline: float) -> str | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line.strip() if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        with self.lock:
            if self.proc is not None:
                self._kill(self.proc)
                self.proc = None

    def values(self, strings: list[str], deadline: float) -> list[int | float | None]:
        """Values in order; raise SymbolicTimeout if the worker misses `deadline` (time.monotonic)."""
        known: dict[str, int | float | None] = {}
        missing: list[str] = []
        for s in strings:
            if len(s) > MAX_SYMBOLIC_CHARS:
                known[s] = None
                continue
            ok, value = quick_value(s)
            if ok:
                known[s] = value
            elif s in self.cache:
                known[s] = self.cache[s]
            elif s not in missing:
                missing.append(s)
        if missing:
            with self.lock:
                if self.proc is None or self.proc.poll() is not None:
                    self.proc = self._start()  # start-up time is not charged to the item
                    self.restarts += 1
                try:
                    self.proc.stdin.write(json.dumps(missing) + "\n")
                    self.proc.stdin.flush()
                    line = self._read_line(self.proc, deadline)
                except (BrokenPipeError, OSError):
                    line = None
                if line is None:
                    self._kill(self.proc)
                    self.proc = None
                    raise SymbolicTimeout()
                got = json.loads(line)
            if len(self.cache) + len(missing) > self.max_cache:
                self.cache.clear()
            for s, value in zip(missing, got):
                self.cache[s] = value
                known[s] = value
        return [known[s] for s in strings]


_DEFAULT: SymbolicEvaluator | None = None


def default_evaluator() -> SymbolicEvaluator:
    global _DEFAULT
    if _DEFAULT is None:
        import atexit

        _DEFAULT = SymbolicEvaluator()
        atexit.register(_DEFAULT.close)
    return _DEFAULT


if __name__ == "__main__":
    _worker_main()
