"""A committable copy of a finished study: `rlsd-report folder=<study> pack=<new folder>`.

A study folder holds what its runs need to resume: checkpoints, final weights, the tuning runs. A committed
copy keeps what its report is rebuilt from and what a rerun is compared with: the top-level files (tables,
plots, README, meta.json, the tuning files) and, per run, config.yaml, manifest.json, the completion markers,
metrics.jsonl and the per-item records of its budget-point evaluations. The jsonl files are stored
gzip-compressed with a fixed header time, so one study always packs to the same bytes, at about a seventh of
their size. The report reads either form (report.record_text). Weights, checkpoints, the routine
(validation) evaluation records and the tuning runs are left out.

Before the copy is put in place, its tables are rebuilt from the packed records and must equal the study's
own byte for byte; otherwise nothing is written.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

from rlsd_harness.analysis.report import metrics_lines, write_report
from rlsd_harness.config import ConfigError

RUN_FILES = ("config.yaml", "manifest.json", "finished.json", "failed.json")
CHECKED_TABLES = ("table.csv", "per_seed.csv", "claims.csv", "per_run_dynamics.csv", "factorial.csv")


def _plan(src: Path) -> list[tuple[Path, str]]:
    """(source file, path in the copy) for everything the copy keeps; '.gz' copies are compressed."""
    plan = [(f, f.name) for f in sorted(src.iterdir()) if f.is_file() and not f.name.startswith(".")]
    for run in sorted(p for p in (src / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")):
        plan += [(run / n, f"runs/{run.name}/{n}") for n in RUN_FILES if (run / n).is_file()]
        if not (run / "metrics.jsonl").is_file():
            continue
        plan.append((run / "metrics.jsonl", f"runs/{run.name}/metrics.jsonl.gz"))
        named = {line[k.replace("/budget_point", "/file")] for line in metrics_lines(run) for k in line
                 if k.endswith("/budget_point") and k.replace("/budget_point", "/file") in line}
        for rel in sorted(named):
            if not (run / rel).is_file():
                raise FileNotFoundError(f"{run / rel}: named by {run.name}'s metrics.jsonl as a budget-point record, "
                                        f"but missing; nothing packed")
            plan.append((run / rel, f"runs/{run.name}/{rel}.gz"))
    return plan


def pack_study(src: Path, dest: Path, exp: Any, meta: dict) -> tuple[int, int, int]:
    """Write the committable copy of study `src` (whose report is current) into the new folder `dest`;
    returns (files, bytes before, bytes after)."""
    src, dest = Path(src), Path(dest)
    if dest.exists():
        raise FileExistsError(f"pack={dest} exists; results are never overwritten: give a new folder")
    plan = _plan(src)
    tmp = dest.with_name(f".{dest.name}.packing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        before = after = 0
        for source, rel in plan:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            data = source.read_bytes()
            target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0) if rel.endswith(".gz") else data)
            before, after = before + len(data), after + target.stat().st_size
        write_report(tmp, exp, meta, plots=False)
        differ = [t for t in CHECKED_TABLES if (src / t).exists() and (src / t).read_bytes() != (tmp / t).read_bytes()]
        if differ:
            raise ConfigError(f"the packed copy of {src} rebuilds other {', '.join(differ)} than the study's own "
                              f"(is its report current? rlsd-report folder={src}); nothing packed")
        for source, rel in plan:  # the study's own README and tables, not the check's rebuild
            if "/" not in rel:
                shutil.copyfile(source, tmp / rel)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(plan), before, after
