"""`rlsd-report folder=results/embedded`: rebuild a comparison's tables, plots, README and RLSD's credit picture
(from an RLSD run's final weights, else redrawn from credit_rlsd.json) from its run folders (nothing is trained), and its tuning.md / tuning.csv / picks.json from tuning/runs/ where the folder holds its
own tuning runs (a committed study does not: its tuning runs are not kept); picks that would change are
refused, since the test runs were trained at the recorded ones. `compare_with=<an earlier folder of the same
experiment>` also writes compare_with.md / .csv: per method and budget point both studies' means, the
difference and how many same-seed runs have identical per-item records. `pack=<a new folder>` then writes a
committable copy of the study there (analysis/pack.py: no weights or checkpoints, the jsonl records
gzip-compressed, checked to rebuild the same tables). `table=paper` writes instead the paper's main table,
paper_table.md / .csv: methods x {MMMU, MathVista, MathVision, ZeroBench, WeMath, average} at each budget
point, from the benchmark evaluations that `rlsd-evaluate study=<folder>` left in the run folders (a folder of
runs launched by hand, without meta.json, is read as well)."""

from __future__ import annotations

import json
from pathlib import Path

from rlsd_harness.cli import run_main, split_args
from rlsd_harness.config import ConfigError

OWN = {"folder": "a comparison's output folder (required)",
       "compare_with": "an earlier output folder of the same experiment to compare with (optional)",
       "pack": "a new folder for a committable copy of the study: no weights, jsonl gzip-compressed (optional)",
       "table": "study (default: the comparison's tables, plots and README) | paper (the methods x five "
                "benchmarks table from the runs' benchmark evaluations)",
       "baseline": "with table=paper: the method the others are compared with (default grpo)"}
TABLES = ("study", "paper")


def _comparison_folder(value: str, key: str) -> Path:
    folder = Path(value)
    if not (folder / "runs").is_dir():
        raise FileNotFoundError(f"{key}={folder} has no runs/ folder: not a comparison's output")
    return folder


def main(argv: list[str] | None = None) -> None:
    from rlsd_harness.analysis.report import write_comparison, write_report
    from rlsd_harness.analysis.tuning import changed_picks, study_picks, tuning_grid, write_tuning
    from rlsd_harness.config import load_experiment

    def body() -> None:
        own, _ = split_args(argv, "rlsd-report", __doc__, OWN, takes_overrides=False)
        if "folder" not in own:
            raise ConfigError("folder=<a comparison's output folder> is required; see rlsd-report --help")
        table = own.get("table", "study")
        if table not in TABLES:
            raise ConfigError(f"table={table!r} is not a table rlsd-report writes; valid: {', '.join(TABLES)}")
        folder = _comparison_folder(own["folder"], "folder")
        if table == "paper":
            from rlsd_harness.analysis.paper_table import markdown, write

            written = write(folder, baseline=own.get("baseline", "grpo"))
            print(markdown(written), end="")
            print(f"paper table in {folder / 'paper_table.md'}")
            return
        meta_file = folder / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"experiment": folder.name}
        own_file = meta.get("experiment_file")  # an experiment given as a yaml path outside config/experiment/
        exp = load_experiment(own_file if own_file and Path(own_file).is_file() else meta["experiment"])
        grid = tuning_grid(exp, meta["experiment"])
        tuned_here = grid and (folder / "tuning" / "runs").is_dir() and (folder / "picks.json").exists()
        if tuned_here:
            table, picks = study_picks(folder, exp, grid)
            changed = changed_picks(folder, picks)
            if changed:
                raise ConfigError(f"folder={folder}: its tuning runs pick other values than picks.json records "
                                  f"({changed}), and the test runs were trained at the recorded ones; nothing rewritten")
        if "compare_with" in own:
            old = _comparison_folder(own["compare_with"], "compare_with")
            old_meta = json.loads((old / "meta.json").read_text()) if (old / "meta.json").exists() else {}
            if old_meta.get("experiment", meta["experiment"]) != meta["experiment"]:
                raise ConfigError(f"compare_with={old} is experiment {old_meta['experiment']!r}, folder={folder} is "
                                  f"{meta['experiment']!r}; compare two runs of one experiment")
            write_comparison(folder, old, exp)
        if tuned_here:
            write_tuning(folder, exp, grid, table, picks, base=json.loads((folder / "picks.json").read_text()).get("base"))
        from rlsd_harness.analysis.credit import study_credit

        said = study_credit(folder)  # RLSD's credit picture: from the runs' weights, else the recorded json
        if said:
            print(said)
        write_report(folder, exp, meta)
        print(f"report in {folder}")
        if "pack" in own:
            from rlsd_harness.analysis.pack import pack_study

            files, before, after = pack_study(folder, Path(own["pack"]), exp, meta)
            print(f"packed {files} files into {own['pack']}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")

    run_main(body)


if __name__ == "__main__":
    main()
