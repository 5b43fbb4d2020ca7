"""`python -m bench.kill_fuzz [kills=20] [objectives=grpo,rlsd,sdpo] [matrix=true] [seed=0] [out=DIR]`:
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
it until it exits 0, and checks that every run of it is finished and identical to an uninterrupted matrix.

Every process is `python -m bench.kill_fuzz child train|compare ...`: rlsd-train / rlsd-compare after
registering the test-only parity verifier (mixed rewards from an untrained model, so every step updates).
One torch thread per process. Prints a table and writes `out/kill_fuzz.json`.
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


def fuzz_objective(name: str, kills: int, out: Path, rng: random.Random) -> dict:
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
        if i % 2 == 0:
            point = RUN_POINTS[(i // 2) % len(RUN_POINTS)]  # each named point in turn
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


def fuzz_matrix(out: Path) -> dict:
    from rlsd_harness.training.run import run_state
    from tests.resume_helpers import differences

    log = out / "matrix.stderr.log"
    reference = out / "matrix-reference"
    rc, _ = launch("compare", [*MATRIX_ARGS, f"out={reference}"], log=log)
    assert rc == 0, f"reference matrix failed, see {log}"
    results = []
    for point in MATRIX_POINTS:
        where = out / f"matrix-{point}"
        n = 2 if point in ("checkpoint", "metrics") else 1  # inside the matrix's second run for those two
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
        print(f"  matrix {point}:{n} killed={killed} reruns={reruns} exit={rc} states={states} ok={ok}", flush=True)
    return {"args": MATRIX_ARGS, "kills": results}


def main(argv: list[str]) -> None:
    if argv[:1] == ["child"]:
        return child(argv[1:])
    opts = dict(a.split("=", 1) for a in argv)
    kills = int(opts.get("kills", 20))
    objectives = [o for o in opts.get("objectives", "grpo,rlsd,sdpo").split(",") if o not in ("", "none")]
    out = Path(opts.get("out", ROOT / "results" / "kill_fuzz"))
    rng = random.Random(int(opts.get("seed", 0)))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    report = {"objectives": [], "machine": f"{os.cpu_count()} CPU cores", "seed": int(opts.get("seed", 0))}
    for name in objectives:
        print(f"{name}: reference run, then {kills} killed runs", flush=True)
        report["objectives"].append(fuzz_objective(name, kills, out, rng))
    if opts.get("matrix", "true") == "true":
        print("comparison matrix: a reference, then a kill at each dangerous moment", flush=True)
        report["matrix"] = fuzz_matrix(out)
    report["seconds"] = time.perf_counter() - t0
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
    print(f"{report['seconds']:.0f} s; details in {out / 'kill_fuzz.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
