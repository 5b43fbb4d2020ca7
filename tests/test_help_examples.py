"""Every command's --help ends with examples, and every example runs as written: the fast ones here, the ones
that train, warm up or evaluate a model with `make test-slow`. They run from a scratch folder holding a copy of
results/embedded (the committed demo study: its runs keep no weights) and a link to the package (the shipped
bases), so none of them writes into the repository; rlsd-train's run.dir (relative to the repository) is sent to
the scratch folder."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
from pathlib import Path

import pytest

from rlsd_harness.cli import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
# the console scripts of pyproject.toml's [project.scripts] (no tomllib: Python 3.10 is supported)
SCRIPTS = dict(re.findall(r'^(rlsd-[\w-]+) = "([\w.:]+)"', (ROOT / "pyproject.toml").read_text(), re.M))
HEADER = "examples (from the repository root):"


def entry(prog: str):
    module, _, func = SCRIPTS[prog].partition(":")
    return getattr(importlib.import_module(module), func)


def shown_examples(prog: str, capsys) -> list[str]:
    """The example command lines `prog --help` prints."""
    with pytest.raises(SystemExit) as exit_info:
        entry(prog)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert HEADER in text, f"{prog} --help shows no examples"
    return [line.strip() for line in text.split(HEADER, 1)[1].splitlines() if line.startswith(f"  {prog} ")
            or line.strip() == prog]


def test_every_command_shows_examples(capsys):
    for prog in SCRIPTS:
        shown = shown_examples(prog, capsys)
        assert shown and shown == [command for command, _, _ in EXAMPLES[prog]], (prog, shown)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    if not (ROOT / "results" / "embedded" / "credit_rlsd.json").is_file():
        pytest.skip("results/embedded (the committed demo study) is not in this checkout")
    shutil.copytree(ROOT / "results" / "embedded", tmp_path / "results" / "embedded")
    (tmp_path / "rlsd_harness").symlink_to(ROOT / "rlsd_harness")
    monkeypatch.chdir(tmp_path)

    return tmp_path


def run_examples(cost: str, scratch: Path, capsys) -> list[str]:
    ran = []
    for prog, examples in EXAMPLES.items():
        for command, _, example_cost in examples:
            if example_cost != cost:
                continue
            argv = shlex.split(command)[1:]
            if prog == "rlsd-train":
                argv.append(f"run.dir={scratch / 'results' / 'runs'}")
            try:
                entry(prog)(argv)
            except SystemExit as e:
                assert e.code in (0, None), f"{command} exited {e.code}: {capsys.readouterr().err[-2000:]}"
            said = capsys.readouterr()
            assert (said.out + said.err).strip(), f"{command} printed nothing"  # rlsd-train logs to stderr
            ran.append(command)
    return ran


def test_the_fast_examples_run(scratch, capsys):
    ran = run_examples("fast", scratch, capsys)
    assert "rlsd-credit study=results/embedded out=credit.png" in ran
    assert (scratch / "credit.png").stat().st_size > 0 and (scratch / "credit.json").is_file()
    assert (scratch / "results" / "embedded" / "table.md").is_file()


@pytest.mark.slow
def test_the_slow_examples_run(scratch, capsys):
    ran = run_examples("slow", scratch, capsys)
    assert ran and (scratch / "results" / "runs" / "try-rlsd" / "credit.png").stat().st_size > 0
    assert "failed" not in (scratch / "try-smoke" / "table.md").read_text()
    assert not (ROOT / "try-smoke").exists()  # a relative out= is the cwd's, runs included


def test_rlsd_credit_on_a_committed_run_says_what_it_needs(scratch, capsys):
    """The committed runs keep no weights: one line naming what is missing and the command that works."""
    with pytest.raises(SystemExit) as exit_info:
        entry("rlsd-credit")(["run=results/embedded/runs/rlsd-s0"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "keeps no final weights" in err and "rlsd-credit study=results/embedded" in err, err
