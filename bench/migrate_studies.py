"""Migrate study folders once to what the analysis reads today, so that it keeps no legacy path (issue #27):

- metrics.jsonl (or its packed metrics.jsonl.gz) of every run: the trainer's flat metric names of older runs
  ("reward", "kl", "cum/flops/total", ...) rewritten to their namespaces (training/metrics.py: namespaced,
  the mapping the trainer applies when it writes a line); files that already use them are left untouched.
- picks.json of a grid-tuned study: the tuning seeds and overrides, which older studies kept only in the first
  line of tuning.md, added as "seeds" and "overrides" (analysis/tuning/grid.py: earlier_picks reads them).

    .venv/bin/python bench/migrate_studies.py results/*/            # rewrite in place, print what changed
    .venv/bin/python bench/migrate_studies.py --check results/*/    # only say what would change; exit 1 if any

Idempotent: a second pass changes nothing. A packed file is recompressed as analysis/pack.py writes it
(level 9, header time 0), so the same content packs to the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

from rlsd_harness.io import atomic_path, atomic_write_text, parse_jsonl
from rlsd_harness.training.metrics import namespaced

TUNED_WITH = re.compile(r"seeds (\[[^\]]*\]), overrides `([^`]*)`")


def migrate_metrics(path: Path, write: bool) -> int:
    """Rewrite one metrics.jsonl[.gz] to namespaced names; returns how many lines change (0: untouched)."""
    packed = path.suffix == ".gz"
    text = gzip.decompress(path.read_bytes()).decode() if packed else path.read_text()
    lines = parse_jsonl(text, path)
    new = [namespaced(m) for m in lines]
    changed = sum(a != b for a, b in zip(lines, new))
    if changed and write:
        out = "".join(json.dumps(m) + "\n" for m in new)
        if packed:
            with atomic_path(path) as tmp:
                tmp.write_bytes(gzip.compress(out.encode(), compresslevel=9, mtime=0))
        else:
            atomic_write_text(path, out)
    return changed


def migrate_picks(folder: Path, write: bool) -> str | None:
    """Add seeds and overrides from tuning.md's first line to a picks.json that lacks them; returns what was
    added, None when there is nothing to add."""
    picks_file = folder / "picks.json"
    recorded = json.loads(picks_file.read_text())
    if recorded.get("mode") == "optuna" or ("seeds" in recorded and "overrides" in recorded):
        return None
    header = (folder / "tuning.md").read_text().split("\n", 1)[0]
    found = TUNED_WITH.search(header)
    if found is None:
        raise ValueError(f"{folder / 'tuning.md'}: its first line {header!r} names no 'seeds [...], overrides `...`'")
    seeds, overrides = json.loads(found.group(1)), found.group(2).split()
    migrated = {}
    for key, value in recorded.items():  # in write_tuning's order: ..., base, seeds, overrides, picks
        if key == "picks":
            migrated.update(seeds=seeds, overrides=overrides)
        migrated[key] = value
    if write:
        atomic_write_text(picks_file, json.dumps(migrated, indent=1) + "\n")
    return f"seeds {seeds}, overrides {overrides}"


def migrate(folder: Path, write: bool) -> list[str]:
    """Every change migrating `folder` makes (or would make), one line each."""
    said = []
    for path in sorted(folder.rglob("metrics.jsonl")) + sorted(folder.rglob("metrics.jsonl.gz")):
        n = migrate_metrics(path, write)
        if n:
            said.append(f"{path}: {n} line(s) with flat metric names -> namespaced")
    for picks in sorted(folder.rglob("picks.json")):
        added = migrate_picks(picks.parent, write)
        if added:
            said.append(f"{picks}: + {added}")
    return said


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="study folders (or folders holding them)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when anything would change")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"not folders: {', '.join(missing)}")
    said = [line for f in args.folders for line in migrate(f, write=not args.check)]
    print("\n".join(said) if said else "nothing to migrate")
    return 1 if said and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
