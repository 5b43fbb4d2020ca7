"""Training-dynamics measures read from response texts (the paper's leakage figure)."""

from __future__ import annotations

import re

# A response "leaks" when it refers to privileged information the student never saw, or when it states the
# final answer before any intermediate step (the answer was copied, not derived).
_REFERS = re.compile(r"reference|hint|given solution|correct solution|the solution says", re.IGNORECASE)
_STEP = re.compile(r"=|There (?:is|are) ")


def leakage_flags(texts: list[str]) -> list[bool]:
    flags = []
    for text in texts:
        box = text.find("\\boxed")
        step = _STEP.search(text)
        early_answer = box >= 0 and (step is None or step.start() > box)
        flags.append(bool(_REFERS.search(text)) or early_answer)
    return flags
