"""`rlsd-compare experiment=embedded`: methods x seeds from one experiment file, each trained to the
same compute budget from the same base policy, compared at matched budget points.

With a `tuning:` section the tuning arms run first: every method's grid (the same number of points for
each) at the tuning seeds and the short tuning budget, evaluated on the validation split, into
<out>/tuning/runs/<label>-s<seed>/; the picks (analysis/tuning/grid.py: GRID_PICK_RULE) go to tuning.csv,
tuning.md and picks.json, and the reported runs then train at the picked values and are evaluated on the test
split.
The validation split never enters the tables and the test split never enters a pick. `tuning_from` takes
the picks of an earlier study of the same base and tuning section instead (a test budget changed, the
tuning did not): its tuning.csv must list the same grid points at the same number of tuning seeds, and
its picks.json the same tuning seeds and overrides and the same base policy (the sha256 of its weights:
the same config warms up to a different base on a CPU with other kernels); the three files are copied and
meta.json names the source (analysis/tuning/grid.py: earlier_picks).

Runs land in <out>/runs/<method>-s<seed>/. Finished runs are not rerun; an interrupted run resumes from its
last checkpoint; a run that fails is recorded (failed.json) and counted as failed in the tables. The report
(tables, plots, README, RLSD's credit picture) is rebuilt from the run folders at the end (analysis/report.py),
and only then is meta.json marked finished: a study killed while reporting is completed by a plain rerun.

With `workers` > 1 the runs of each phase (tuning, then the test matrix) train `workers` at a time, each
in its own process with torch limited to cores // workers threads: the tiny model's matmuls do not use two
cores well, so on a 2-core machine two one-thread runs finish about 1.4x sooner than one two-thread run
after the other. A run's numbers depend on its thread count (the order of float reductions), which
meta.json records; a rerun that should match bit for bit uses the same `workers`.

Results are never overwritten: when the default folder results/<experiment>/ holds a finished study
(meta.json with `finished`, and no failed run or a meta.json committed to git), a rerun writes a fresh
results/<experiment>-rerun-<timestamp>/ and compares itself with the finished one (compare_with.md); an
explicit out= naming a finished study is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rlsd_harness.analysis import launch
from rlsd_harness.analysis.tuning import (
    TUNING_FILES,
    changed_picks,
    earlier_picks,
    is_optuna,
    plan_text,
    run_tuning,
    settings_of,
    study_picks,
    tuning_grid,
    tuning_run_overrides,
    write_tuning,
)
from rlsd_harness.config import (
    CONFIG_DIR,
    REPO,
    ConfigError,
    arms,
    compose_config,
    experiment_path,
    load_experiment,
    run_overrides,
    schema,
)
from rlsd_harness.training import checkpoint
from rlsd_harness.training.durable import atomic_write_text, kill_point
from rlsd_harness.training.preflight import check_config
from rlsd_harness.training.run import run, run_state


def dry_run(exp, name: str, runs_dir: Path, extra: list[str]) -> str:
    """Validate every run's configuration and print the plan: runs, compute per method, memory per GPU."""
    from rlsd_harness.algorithms import build_objective
    from rlsd_harness.analysis.plan import plan

    cfgs, objectives, missing = {}, {}, set()
    for method in arms(exp):
        cfg = compose_config(run_overrides(exp, method, exp.seeds[0], runs_dir, extra))
        cfgs[method] = cfg
        objectives[method] = build_objective(cfg.algorithm.name, dict(cfg.algorithm.get("params") or {}))
        missing |= {f"{group}.path" for group in ("model", "data") if OmegaConf.is_missing(cfg[group], "path")}
    grid = tuning_grid(exp, name)
    lines = [f"experiment {name}: {len(arms(exp))} arms x {len(exp.seeds)} seeds -> {runs_dir}", ""]
    if is_optuna(exp):
        lines += [plan_text(exp, name, float(next(iter(cfgs.values())).train.budget.value)), ""]
    if grid:
        size = len(next(iter(grid.values())))
        lines += [f"tuning first: {len(grid)} methods x {size} grid points x {len(exp.tuning.seeds)} seeds = "
                  f"{len(grid) * size * len(exp.tuning.seeds)} runs at `{' '.join(exp.tuning.get('overrides') or [])}`",
                  ""]
    if missing:
        lines += [f"to set before launching: {', '.join(sorted(missing))}", ""]
    lines.append(plan(cfgs, objectives, int(exp.get("world_size", 1)), exp.get("plan")))
    return "\n".join(lines)


def _git_tracked(path: Path) -> bool:
    try:
        r = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def finished_study(folder: Path) -> bool:
    """A study that must not be touched: meta.json says `finished`, and either no run failed (a failed run
    is retried by the next invocation) or the meta.json is committed."""
    meta = Path(folder) / "meta.json"
    if not meta.exists():
        return False
    try:
        if "finished" not in json.loads(meta.read_text()):
            return False
    except json.JSONDecodeError:
        return False
    if not any((Path(folder) / "runs").glob("*/failed.json")):
        return True
    return _git_tracked(meta)


def output_folder(name: str, out: str | Path | None) -> tuple[Path, Path | None]:
    """Where this invocation writes, and the finished study it is a rerun of (None if it is not one)."""
    default = REPO / "results" / name
    if out is not None:
        # absolute: the runs' run.dir would otherwise resolve against the repository, the report against the cwd
        target = Path(out).absolute()
        if finished_study(target):
            raise ConfigError(f"out={target} holds a finished study (meta.json finished); results are never "
                              f"overwritten: give a new out= folder, or leave out= unset for a fresh "
                              f"results/{name}-rerun-<timestamp>/ (rlsd-report folder={target} rebuilds its tables)")
        return target, (default if finished_study(default) and target.resolve() != default.resolve() else None)
    if finished_study(default):
        return REPO / "results" / f"{name}-rerun-{time.strftime('%Y%m%d-%H%M%S')}", default
    return default, None


def _stopped_short(run_dir: Path, cfg: DictConfig) -> bool:
    """A finished run that stopped at a tuning rung (train.budget.stop_at) before the one `cfg` asks for."""
    try:
        was = json.loads((run_dir / "finished.json").read_text()).get("stop_at")
    except (OSError, json.JSONDecodeError):
        return False
    now = cfg.train.budget.stop_at
    return was is not None and float(now if now is not None else 1.0) > float(was) + 1e-9


def _train(run_dir: Path, cfg: DictConfig, log: Callable[[str], None], command: str) -> None:
    """One run of the matrix from its composed config. Its state comes from its completion markers
    (training/run.py: run_state): a finished run is skipped; a partial or failed one resumes from its newest
    good checkpoint, or starts over when it has none; a failure is recorded and the matrix goes on."""
    state = run_state(run_dir)
    if state == "finished" and _stopped_short(run_dir, cfg):
        state = "partial"  # a tuning rung's run promoted to a later rung: it continues from its checkpoint
    if state == "finished" or ((run_dir / "finished.json").is_file() and (run_dir / "metrics.jsonl.gz").is_file()):
        return  # the second: a packed copy of a finished run (analysis/pack.py), its records kept, its weights not
    good = checkpoint.latest_good(run_dir, log) if state in ("partial", "failed") else None
    if state in ("partial", "failed") and good is None:
        log(f"{run_dir.name}: no good checkpoint to resume from; starting it over")
    cfg = cfg.copy()
    OmegaConf.update(cfg, "run.resume", good is not None)
    OmegaConf.update(cfg, "run.overwrite", good is None)
    OmegaConf.update(cfg, "train.progress", False)
    (run_dir / "failed.json").unlink(missing_ok=True)
    try:
        run(cfg, log, resume_command=command)
    except Exception as e:  # a failed run is reported, not dropped, and the matrix goes on
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "failed.json", json.dumps({"error": f"{type(e).__name__}: {e}",
                                                               "traceback": traceback.format_exc()}))
        log(f"{run_dir.name} failed: {e}")
    kill_point("matrix")


_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _train_in_worker(run_dir: str, cfg_yaml: str, command: str, threads: int) -> None:
    """One matrix run in a fresh process (`workers` > 1): its own one-rank process group on its own port."""
    for key in _DIST_ENV:
        os.environ.pop(key, None)
    torch.set_num_threads(threads)
    _train(Path(run_dir), OmegaConf.create(cfg_yaml), lambda msg: print(msg, file=sys.stderr, flush=True), command)
    from rlsd_harness import dist

    dist.shutdown()


def _threads_per_run(workers: int) -> int:
    """torch threads of each run: the machine's cores shared by the parallel runs (all of torch's own choice
    when runs go one at a time)."""
    return max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch.get_num_threads()


def _train_all(jobs: Sequence[tuple[str, Path, DictConfig]], workers: int, log: Callable[[str], None],
               command: str, bar, slurm: tuple[launch.SlurmOptions, Path] | None = None) -> bool:
    """Train (label, run folder, config) jobs in order, `workers` at a time. A signal to this process is
    passed on to the runs in flight, which checkpoint and stop as a single run does, and no later job starts
    (Interrupted is raised). With `slurm` (options,
    study folder) each run is a Slurm job instead (analysis/launch.py). False while jobs are still queued
    (launcher.wait=false)."""
    if slurm is not None:
        return launch.train_slurm(jobs, slurm[0], slurm[1], _train, log, command, bar)
    if workers == 1 or not jobs:
        for label, run_dir, cfg in jobs:
            bar.set_postfix(run=label)
            _train(run_dir, cfg, log, command)
            bar.update(1)
        return True
    threads = _threads_per_run(workers)
    tasks = [(label, (str(run_dir), OmegaConf.to_yaml(cfg), command, threads)) for label, run_dir, cfg in jobs]
    _run_in_pool(tasks, workers, _train_in_worker, log, bar, jobs[0][1].parent, command)
    return True


def _unless_stopped(stop_file: str, fn: Callable[..., None], *args: Any) -> bool:
    """fn(*args) in a pool process, unless the study is stopping (then False): a job the pool had already
    handed to a starting process when the signal came cannot be cancelled, so it looks here first."""
    if Path(stop_file).exists():
        return False
    fn(*args)
    return True


def _run_in_pool(tasks: Sequence[tuple[str, tuple]], workers: int, fn: Callable[..., None], log: Callable[[str], None],
                 bar: Any, where: Path, command: str) -> None:
    """fn(*args) for each (label, args) task, `workers` fresh processes at a time. A SIGINT / SIGTERM to this
    process is passed on to the processes in flight (a run checkpoints and stops, as a single run does) and
    stops the study: no queued task starts, and Interrupted is raised once the ones in flight have stopped."""
    import tempfile

    from rlsd_harness.training.run import Interrupted

    stop_file = Path(tempfile.mkdtemp(prefix="rlsd-compare-")) / "stop"
    stopped: list[int] = []
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    pending: dict = {}

    def forward(signum, frame):  # noqa: ARG001
        stopped.append(signum)
        stop_file.touch()
        for future in list(pending):
            future.cancel()  # only the queued ones; the running ones get the signal
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.is_alive():
                os.kill(process.pid, signum)

    for sig in previous:
        signal.signal(sig, forward)
    try:
        pending.update({pool.submit(_unless_stopped, str(stop_file), fn, *args): label for label, args in tasks})
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                label = pending.pop(future)
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None and not future.result():  # never started: the study was stopping
                    continue
                if isinstance(error, Interrupted):
                    log(f"{label}: {error}")
                elif error is not None:  # _train records a run's failure itself; this is the worker's
                    log(f"{label}: worker failed: {error}")
                bar.set_postfix(finished=label)
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_file.unlink(missing_ok=True)
        stop_file.parent.rmdir()
    if stopped:
        raise Interrupted(stopped[0], where, command)


def base_digests(cfgs: Sequence[DictConfig], log: Callable[[str], None]) -> list[str]:
    """sha256 of the weights of each distinct base policy the runs start from. Built and warmed up here if
    needed, once, before any worker starts (workers that started together would each build it)."""
    import hashlib

    from rlsd_harness.training.warmup import policy_path

    typed = [schema.typed(c) for c in cfgs]
    folders = {policy_path(c.model, c.data, log) for c in {(repr(c.model), repr(c.data)): c for c in typed}.values()}
    return sorted(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(f.glob("*.safetensors")))).hexdigest()
                  for f in folders)


def compare(name: str = "embedded", out: str | Path | None = None, overrides: list[str] | None = None,
            dry: bool = False, workers: int = 1, tuning_from: str | Path | None = None,
            tuning_only: bool = False, launcher: str = "local",
            slurm: launch.SlurmOptions | None = None) -> Path | str:
    """Run (or continue) experiment `name` into `out` (default results/<name>, or a fresh rerun folder when
    that holds a finished study) and write its report; returns the folder. With `dry`, only validates every
    run's configuration and returns the plan as text. `workers`: runs trained at once; `tuning_from`: a
    tuned study whose picks replace the tuning phase; `tuning_only`: stop after the tuning phase (its runs,
    tuning.csv, tuning.md, picks.json), e.g. to study how the picks depend on the tuning budget.
    `launcher`="slurm": each run a Slurm job with the resources of `slurm` (analysis/launch.py)."""
    from tqdm.auto import tqdm

    from rlsd_harness import dist
    from rlsd_harness.analysis.report import write_comparison, write_json, write_report

    extra = list(overrides or [])
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= (os.cpu_count() or 1):
        raise ConfigError(f"workers must be an integer from 1 to this machine's {os.cpu_count()} cores; got {workers!r}")
    if launcher not in launch.LAUNCHERS or (launcher == "slurm") != (slurm is not None) or (slurm and workers > 1):
        raise ConfigError(f"launcher={launcher!r}: valid are {', '.join(launch.LAUNCHERS)}; launcher=slurm takes its "
                          f"resources from launcher.* and no workers= (got workers={workers})")
    exp = load_experiment(name)
    path = experiment_path(name)  # an experiment file outside config/experiment/ is recorded for rlsd-report
    source, name = (None if path.parent == CONFIG_DIR / "experiment" else str(path.resolve())), path.stem
    grid = tuning_grid(exp, name)
    optuna_mode = is_optuna(exp)
    if optuna_mode:
        settings_of(exp, name)  # checked before anything runs
        if tuning_from is not None:
            raise ConfigError(f"tuning_from={tuning_from}: experiment {name} tunes with tuning.mode optuna, whose picks "
                              f"come from its own tuning/optuna.journal (rerun the same out= to continue a tuning)")
    if tuning_from is not None and not grid:
        raise ConfigError(f"tuning_from={tuning_from}: experiment {name} has no tuning section to take picks for")
    if tuning_only and (not (grid or optuna_mode) or tuning_from is not None):
        raise ConfigError(f"tuning_only=true runs the tuning phase, which experiment {name} "
                          + ("does not have (no tuning section)" if not grid else f"skips with tuning_from={tuning_from}"))
    target, previous = output_folder(name, out)
    runs_dir, tuning_dir = target / "runs", target / "tuning" / "runs"
    tuning_jobs = [(pt, s) for points in grid.values() for pt in points for s in exp.tuning.seeds]
    # seed-major: an interrupted study holds whole seeds, which the paired comparisons need
    jobs = [(m, s) for s in exp.seeds for m in arms(exp)]
    # every configuration is composed and checked against the schema before any compute is spent or anything
    # written (a dry run checks the batch geometry of the planned cluster and lists the paths still to set);
    # with tuning, the test runs are checked with a stand-in pick and composed again once the picks are known
    world = int(exp.get("world_size", 1)) if dry else None

    def checked(overrides: list[str]) -> DictConfig:
        cfg = compose_config(overrides)
        check_config(cfg, allow_missing=dry, world=world)
        return cfg

    tuning_cfgs = [checked(tuning_run_overrides(exp, pt, s, tuning_dir, extra)) for pt, s in tuning_jobs]
    for cfg in map(schema.typed, tuning_cfgs[:1]):  # the picks read validation records at budget points
        if not cfg.train.eval_every or not cfg.eval.budget_points:
            raise ConfigError(f"experiment {name}: the tuning runs would write no validation records (train.eval_every="
                              f"{cfg.train.eval_every}, eval.budget_points={cfg.eval.budget_points}); train.eval_every "
                              f"0 turns every held-out evaluation off, budget points included: use a large value "
                              f"instead (routine evaluations then run only at step 0 and the last step)")
    test_cfgs = [checked(run_overrides(exp, m, s, runs_dir, extra, list(grid[arms(exp)[m][0]][0].overrides) if grid else []))
                 for m, s in jobs]
    for cfg in map(schema.typed, test_cfgs[:1]):  # the tables read the test runs' budget-point records
        if not cfg.train.eval_every and not cfg.train.save_budget_policies:
            raise ConfigError(f"experiment {name}: train.eval_every=0 turns every held-out evaluation off, so the "
                              f"runs would write no budget-point records and the study no table; use a large "
                              f"train.eval_every instead (budget points still run), or train.save_budget_policies=true "
                              f"to score the kept policies with rlsd-evaluate study=")
    if dry:
        text = dry_run(exp, name, runs_dir, extra)
        if slurm is None:
            return text
        runs = [(f"tuning/{pt.label}-s{s}", tuning_dir / f"{pt.label}-s{s}") for pt, s in tuning_jobs]
        return text + "\n\n" + launch.dry_run_text(runs + [(f"{m}-s{s}", runs_dir / f"{m}-s{s}") for m, s in jobs],
                                                   slurm, Path(slurm.folder) if slurm.folder else target / "slurm",
                                                   planned_ranks=world)
    if slurm is not None:
        launch.require_slurm()
    log = lambda msg: tqdm.write(msg, file=sys.stderr)  # noqa: E731
    base = base_digests(test_cfgs, log)
    recorded = json.loads((target / "picks.json").read_text()).get("base") if (target / "picks.json").exists() else None
    trained = [d for d in (runs_dir, tuning_dir) if d.is_dir() and any(d.iterdir())]
    if recorded and recorded != base and trained:
        raise ConfigError(f"out={target}: its runs were trained from base policy {recorded}, these would start from "
                          f"{base} (sha256 of the weights: the warm-up gives another base on another kind of CPU); "
                          f"give a fresh out= folder")
    reused = earlier_picks(Path(tuning_from), exp, grid, base) if tuning_from is not None else None
    target.mkdir(parents=True, exist_ok=True)
    if previous is not None:
        log(f"{previous} holds a finished study; this run writes {target} and compares itself with it")
    started = time.time()
    command = " ".join(["rlsd-compare", f"experiment={name}", f"out={target}",
                        *([f"workers={workers}"] if workers > 1 else []), *launch.arguments(launcher, slurm),
                        *([f"tuning_from={tuning_from}"] if reused else []), *map(shlex.quote, extra)])
    tuning = grid and not reused
    planned = 0
    if optuna_mode:  # run visits: every trial's seeds at every rung it reaches
        opt = settings_of(exp, name)
        planned = len(exp.methods) * opt.brackets * sum(opt.sizes()) * len(opt.seeds)
    bar = tqdm(total=(len(tuning_jobs) if tuning else 0) + planned + (0 if tuning_only else len(jobs)),
               desc=f"{name}: {'tuning + ' if tuning else ''}methods x seeds", unit="run", position=0, dynamic_ncols=True)
    queued = f"Slurm jobs queued, recorded in {target / 'jobs.json'}; rerun `{command}` to wait for them and report"
    on_slurm = (slurm, target) if slurm is not None else None
    if tuning:
        if not _train_all([(f"tuning/{pt.label}-s{seed}", tuning_dir / f"{pt.label}-s{seed}", cfg)
                           for (pt, seed), cfg in zip(tuning_jobs, tuning_cfgs)], workers, log, command, bar, on_slurm):
            bar.close()
            return queued
    picks: dict[str, dict] = {}
    if optuna_mode:
        def refuse_changed(new: dict[str, dict]) -> None:
            changed = changed_picks(target, new)
            if changed and runs_dir.is_dir() and any(runs_dir.iterdir()):
                raise ConfigError(f"the tuning picks changed ({changed}) but {runs_dir} holds runs trained at the old "
                                  f"picks; give a fresh out= folder")

        found = run_tuning(target, exp, name, extra, lambda batch: _train_all(batch, workers, log, command, bar, on_slurm),
                           log, base, checked, refuse_changed)
        if found is None:
            bar.close()
            return queued if slurm is not None else f"the tuning stopped before its rung finished; rerun `{command}` to continue"
        picks = found
        for m, p in picks.items():
            log(f"tuning pick for {m}: {' '.join(p['overrides'])} (validation mean@k {p['validation_mean']:.3f}"
                + (f"; {'; '.join(p['edges'])}" if p["edges"] else "") + ")")
    if grid:
        if reused:
            picks = reused
        else:
            try:
                table, picks = study_picks(target, exp, grid)
            except ValueError as e:
                raise ConfigError(str(e)) from e
        # checked before anything is written, so that a second invocation refuses as the first did
        changed = changed_picks(target, picks)
        if changed and runs_dir.is_dir() and any(runs_dir.iterdir()):
            raise ConfigError(f"the tuning picks changed ({changed}) but {runs_dir} holds runs trained at the old "
                              f"picks; give a fresh out= folder")
        if reused:
            for f in TUNING_FILES:
                atomic_write_text(target / f, (Path(tuning_from) / f).read_text())
        else:
            write_tuning(target, exp, grid, table, picks, base=base)
        for m, p in picks.items():
            log(f"tuning pick for {m}: {' '.join(p['overrides'])} (validation mean@k {p['validation_mean']:.3f})")
    if tuning_only:
        bar.close()
        dist.shutdown()
        return target / "tuning.md"
    if grid or optuna_mode:
        test_cfgs = [checked(run_overrides(exp, m, s, runs_dir, extra, picks[arms(exp)[m][0]]["overrides"]))
                     for m, s in jobs]
    if not _train_all([(f"{m}-s{s}", runs_dir / f"{m}-s{s}", cfg) for (m, s), cfg in zip(jobs, test_cfgs)],
                      workers, log, command, bar, on_slurm):
        bar.close()
        return queued
    bar.close()
    dist.shutdown()
    meta = {"experiment": name, "experiment_file": source, "seconds": time.time() - started,
            "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores, no GPU" if not torch.cuda.is_available()
            else f"{platform.platform()}, {torch.cuda.get_device_name()}",
            "workers": workers, "threads_per_run": slurm.cpus_per_task if slurm else _threads_per_run(workers),
            **({"launcher": f"slurm: {slurm.describe()}"} if slurm else {}),
            "base": base, "tuning": bool(grid) or optuna_mode, "tuning_from": str(tuning_from) if reused else None,
            "rerun_of": str(previous) if previous else None,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    # The report first, meta.json marked finished last: a study whose meta.json says finished is never written
    # again (output_folder), so a kill anywhere in here must leave it unmarked, for the rerun to complete.
    if not (target / "credit_rlsd.png").exists():
        from rlsd_harness.analysis.credit import study_credit

        said = study_credit(target)
        if said:
            log(said)
    if previous is not None:
        write_comparison(target, previous, exp)
    write_report(target, exp, meta)
    kill_point("report")
    write_json(meta, target / "meta.json")
    return target
