"""No tracked source, config or doc points outside the repository: a user's clone has no spec files and no
sibling `shared` folder, so a comment that cites one cites nothing. The only allowed use is the tests that
locate the optional real benchmark files beside the repository (they skip when the folder is absent)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Spelled in pieces so that this file does not match its own patterns.
_SPECS, _SHARED = "specs", "shared"
FORBIDDEN = re.compile("|".join((
    re.escape(_SPECS + "/"),  # a path into a spec folder
    re.escape(_SPECS) + r"\s+§",  # the spec folder's name followed by a section sign
    # the spec files by name, wherever they are said to be
    r"\b(?:algorithms|benchmarks|cpu-stack|embedded-task|frameworks|statistics)\.md\b",
    re.escape(".." + "/" + _SHARED),  # a relative path to the sibling folder
    r"[\"']" + _SHARED + r"[\"']\s*/\s*[\"'](?!real-benchmarks[\"'])",  # a Path joined into that folder, not to the data
)))
# The real-data tests' one way of locating the optional real benchmark files (see tests/test_real_benchmarks.py).
ALLOWED = re.compile(r'^REAL = Path\(__file__\)\.resolve\(\)\.parents\[1\](?:\.parent| / "\.\.") / "'
                     + _SHARED + r'" / "real-benchmarks"$')


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.py", "*.yaml", "*.yml", "*.md"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout ({e}): the tracked files are unknown")
    return [ROOT / p for p in out.splitlines() if not p.startswith("results/")]


def outside_references(paths: list[Path]) -> list[str]:
    """`file:line: text` for every line of `paths` that points outside the repository."""
    hits = []
    for path in paths:
        if not path.exists():  # deleted in the working tree, not yet in the index
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line) and not (path.parts[-2] == "tests" and ALLOWED.match(line.strip())):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return hits


def test_patterns_catch_what_they_should(tmp_path):
    bad = tmp_path / "tests" / "bad.py"
    bad.parent.mkdir()
    spec_file = "algorithms" + ".md"
    lines = [f"# see {_SPECS}/{spec_file}", f"# ({_SPECS} §8)", f"x = '..{'/'}{_SHARED}/x'",
             f'P = Path(__file__).parent / "{_SHARED}" / "{_SPECS}"',
             f'REAL = Path(__file__).resolve().parents[1].parent / "{_SHARED}" / "real-benchmarks"',
             f"# Specs: {spec_file} §1.2", "# the RLSD paper (arXiv 2604.03128) §5"]
    bad.write_text("\n".join(lines) + "\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        hits = outside_references([bad])
    finally:
        ROOT = saved
    assert [h.split(":")[1] for h in hits] == ["1", "2", "3", "4", "6"]


def test_no_tracked_file_points_outside_the_repository():
    hits = outside_references(_tracked())
    assert not hits, "references outside the repository:\n" + "\n".join(hits)
