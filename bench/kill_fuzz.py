"""`python -m bench.kill_fuzz [kills=20] [objectives=grpo,rlsd,sdpo] [matrix=true] [matrix_rounds=1]
[later_rounds_at=<point>,...] [points=<point>,...] [seed=0] [out=DIR]`:
the kill-and-resume fuzzer.

For each objective (GRPO with a FLOPs budget, RLSD with a teacher synced every 2 steps, SDPO with its EMA
teacher) it trains one uninterrupted reference run, then `kills` runs of the same config that are SIGKILLed:
half at a random moment of the process's life (a delay past the run's end kills nothing; the table counts
only real kills), half at each dangerous one in turn, named by HARNESS_KILL_AT
(rlsd_harness/training/durable.py: inside a checkpoint's write, inside final/, inside a metrics line, between
final/ and the completion marker, inside retention's delete of an old checkpoint, inside a budget-point policy's
write; every declared point but the matrix's own two, which `matrix=true` covers). Each killed run is then continued the way a user would (run.resume=true
while it has a checkpoint, run.overwrite=true while it has none; a third of those continuations are killed
again at random) until it is finished, and compared with the reference bit for bit: every metric but the
wall-clock ones, the final weights, and the last checkpoint's weights, optimizer, teacher, RNG and counters
(tests/resume_helpers.py). With `matrix=true` it also kills the comparison matrix (`rlsd-compare
experiment=smoke`, seed 0 only) at each dangerous moment, plus between two runs and inside the report, reruns
it until it exits 0, and checks that every run of it is finished and identical to an uninterrupted matrix;
`matrix_rounds=N` kills it N times at each point (round r at a later arrival where the point has more than one,
e.g. inside the second run's final/), so the matrix's own two points are hit more than once too;
`points=final,prune` makes every killed run a kill at those run points in turn (no random kills), to cover
chosen points in fewer runs; `later_rounds_at=matrix,report` limits the rounds after the first to those points (a matrix kill costs about a
whole matrix, so the run points are cheaper to cover through the objectives' runs).

Every process is `python -m bench.kill_fuzz child train|compare ...`: rlsd-train / rlsd-compare after
registering the test-only parity verifier (mixed rewards from an untrained model, so every step updates).
One torch thread per process. Prints a table per objective and one per kill point (kills that happened, how many
of them resumed bit-identical, failures) and writes both to `out/kill_fuzz.json`. `python -m bench.kill_fuzz table
A.json B.json ...` prints the per-point table of several passes together.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.warmup=null", "data.verifier=parity", "train.prompts_per_step=2", "train.group_size=4",
        "train.micro_batch_size=8", "rollout.max_new_tokens=8", "optim.lr=1e-3", "train.progress=false",
        "train.save_every=2", "train.eval_every=3", "eval.n=4", "eval.max_new_tokens=8",
        # budget-point policies and retention (keep_last 2 of a checkpoint every 2 steps) are on, so that the
        # "budget_policy" and "prune" kill points are reached
        "train.save_budget_policies=true", "train.keep_last=2"]
OBJECTIVES = {
    "grpo": ["algorithm=grpo", "train.steps=40", "train.budget.kind=flops"],  # the value: from a probe run
    "rlsd": ["algorithm=rlsd", "algorithm.teacher.sync_every=2", "train.steps=6"],
    "sdpo": ["algorithm=sdpo", "algorithm.lr=null", "train.steps=6"],
}
RUN_POINTS = ("checkpoint", "final", "metrics", "run_done", "prune", "budget_policy")
MATRIX_POINTS = (*RUN_POINTS, "matrix", "report")
MATRIX_ARGS = ["experiment=smoke", "model.warmup=null", "data.verifier=parity", "rollout.max_new_tokens=8",
               "train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=8", "eval.n=4",
               "train.steps=3", "train.save_every=1", "train.save_budget_policies=true", "train.keep_last=2"]


def child(argv: list[str]) -> None:
    """The process the fuzzer starts (and kills)."""
    import torch

    from rlsd_harness import verifier
    from tests.ds_worker import Parity

    torch.set_num_threads(1)
    verifier.VERIFIERS["parity"] = Parity
    kind, args = argv[0], argv[1:]
    if kind == "train":
        from rlsd_harness.cli.train import main
    else:
        from rlsd_harness.analysis import compare
        from rlsd_harness.cli.compare import main
        from rlsd_harness.config import load_experiment

        def one_seed(name):
            exp = load_experiment(name)
            exp.seeds = exp.seeds[:1]
            return exp

        compare.load_experiment = one_seed  # the smoke matrix on one seed: half the time, the same paths
    main(args)


def launch(kind: str, args: list[str], kill_at: str | None = None, kill_after: float | None = None,
           log: Path | None = None) -> tuple[int, float]:
    """Run a child to its end (or its kill); (exit status, seconds). A SIGKILL shows as -9."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(ROOT)}
    env.pop("HARNESS_KILL_AT", None)
    if kill_at:
        env["HARNESS_KILL_AT"] = kill_at
    t0 = time.perf_counter()
    with open(log or os.devnull, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.kill_fuzz", "child", kind, *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return proc.returncode, time.perf_counter() - t0


def continue_run(run_args: list[str], run_dir: Path, rng: random.Random, typical: float, log: Path,
                 attempts: int = 8) -> tuple[bool, int]:
    """Resume (or restart, without a checkpoint) until the run is finished; some continuations are killed
    again. Returns (finished, kills of continuations)."""
    from rlsd_harness.training.run import run_state

    extra_kills = 0
    for _ in range(attempts):
        state = run_state(run_dir)
        if state == "finished":
            return True, extra_kills
        flag = "run.resume=true" if state in ("partial", "failed") else "run.overwrite=true"
        kill_after = rng.uniform(0.2, 1.0) * typical if rng.random() < 1 / 3 else None
        rc, _ = launch("train", [*run_args, flag], kill_after=kill_after, log=log)
        extra_kills += rc == -signal.SIGKILL
    return run_state(run_dir) == "finished", extra_kills


def fuzz_objective(name: str, kills: int, out: Path, rng: random.Random,
                   points: tuple[str, ...] | None = None) -> dict:
    from tests.resume_helpers import differences, metric_lines

    base = [*TINY, *OBJECTIVES[name], f"run.dir={out / name}"]
    log = out / f"{name}.stderr.log"
    if name == "grpo":  # a FLOPs budget that ends the run inside its steps: what 5 steps of a probe spent
        rc, _ = launch("train", [*base, "run.name=probe", "train.steps=5", "train.budget.kind=null"], log=log)
        assert rc == 0, f"probe run failed, see {log}"
        budget = metric_lines(out / name / "probe")[5]["ledger/cum/flops/total"]
        base.append(f"train.budget.value={budget}")
    rc, typical = launch("train", [*base, "run.name=reference"], log=log)
    assert rc == 0, f"reference run failed, see {log}"
    reference = out / name / "reference"
    steps = metric_lines(reference)[-1]["rollout_step"]
    saves = len(list((reference / "checkpoints").glob("step-*")))
    trials = []
    for i in range(kills):
        run_args = [*base, f"run.name=k{i:03d}"]
        if points or i % 2 == 0:
            # each named point in turn (only the given ones, and no random kills, with points=)
            point = points[i % len(points)] if points else RUN_POINTS[(i // 2) % len(RUN_POINTS)]
            n = {"checkpoint": rng.randint(1, saves), "metrics": rng.randint(1, steps)}.get(point, 1)
            how = f"{point}:{n}"
            rc, _ = launch("train", run_args, kill_at=how, log=log)
        else:
            delay = rng.uniform(0.0, 1.0) * typical
            how = f"random:{delay:.1f}s"
            rc, _ = launch("train", run_args, kill_after=delay, log=log)
        killed = rc == -signal.SIGKILL
        finished, again = continue_run(run_args, out / name / f"k{i:03d}", rng, typical, log)
        diff = differences(reference, out / name / f"k{i:03d}") if finished else ["not finished"]
        trials.append({"run": f"k{i:03d}", "kill": how, "killed": killed, "kills_of_continuations": again,
                       "finished": finished, "identical": not diff, "differences": diff[:5]})
        print(f"  {name} k{i:03d} {how:>16} killed={killed} +{again} finished={finished} identical={not diff}"
              + (f" {diff[:3]}" if diff else ""), flush=True)
        if not diff:  # keep the disk small: identical runs prove their point in the table
            shutil.rmtree(out / name / f"k{i:03d}")
    return {"objective": name, "config": base, "reference_steps": steps, "reference_seconds": typical,
            "trials": trials}


# How many times the smoke matrix (two runs of 3 steps, a checkpoint every step, keep_last 2, budget points at
# 0.5 and 1.0) arrives at each point, at least: a kill aimed at a later arrival still lands inside the matrix.
MATRIX_ARRIVALS = {"checkpoint": 6, "metrics": 6, "final": 2, "run_done": 2, "prune": 2, "budget_policy": 4,
                   "matrix": 1, "report": 1}


def matrix_arrival(point: str, round_: int) -> int:
    """The arrival a matrix kill aims at in round `round_` (0-based): the second run's checkpoint and metrics
    line first (as before), then later ones; points reached once are killed at that one arrival every round."""
    first = 2 if point in ("checkpoint", "metrics") else 1
    return min(first + round_, MATRIX_ARRIVALS[point])


def fuzz_matrix(out: Path, rounds: int = 1, later_at: tuple[str, ...] = MATRIX_POINTS) -> dict:
    from rlsd_harness.training.run import run_state
    from tests.resume_helpers import differences

    log = out / "matrix.stderr.log"
    reference = out / "matrix-reference"
    rc, _ = launch("compare", [*MATRIX_ARGS, f"out={reference}"], log=log)
    assert rc == 0, f"reference matrix failed, see {log}"
    results = []
    for round_, point in ((r, p) for r in range(rounds) for p in MATRIX_POINTS if r == 0 or p in later_at):
        where = out / (f"matrix-{point}" if round_ == 0 else f"matrix-{point}-r{round_}")
        n = matrix_arrival(point, round_)
        rc, _ = launch("compare", [*MATRIX_ARGS, f"out={where}"], kill_at=f"{point}:{n}", log=log)
        killed, reruns = rc == -signal.SIGKILL, 0
        while reruns < 4:
            reruns += 1
            rc, _ = launch("compare", [*MATRIX_ARGS, f"out={where}"], log=log)
            if rc == 0:
                break
        runs = sorted(p.name for p in (reference / "runs").iterdir() if not p.name.startswith("."))
        states = {r: run_state(where / "runs" / r) for r in runs}
        diff = {r: differences(reference / "runs" / r, where / "runs" / r) for r in runs if states[r] == "finished"}
        table = (where / "table.md").read_text() if (where / "table.md").exists() else ""
        ok = (rc == 0 and all(s == "finished" for s in states.values()) and not any(diff.values())
              and "failed" not in table and (where / "table.csv").stat().st_size > 0)
        results.append({"kill": f"{point}:{n}", "killed": killed, "reruns": reruns, "exit": rc, "states": states,
                        "identical_runs": sum(not d for d in diff.values()), "runs": len(runs), "ok": ok,
                        "differences": {r: d[:3] for r, d in diff.items() if d}})
        if ok:  # keep the disk small, as for the runs
            shutil.rmtree(where)
        print(f"  matrix {point}:{n} killed={killed} reruns={reruns} exit={rc} states={states} ok={ok}", flush=True)
    return {"args": MATRIX_ARGS, "rounds": rounds, "later_rounds_at": list(later_at), "kills": results}


def per_point(report: dict) -> list[dict]:
    """One row per declared kill point (and one for the random kills): kills that really happened (a kill aimed
    past the run's end, or at an arrival that never came, kills nothing), how many of those ended bit-identical
    with the uninterrupted reference after the user's continuation, and the failures (killed, not identical)."""
    from rlsd_harness.training.durable import KILL_POINTS

    rows = {p: {"point": p, "kills": 0, "identical": 0, "failures": [], "in_runs": 0, "in_matrix": 0}
            for p in (*KILL_POINTS, "random", "continuation")}
    for o in report["objectives"]:
        for t in o["trials"]:
            again = rows["continuation"]  # a continuation killed again at random: its trial's outcome counts
            again["kills"] += t["kills_of_continuations"]
            again["in_runs"] += t["kills_of_continuations"]
            again["identical"] += t["kills_of_continuations"] * t["identical"]
            if t["kills_of_continuations"] and not t["identical"]:
                again["failures"].append(f"{o['objective']} {t['run']} (continuation killed)")
            if not t["killed"]:
                continue
            row = rows["random" if t["kill"].startswith("random") else t["kill"].split(":")[0]]
            row["kills"] += 1
            row["in_runs"] += 1
            row["identical"] += t["identical"]
            if not t["identical"]:
                row["failures"].append(f"{o['objective']} {t['run']} {t['kill']}: {t['differences'][:2]}")
    for m in report.get("matrix", {}).get("kills", []):
        if not m["killed"]:
            continue
        row = rows[m["kill"].split(":")[0]]
        row["kills"] += 1
        row["in_matrix"] += 1
        row["identical"] += m["ok"]
        if not m["ok"]:
            row["failures"].append(f"matrix {m['kill']}: exit {m['exit']} states {m['states']} "
                                   f"{m['differences']}")
    return list(rows.values())


def point_table(rows: list[dict]) -> str:
    """The per-point rows as a markdown table."""
    lines = ["| kill point | when | kills (runs + matrix) | resumed bit-identical | failures |",
             "|---|---|---|---|---|"]
    from rlsd_harness.training.durable import KILL_POINTS

    for r in rows:
        when = KILL_POINTS.get(r["point"], {
            "random": "SIGKILL after a random delay within the reference run's duration",
            "continuation": "a resume (or overwrite) of a killed run, itself SIGKILLed at random"}.get(r["point"]))
        lines.append(f"| `{r['point']}` | {when} | {r['kills']} ({r['in_runs']} + {r['in_matrix']}) | "
                     f"{r['identical']}/{r['kills']} | {'; '.join(r['failures']) or 'none'} |")
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict:
    """One report from several fuzzer outputs (e.g. a matrix-only and an objectives-only pass), per-point rows
    recounted over all of them."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = {"parts": [str(p) for p in paths], "objectives": [o for r in parts for o in r["objectives"]],
              "seconds": sum(r.get("seconds", 0.0) for r in parts), "partial": any(r.get("partial") for r in parts),
              "machine": parts[0].get("machine")}
    matrices = [r["matrix"] for r in parts if "matrix" in r]
    if matrices:
        merged["matrix"] = {**matrices[0], "kills": [k for m in matrices for k in m["kills"]]}
    merged["per_point"] = per_point(merged)
    return merged


def main(argv: list[str]) -> None:
    if argv[:1] == ["child"]:
        return child(argv[1:])
    if argv[:1] == ["table"]:  # `table <kill_fuzz.json>...`: the per-point markdown table of one or more passes
        print(point_table(merge([Path(a) for a in argv[1:]])["per_point"]))
        return None
    opts = dict(a.split("=", 1) for a in argv)
    kills = int(opts.get("kills", 20))
    objectives = [o for o in opts.get("objectives", "grpo,rlsd,sdpo").split(",") if o not in ("", "none")]
    out = Path(opts.get("out", ROOT / "results" / "kill_fuzz"))
    rng = random.Random(int(opts.get("seed", 0)))
    later_at = tuple(opts.get("later_rounds_at", ",".join(MATRIX_POINTS)).split(","))
    points = tuple(opts["points"].split(",")) if opts.get("points") else None
    for key, given, valid in (("later_rounds_at", later_at, MATRIX_POINTS), ("points", points or (), RUN_POINTS)):
        if set(given) - set(valid):  # before the output folder is cleared
            sys.exit(f"error: {key} names {sorted(set(given) - set(valid))}; valid: {', '.join(valid)}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    report = {"objectives": [], "machine": f"{os.cpu_count()} CPU cores", "seed": int(opts.get("seed", 0))}

    def partial() -> None:  # what is done so far survives a fuzzer stopped midway (it runs for hours)
        (out / "kill_fuzz.json").write_text(json.dumps({**report, "partial": True}, indent=1))

    for name in objectives:
        print(f"{name}: reference run, then {kills} killed runs", flush=True)
        report["objectives"].append(fuzz_objective(name, kills, out, rng, points))
        partial()
    if opts.get("matrix", "true") == "true":
        print("comparison matrix: a reference, then a kill at each dangerous moment", flush=True)
        report["matrix"] = fuzz_matrix(out, int(opts.get("matrix_rounds", 1)), later_at)
    report["seconds"] = time.perf_counter() - t0
    report["per_point"] = per_point(report)
    (out / "kill_fuzz.json").write_text(json.dumps(report, indent=1))
    print("\nobjective  kills  (at a named point / at random / of continuations)  finished  bit-identical")
    for o in report["objectives"]:
        t = o["trials"]
        named = sum(x["killed"] for x in t if not x["kill"].startswith("random"))
        randomly = sum(x["killed"] for x in t if x["kill"].startswith("random"))
        again = sum(x["kills_of_continuations"] for x in t)
        print(f"{o['objective']:<10} {named + randomly + again:>5}  ({named} / {randomly} / {again}){'':>36}"
              f"{sum(x['finished'] for x in t):>3}/{len(t)}  {sum(x['identical'] for x in t):>3}/{len(t)}")
    for m in report.get("matrix", {}).get("kills", []):
        print(f"matrix killed at {m['kill']:<13} killed={m['killed']} reruns={m['reruns']} "
              f"finished+identical runs {m['identical_runs']}/{m['runs']} ok={m['ok']}")
    print("\n" + point_table(report["per_point"]))
    print(f"{report['seconds']:.0f} s; details in {out / 'kill_fuzz.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
