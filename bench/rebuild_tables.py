"""Rebuild the committed studies' tables from their records and check that every committed file comes out the
same, byte for byte (PNGs excepted: matplotlib's output is not byte-stable across versions).

    .venv/bin/python bench/rebuild_tables.py                      # every study below
    .venv/bin/python bench/rebuild_tables.py reference slurm-study/local   # some of them
    .venv/bin/python bench/rebuild_tables.py --work /tmp/rebuild  # where the copies go (default: a temp folder)

Each study folder under results/ is copied whole to the work folder and `rlsd-report folder=<copy>` (with
`table=paper` for the paper rehearsal, whose runs carry benchmark evaluations instead of a comparison's
tables) runs on the copy, so the committed folder is never written. Then every file git tracks in the
study (non-PNG) is compared with the copy's. results/tuning-protocols is the tuning report that
`python -m rlsd_harness.analysis.tuning report` builds from copies of the three tuned studies (PROTOCOLS;
reference_horizon keeps only its tuning records), compared file for file with the committed one (its dry-run
plan excepted: `rlsd-compare dry_run=true` writes that). Prints one line per study and each differing file; exits 1 when
any file differs or a report fails. Used by tests/test_rebuild_tables.py and after any change to the analysis
code (issue #27: "the committed studies' tables rebuild byte-identical from their records")."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# study folder -> extra rlsd-report arguments
STUDIES: dict[str, list[str]] = {
    "embedded": [],
    "reference": [],
    "reference-lr5e-5": [],
    "reference_optuna": [],
    "tuning-protocols": [],  # the tuning report of PROTOCOLS side by side
    "paper-rehearsal": ["table=paper"],
    "controls": [],
    "ablation_rlsd_factorial": [],
    "slurm-study/local": [],  # the same study through launcher=local and through Slurm
    "slurm-study/slurm": [],
}

PROTOCOLS = ("reference", "reference_horizon", "reference_optuna")  # the tuning protocols' studies, in report order
NOT_REPORTED = ("reference_optuna_plan.txt",)  # written by rlsd-compare dry_run=true, not by the tuning report


def tracked_files(study: Path) -> list[Path]:
    """The files git tracks under `study`, relative to it."""
    out = subprocess.run(["git", "ls-files", "-z", "--", str(study.relative_to(ROOT))], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return [Path(p).relative_to(study.relative_to(ROOT)) for p in out.split("\0") if p]


def rebuild(name: str, work: Path, python: str = sys.executable) -> list[str]:
    """Copy results/<name> into `work`, run the report there, return the differing committed files ('' = none)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    source = ROOT / "results" / name
    copy = work / name
    if copy.exists():
        shutil.rmtree(copy)
    if name == "tuning-protocols":
        inputs = []
        for study in PROTOCOLS:  # copied under their own names: the report prints each folder's name
            inputs.append(work / "tuning-inputs" / study)
            if inputs[-1].exists():
                shutil.rmtree(inputs[-1])
            shutil.copytree(ROOT / "results" / study, inputs[-1])
        command = [python, "-m", "rlsd_harness.analysis.tuning", "report", *map(str, inputs), f"out={copy}"]
        compared = [(source / rel, copy / rel) for rel in tracked_files(source) if str(rel) not in NOT_REPORTED]
    else:
        shutil.copytree(source, copy)
        command = [python, "-m", "rlsd_harness.cli.report", f"folder={copy}", *STUDIES[name]]
        compared = [(source / rel, copy / rel) for rel in tracked_files(source)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return [f"{' '.join(command[1:4])} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"]
    differ = []
    for old, new in compared:
        rel = old.relative_to(ROOT)
        if old.suffix == ".png":
            continue
        if not new.exists():
            differ.append(f"{rel}: gone after the rebuild")
        elif new.read_bytes() != old.read_bytes():
            differ.append(f"{rel}: differs")
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", help=f"study folders under results/ (default: {' '.join(STUDIES)})")
    parser.add_argument("--work", type=Path, help="folder for the copies (default: a new temporary folder)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown studies {unknown}; valid: {', '.join(STUDIES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="rebuild-tables-"))
    work.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name in args.studies or list(STUDIES):
        differ = rebuild(name, work)
        print(f"{name}: {'identical' if not differ else f'{len(differ)} file(s) differ'}", flush=True)
        for line in differ:
            print(f"  {line}", flush=True)
        bad += bool(differ)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
