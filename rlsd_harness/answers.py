"""Reading the final answer out of a response: the one `\\boxed{...}` parser every verifier and scorer uses."""

from __future__ import annotations

BOX = "\\boxed{"


def last_boxed(text: str, tries: int = 1, max_len: int | None = None) -> str | None:
    """Content of the last brace-balanced `\\boxed{...}`; None when there is none.

    An unclosed last box is skipped for the one before it up to `tries` boxes (MathVista's rules look at the
    last three; the training verifiers at the last one only), so that a response full of unclosed boxes stays
    linear. `max_len` bounds the characters scanned inside one box.
    """
    start = text.rfind(BOX)
    for _ in range(tries):
        if start == -1:
            return None
        depth, i = 1, start + len(BOX)
        stop = len(text) if max_len is None else min(len(text), i + max_len)
        for j in range(i, stop):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j]
        start = text.rfind(BOX, 0, start)
    return None
