"""Every `rlsd-train` line in the README's code blocks composes and validates as written: the command line is
parsed by rlsd-train's own CLI, up to the composed config (the run itself is not started), and the config passes
the schema. A key renamed or removed since the README was written fails here. (The paper-table blocks are run
end to end by tests/test_readme_rehearsal.py; lines with placeholders such as `<folder>` or `...` are skipped.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(prog: str) -> list[str]:
    """The README's code-block lines that run `prog`, continuation lines joined, comments dropped."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True) if line.strip() else []
            if words and Path(words[0]).name == prog and not any(w.startswith(("<", "...")) or "<" in w for w in words):
                out.append(" ".join(shlex.quote(w) for w in words))
    return out


def test_the_readme_shows_training_commands():
    assert len(readme_commands("rlsd-train")) >= 5


@pytest.mark.parametrize("line", readme_commands("rlsd-train"))
def test_every_readme_training_command_composes_and_validates(line, monkeypatch):
    from rlsd_harness.cli import train
    from rlsd_harness.training import run
    from rlsd_harness.training.preflight import check_config

    composed = []
    monkeypatch.setattr(run, "run", lambda cfg, resume_command=None: composed.append(cfg))
    train.main(shlex.split(line)[1:])
    (cfg,) = composed
    check_config(cfg)
