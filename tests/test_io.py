"""rlsd_harness.io and rlsd_harness.trees: the one JSONL reader and its cut-last-line policy, the repair before an
append, the one atomic write, the one flattener; and that each of these has exactly one definition left."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlsd_harness.io import atomic_path, atomic_write_text, drop_cut_last_line, parse_jsonl, read_jsonl
from rlsd_harness.trees import flatten

PACKAGE = Path(__file__).resolve().parents[1] / "rlsd_harness"
ROWS = [{"a": 1}, {"b": [2, 3]}]
WHOLE = "".join(json.dumps(r) + "\n" for r in ROWS)


def test_a_cut_last_line_is_dropped_with_a_warning_and_the_file_is_not_touched(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(WHOLE + '{"c": ')
    warnings: list[str] = []
    assert read_jsonl(path, warn=warnings.append) == ROWS
    assert len(warnings) == 1 and "cut last line" in warnings[0] and str(path) in warnings[0]
    assert path.read_text() == WHOLE + '{"c": '  # reading never writes
    assert read_jsonl(path) == ROWS  # no warn given: dropped silently


def test_blank_lines_are_skipped_and_a_bad_line_before_the_end_names_its_line(tmp_path):
    assert parse_jsonl("\n" + WHOLE + "\n\n", "x") == ROWS
    assert parse_jsonl(WHOLE + '{"c": \n\n  \n', "x") == ROWS  # trailing blank lines: still the last line
    with pytest.raises(ValueError, match=r"m\.jsonl: line 2 is not JSON"):
        parse_jsonl('{"a": 1}\n{"cut\n{"b": 2}\n', "m.jsonl")


def test_a_missing_file_is_empty_only_when_asked(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "none.jsonl")


@pytest.mark.parametrize("text, repaired, changed", [
    (WHOLE + '{"c": ', WHOLE, True),  # a cut last line: cut off
    ('{"c": ', "", True),  # the file is one cut line
    (WHOLE + '{"c": 4}', WHOLE + '{"c": 4}\n', True),  # a whole value that missed only its newline
    (WHOLE, WHOLE, False),
    ("", "", False),
])
def test_drop_cut_last_line_ends_the_file_at_its_last_complete_line(tmp_path, text, repaired, changed):
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    assert drop_cut_last_line(path) is changed
    assert path.read_text() == repaired
    with path.open("a") as f:  # what an appender then writes starts a line of its own
        f.write(json.dumps({"d": 5}) + "\n")
    assert parse_jsonl(path.read_text(), path)[-1] == {"d": 5}
    assert drop_cut_last_line(tmp_path / "missing.jsonl") is False and not (tmp_path / "missing.jsonl").exists()


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.md"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_flatten_keeps_order_prefix_and_empty_mappings_as_asked():
    tree = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}
    assert flatten(tree) == {"a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}
    assert list(flatten(tree)) == ["a.b", "a.c.d", "e", "f"]
    assert flatten(tree, keep_empty=False) == {"a.b": 1, "a.c.d": [1, 2], "f": None}
    assert flatten(tree, "train.") == {"train.a.b": 1, "train.a.c.d": [1, 2], "train.e": {}, "train.f": None}
    assert flatten(OmegaConf.create(tree))["a.b"] == 1  # a DictConfig is a Mapping too


# One definition of each: the counts the issue asks to bring to one (issue #27, "one way each").
# Readers of a line-based protocol or of a data set, not of the harness's records: the sandboxed SymPy worker's
# pipe, and the dataset loaders (which read their input strictly: a cut data file is an error, not a kill).
NOT_RECORDS = {"benchmarks/_symbolic.py", "local_files.py"}
ONE_DEFINITION = {  # what: (pattern, the one file that may match, files whose matches are something else)
    "JSONL reader (json.loads of a file's lines)": (r"json\.loads\((line|raw)\)", {"io.py"}, NOT_RECORDS),
    "atomic write (temporary file renamed over the target)": (
        r"mkstemp|\btmp\.replace\(|os\.replace\(tmp, (path|out|dest)\)", {"io.py"}, set()),
    "pass@k": (r"def _?pass_at_k\(", {"benchmarks/__init__.py"}, set()),
    # the local-file loader of data=local and the benchmarks: one split rule, one reader of each format
    "split rule of a folder of data files": (r"def _?split_files\(", {"local_files.py"}, set()),
    # (rlsd-filter's write_local copies the kept rows of a file into a file of the same format: a writer)
    "data-file reader": (r"pq\.read_table\(|ipc\.open_stream\(|Dataset\.from_file\(", {"local_files.py"},
                         {"evaluation/difficulty.py"}),
    "nested-dict flattener": (r"def _?flat(ten)?\(", {"trees.py"}, set()),
    # an engine asked for seeded samples: evaluation, the benchmark runner and rlsd-filter go through
    # rollout/scored.py's generate_and_score (the trainer's rollout samples for training, not to score items)
    "generate-and-score loop": (r"\.generate\(.*, seeds\)", {"rollout/scored.py"}, {"training/trainer.py"}),
}


@pytest.mark.parametrize("what", list(ONE_DEFINITION))
def test_each_helper_is_defined_once_in_the_package(what):
    pattern, where, other = ONE_DEFINITION[what]
    found = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(pattern, p.read_text())}
    assert found - other == where, f"{what}: found in {sorted(found)}"


def test_the_ledger_is_charged_tokens_and_flops_in_one_place():
    """Trainer._book is the one caller of Ledger.add (the FLOPs total sums its keys in the order they first
    appear, so the booking order lives in one function)."""
    sites = [f"{p.relative_to(PACKAGE)}:{text[:m.start()].count(chr(10)) + 1}" for p in PACKAGE.rglob("*.py")
             for text in [p.read_text()] for m in re.finditer(r"\b(ledger|led)\.add\(", text)]
    assert len(sites) == 1 and sites[0].startswith("training/trainer.py"), f"Ledger.add called at {sites}"
