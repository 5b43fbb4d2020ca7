"""`rlsd-compare launcher=slurm` and one run across Slurm tasks.

The unmarked tests need no Slurm: how a rank reads Slurm's variables, the launcher options and their errors.
The `cluster` tests run against a real one-node Slurm (tests/slurm/start_slurm.sh: munged, slurmctld, slurmd
as root on loopback), started once per session and stopped afterwards; they skip, saying why, where Slurm
is not installed or this is not root. `.ci/run` installs Slurm and runs them (`pytest -m cluster`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlsd_harness import dist
from rlsd_harness.analysis import launch
from rlsd_harness.config import ConfigError
from tests.conftest import small_overrides

REPO = Path(__file__).resolve().parent.parent
START = REPO / "tests" / "slurm" / "start_slurm.sh"


# ---- without Slurm -------------------------------------------------------------------------------------------

def test_a_launchers_variables_are_kept():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "node1", "MASTER_PORT": "29500",
           "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "x"}
    assert dist.launcher_env(env) == {}  # torchrun / deepspeed under Slurm: their ranks win


def test_an_srun_task_takes_its_rank_from_slurm(monkeypatch):
    expanded = []
    monkeypatch.setattr(dist, "_first_host", lambda nodelist: expanded.append(nodelist) or "gpu03")
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
           "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NODELIST": "gpu[03-06]"}
    got = dist.launcher_env(env)
    assert got["RANK"] == "5" and got["LOCAL_RANK"] == "1" and got["WORLD_SIZE"] == "8"
    assert got["MASTER_ADDR"] == "gpu03" and expanded == ["gpu[03-06]"]
    # every task derives the same port without talking to the others; MASTER_PORT, when given, wins
    assert got["MASTER_PORT"] == dist.launcher_env({**env, "SLURM_PROCID": "0"})["MASTER_PORT"]
    assert dist.launcher_env({**env, "MASTER_PORT": "23456"})["MASTER_PORT"] == "23456"


def test_a_batch_script_without_srun_is_a_world_of_one():
    # the batch step of `sbatch --ntasks=2` is one process: SLURM_NTASKS=2 but no step variables
    got = dist.launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n1"})
    assert got["WORLD_SIZE"] == "1" and got["RANK"] == "0" and got["MASTER_ADDR"] == "127.0.0.1"


def test_a_parents_own_world_of_one_is_not_a_launcher():
    """A process that inherited the variables of its parent's world of one gets its own, on another port; its own
    variables, a launcher's port or a larger world are kept."""
    inherited = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "41234",
                 dist.OWN_GROUP: f"{os.getpid() + 1}:41234"}
    got = dist.launcher_env(inherited)
    assert got["WORLD_SIZE"] == "1" and got["MASTER_PORT"] != "41234"
    assert got[dist.OWN_GROUP] == f"{os.getpid()}:{got['MASTER_PORT']}"
    assert dist.launcher_env({**inherited, dist.OWN_GROUP: f"{os.getpid()}:41234"}) == {}
    assert dist.launcher_env({**inherited, "MASTER_PORT": "29500"}) == {}  # torchrun's own rendezvous
    assert dist.launcher_env({**inherited, "WORLD_SIZE": "2"}) == {}


def test_a_child_of_an_in_process_run_starts_its_own_process_group(tmp_path):
    """A Python caller that trained in-process (its world of one listening on MASTER_PORT) and then starts
    rlsd-train: the child inherited RANK ... MASTER_PORT and, before OWN_GROUP, failed with EADDRINUSE."""
    child = "from rlsd_harness import dist; print(dist.init_distributed())"
    parent = ("import subprocess, sys; from rlsd_harness import dist; dist.init_distributed(); "
              f"sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode)")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", dist.OWN_GROUP)}
    out = subprocess.run([sys.executable, "-c", parent], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip().endswith("(0, 1)"), out.stderr[-2000:]


def test_launcher_options_parse_and_round_trip():
    launcher, opts = launch.parse_options({"launcher": "slurm", "launcher.nodes": "2", "launcher.tasks_per_node": "4",
                                           "launcher.gpus_per_node": "4", "launcher.mem": "64G", "launcher.wait": "false",
                                           "launcher.sbatch": "--constraint=a100; --exclusive"})
    assert launcher == "slurm" and opts.ranks == 8 and not opts.wait
    params = opts.executor_parameters("rlsd-grpo-s0")
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 4 and params["gpus_per_node"] == 4
    assert params["mem"] == "64G" and params["additional_parameters"] == {"constraint": "a100", "exclusive": True}
    given = dict(a.strip("'").split("=", 1) for a in launch.arguments(launcher, opts))
    assert launch.parse_options(given) == (launcher, opts)  # the resume command reproduces the options


@pytest.mark.parametrize(("given", "message"), [
    ({"launcher": "pbs"}, "launcher must be one of local, slurm; got 'pbs'"),
    ({"launcher": "slurm", "launcher.nodes": "0"}, "launcher.nodes must be an integer >= 1; got '0'"),
    ({"launcher": "slurm", "launcher.gpus": "8"}, "unknown key launcher.gpus; valid: "),
    ({"launcher.nodes": "2"}, "launcher.nodes apply to launcher=slurm"),
    ({"launcher": "slurm", "launcher.sbatch": "exclusive"}, "launcher.sbatch takes long sbatch options"),
    ({"launcher": "slurm", "launcher.wait": "maybe"}, "launcher.wait must be true or false; got 'maybe'"),
])
def test_bad_launcher_options_name_the_value_and_the_valid_ones(given, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        launch.parse_options(given)


def test_the_dry_run_lists_each_job_with_its_sbatch_header(tmp_path):
    opts = launch.parse_options({"launcher": "slurm", "launcher.gpus_per_node": "8", "launcher.tasks_per_node": "8",
                                 "launcher.partition": "gpu", "launcher.time": "240"})[1]
    text = launch.dry_run_text([("grpo-s0", tmp_path / "runs" / "grpo-s0"), ("rlsd-s0", tmp_path / "runs" / "rlsd-s0")],
                               opts, tmp_path / "slurm", planned_ranks=8)
    assert "2 jobs, one per run" in text and "(8 ranks per run)" in text and f"rlsd-s0 -> {tmp_path}/runs/rlsd-s0" in text
    for line in ("#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=240", "#SBATCH --signal=USR2@90"):
        assert line in text
    assert "warning" not in text  # 8 ranks planned, 8 submitted


def test_the_dry_run_warns_when_the_jobs_ranks_differ_from_the_plans(tmp_path):
    """The paper's plan assumes 32 ranks per run; launcher's defaults would submit one rank with no GPU."""
    opts = launch.parse_options({"launcher": "slurm"})[1]
    text = launch.dry_run_text([("grpo-s0", tmp_path / "runs" / "grpo-s0")], opts, tmp_path / "slurm", planned_ranks=32)
    assert text.startswith("warning: the plan above assumes 32 ranks per run") and "would start 1" in text


# ---- a real one-node Slurm ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Path:
    """A running one-node Slurm for this session; SLURM_CONF points the clients (and submitit) at it."""
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not found; Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmctld and slurmd as root; this is not root")
    state = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(START), "start", str(state)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"tests/slurm/start_slurm.sh failed ({r.returncode}): {r.stderr}")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield state
    subprocess.run(["bash", str(START), "stop", str(state)], timeout=60)
    os.environ.pop("SLURM_CONF") if before is None else os.environ.__setitem__("SLURM_CONF", before)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.cluster
def test_a_study_on_slurm_survives_a_requeue_and_matches_the_local_one(slurm, tmp_path, tiny_dir, monkeypatch):
    from rlsd_harness.analysis import compare
    from rlsd_harness.cli.compare import main as compare_main
    from tests import slurm_helpers

    # the jobs' processes register the test-only parity verifier too (mixed rewards: a table worth comparing)
    monkeypatch.setattr(compare, "_train", slurm_helpers.train_with_parity)
    args = ["experiment=smoke", "model.warmup=null", "data.verifier=parity", "rollout.max_new_tokens=8",
            "train.prompts_per_step=2", "train.group_size=4", "train.micro_batch_size=8", "eval.n=8",
            "eval.budget_n=8", "train.steps=3", "train.save_every=1"]
    local, on_slurm = tmp_path / "local", tmp_path / "slurm"
    # one torch thread per run in both (conftest sets it here; the jobs take launcher.cpus_per_task=1)
    compare_main([f"out={local}", *args])

    slurm_args = [f"out={on_slurm}", "launcher=slurm", "launcher.poll_s=1", "launcher.time=30", *args]
    compare_main([*slurm_args, "launcher.wait=false"])  # submits the four runs and returns
    jobs = json.loads((on_slurm / "jobs.json").read_text())
    assert sorted(jobs) == ["grpo-s0", "grpo-s1", "rlsd-s0", "rlsd-s1"]
    victim = on_slurm / "runs" / "grpo-s0"
    job_id = jobs["grpo-s0"]["job_id"]
    _wait_for(lambda: (victim / "checkpoints" / "step-000001" / "manifest.json").exists()
              or (victim / "finished.json").exists(), 900, "grpo-s0's first checkpoint")
    assert not (victim / "finished.json").exists(), "grpo-s0 finished before it could be requeued mid-run"
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)  # what a preemption does to it
    # Slurm holds a requeued batch job for about two minutes (its EligibleTime); a test need not wait for that
    _wait_for(lambda: "Reason=BeginTime" in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True,
                                                            text=True, timeout=60).stdout, 120, "the requeue")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)

    compare_main([*slurm_args, "launcher.wait=false"])  # finds its jobs queued: submits nothing
    assert {k: v["job_id"] for k, v in json.loads((on_slurm / "jobs.json").read_text()).items()} == \
        {k: v["job_id"] for k, v in jobs.items()}
    compare_main(slurm_args)  # waits for them, then writes the report
    after = json.loads((on_slurm / "jobs.json").read_text())
    assert {v["state"] for v in after.values()} == {"finished"} and after["grpo-s0"]["job_id"] == job_id
    log = (on_slurm / "slurm" / f"{job_id}_0_log.out").read_text()
    assert log.count("Starting with JobEnvironment") == 2  # the job ran twice: before and after its requeue
    steps = [json.loads(x)["rollout_step"] for x in (victim / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # resumed from a checkpoint: no step repeated, none missing

    assert (on_slurm / "table.csv").read_text() == (local / "table.csv").read_text()
    for run in ("grpo-s0", "rlsd-s1"):
        assert (on_slurm / "runs" / run / "final" / "model.safetensors").read_bytes() == \
            (local / "runs" / run / "final" / "model.safetensors").read_bytes()
    assert json.loads((on_slurm / "meta.json").read_text())["launcher"].startswith("slurm: nodes=1")


@pytest.mark.cluster
def test_a_preemption_signal_requeues_the_job_and_the_run_resumes_bit_identical(slurm, tmp_path, tiny_dir):
    """The path a time limit or a preemption notice takes: Slurm sends SIGUSR2 to the job's tasks (here at once,
    with `scancel --signal=USR2`, instead of `launcher.signal_delay_s` before the limit); submitit's handler calls
    SlurmRun.checkpoint, requeues the job (`scontrol requeue`) and exits the task mid-step. The requeued job
    resumes the run from its newest good checkpoint, and the run ends as the same run trained uninterrupted."""
    from rlsd_harness.analysis import compare
    from rlsd_harness.config import compose_config
    from tests import resume_helpers, slurm_helpers

    def cfg(name: str):
        return compose_config(small_overrides(tmp_path, f"run.name={name}", "train.steps=4", "train.save_every=1",
                                              "train.prompts_per_step=2", "train.micro_batch_size=8"))

    compare._train(tmp_path / "local", cfg("local"), lambda msg: None, "cmd")  # the uninterrupted run, in-process

    victim, messages = tmp_path / "slurm", []
    opts = launch.parse_options({"launcher": "slurm", "launcher.wait": "false", "launcher.poll_s": "1",
                                 "launcher.time": "30"})[1]
    study = tmp_path / "study"
    launch.train_slurm([("slurm", victim, cfg("slurm"))], opts, study, slurm_helpers.train_with_parity,
                       messages.append, "cmd", _Bar())
    job_id = json.loads((study / "jobs.json").read_text())["slurm"]["job_id"]
    _wait_for(lambda: (victim / "checkpoints" / "step-000001" / "manifest.json").exists(), 900, "the first checkpoint")
    assert not (victim / "finished.json").exists(), "the run finished before it could be signalled mid-run"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=60)

    def show() -> str:
        return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60).stdout

    # Slurm holds a requeued batch job for a while (its EligibleTime); a test need not wait for that
    _wait_for(lambda: "Reason=BeginTime" in show(), 120, "the job to requeue itself")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=60)
    opts.wait = True
    assert launch.train_slurm([("slurm", victim, cfg("slurm"))], opts, study, slurm_helpers.train_with_parity,
                              messages.append, "cmd", _Bar())
    rec = json.loads((study / "jobs.json").read_text())["slurm"]
    assert rec["state"] == "finished" and rec["job_id"] == job_id and "Restarts=1" in show()
    log = "".join((study / "slurm" / f"{job_id}_0_log.{ext}").read_text() for ext in ("out", "err"))
    # submitit's handler ran: the signal was caught, the run's checkpoint hook called, the job requeued by itself
    for line in ("Caught signal SIGUSR2", "this job is preempted", "Calling checkpoint method", f"Requeued job {job_id}"):
        assert line in log, line
    assert log.count("Starting with JobEnvironment") == 2
    assert resume_helpers.differences(tmp_path / "local", victim) == []


@pytest.mark.cluster
def test_one_run_across_two_srun_tasks_matches_the_deepspeed_launcher(slurm, tmp_path, tiny_dir):
    """ZeRO-2 on gloo: two tasks of one srun step (ranks from SLURM_PROCID / SLURM_STEP_NUM_TASKS, the rendezvous
    on the node list's first host) train the same weights as two ranks under the `deepspeed` launcher."""
    from safetensors.torch import load_file

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

    def args(name: str) -> list[str]:
        return [*small_overrides(tmp_path, f"run.name={name}", "deepspeed=zero2", "train.steps=2",
                                 "train.micro_batch_size=8", "optim.lr=1e-4"), "--stop-early"]

    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent))
    subprocess.run([launcher, "--num_gpus", "2", "--master_port", "29541", "tests/ds_worker.py", *args("deepspeed")],
                   cwd=REPO, env=env, check=True, timeout=600)
    subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", "--time=10", sys.executable, "tests/ds_worker.py",
                    *args("srun")], cwd=REPO, env=env, check=True, timeout=600)
    a = load_file(tmp_path / "deepspeed" / "final" / "model.safetensors")
    b = load_file(tmp_path / "srun" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
    for name in ("deepspeed", "srun"):  # rows were balanced between ranks: a world of two, not two of one
        metrics = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [m["rollout_step"] for m in metrics] == [0, 1, 2]
        assert all("actor/rank_imbalance_before" in m for m in metrics[1:])


class _FakeExecutor:
    """submitit.SlurmExecutor's surface that train_slurm uses, submitting nothing (job ids 100, 101, ...)."""

    submitted: list[tuple[str, dict]] = []

    def __init__(self, folder, max_num_timeout):
        self.folder, self.params = Path(folder), {}

    def update_parameters(self, **params):
        self.params = params

    def submit(self, fn, run_dir, cfg_yaml, command):
        job_id = str(100 + len(self.submitted))
        self.submitted.append((Path(run_dir).name, self.params))
        paths = type("Paths", (), {"stderr": self.folder / f"{job_id}_0_log.err"})
        return type("Job", (), {"job_id": job_id, "paths": paths})


class _Bar:
    def update(self, n): pass

    def set_postfix(self, **kw): pass


def test_jobs_are_recorded_never_submitted_twice_and_a_failure_is_reported_with_its_log(tmp_path, monkeypatch):
    import submitit
    from omegaconf import OmegaConf

    monkeypatch.setattr(submitit, "SlurmExecutor", _FakeExecutor)
    monkeypatch.setattr(_FakeExecutor, "submitted", [])
    queue: dict[str, str] = {}  # a job's state while queued (PENDING unless set), until it is in `ended`
    ended: set[str] = set()
    monkeypatch.setattr(launch, "queue_states", lambda ids: {i: queue.get(i, "PENDING") for i in ids if i not in ended})
    jobs = [(name, tmp_path / "runs" / name, OmegaConf.create({})) for name in ("grpo-s0", "rlsd-s0")]
    opts = launch.parse_options({"launcher": "slurm", "launcher.wait": "false", "launcher.poll_s": "0.01"})[1]
    messages: list[str] = []
    train = lambda *a: None  # noqa: E731  (never called: the fake submits nothing)

    assert not launch.train_slurm(jobs, opts, tmp_path, train, messages.append, "cmd", _Bar())
    recorded = json.loads((tmp_path / "jobs.json").read_text())
    assert {k: v["job_id"] for k, v in recorded.items()} == {"grpo-s0": "100", "rlsd-s0": "101"}
    assert _FakeExecutor.submitted[0][1]["job_name"] == "rlsd-grpo-s0"

    # both queued: a rerun submits nothing
    queue.update({"100": "RUNNING", "101": "PENDING"})
    assert not launch.train_slurm(jobs, opts, tmp_path, train, messages.append, "cmd", _Bar())
    assert len(_FakeExecutor.submitted) == 2 and "Slurm job 100 is RUNNING; not submitted again" in "\n".join(messages)

    # grpo-s0's job ends with the run failed; rlsd-s0's job dies without a word: each reported, neither resubmitted
    (tmp_path / "runs" / "grpo-s0").mkdir(parents=True)
    (tmp_path / "runs" / "grpo-s0" / "failed.json").write_text(json.dumps({"error": "ValueError: bad batch"}))
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "101_0_log.err").write_text("loading\nslurmstepd: error: Detected 1 oom_kill event\n")
    ended.update({"100", "101"})
    opts.wait = True
    messages.clear()
    assert launch.train_slurm(jobs, opts, tmp_path, train, messages.append, "cmd", _Bar())
    text = "\n".join(messages)
    assert "grpo-s0 failed in Slurm job 100: ValueError: bad batch" in text
    assert "rlsd-s0 failed in Slurm job 101" in text and "oom_kill event" in text
    failed = json.loads((tmp_path / "runs" / "rlsd-s0" / "failed.json").read_text())
    assert failed["slurm_job"] == "101" and "oom_kill" in failed["log_tail"]  # the report counts it as failed
    states = {k: v["state"] for k, v in json.loads((tmp_path / "jobs.json").read_text()).items()}
    assert states == {"grpo-s0": "failed", "rlsd-s0": "ended unfinished"} and len(_FakeExecutor.submitted) == 2

    # the next invocation retries both (as a local rerun retries a failed run), naming the earlier jobs
    opts.wait = False
    launch.train_slurm(jobs, opts, tmp_path, train, messages.append, "cmd", _Bar())
    recorded = json.loads((tmp_path / "jobs.json").read_text())
    assert recorded["grpo-s0"]["job_id"] == "102" and recorded["grpo-s0"]["earlier_jobs"] == ["100"]
    # every state change seen, each with its job id: the record is the study's history of its Slurm jobs
    assert [h[1:] for h in recorded["grpo-s0"]["history"]] == \
        [["100", "PENDING"], ["100", "RUNNING"], ["100", "failed"], ["102", "PENDING"]]
    assert [h[1:] for h in recorded["rlsd-s0"]["history"]] == [["101", "PENDING"], ["101", "ended unfinished"],
                                                              ["103", "PENDING"]]
