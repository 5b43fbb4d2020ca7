"""A refactor keeps the run the same: a seeded short run trained by this tree and by the tree of a recorded
earlier commit (before the run loop was restructured) gives bit-identical metrics (wall-clock ones aside),
held-out records, final weights and last checkpoint (tests/resume_helpers.differences).

Both trees run on this machine in the same venv, so the comparison holds on any CPU. It needs the recorded
commit in the clone's history (a shallow clone lacks it, and the test then skips, saying so)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.resume_helpers import differences

REPO = Path(__file__).resolve().parents[1]
# main before the run loop and Trainer.step were split into phases (#27)
BASELINE = "5e6532f53bcbd947ba9d786cb794fb4b1584d0b6"

# Each configuration reaches a different part of the loop: RLSD's teacher and lambda schedule, budget points
# with their policies and checkpoints off the save_every grid, evaluations; GRPO's probe with two mini-batches
# and two epochs (old-policy log-probs) and a FLOPs budget that stops the run.
RUNS = {
    "rlsd": ["algorithm=rlsd", "train.steps=3", "train.micro_batch_size=8", "train.save_every=2", "train.eval_every=2",
             "train.save_budget_policies=true", "eval.budget_points=[0.5,1.0]", "eval.budget_n=8"],
    "grpo": ["algorithm=grpo", "train.steps=6", "train.mini_batches=2", "train.ppo_epochs=2",
             "train.micro_batch_size=4", "train.save_every=1", "train.eval_every=0",
             "train.budget.kind=flops", "train.budget.value=2e10"],
}
COMMON = ["train.prompts_per_step=2", "train.group_size=4", "rollout.max_new_tokens=16", "eval.n=8",
          "eval.max_new_tokens=16", "train.progress=false", "eval.progress=false", "train.keep_last=null"]


def _commit(ref: str) -> str | None:
    out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=REPO,
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def _export(commit: str, dest: Path) -> Path:
    """The commit's tracked files (git archive: no worktree bookkeeping left behind in the clone)."""
    data = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _train(tree: Path, args: list[str], run_dir: Path) -> None:
    # without this process's process-group variables: the recorded commit's tree would take them for a launcher's
    # and rendezvous on the port this test session's own group listens on
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RLSD_HARNESS_OWN_GROUP")
    env = {**{k: v for k, v in os.environ.items() if k not in launcher}, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-m", "rlsd_harness.cli.train", *args, *COMMON, f"run.dir={run_dir}"],
                         cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{tree.name}: {out.stderr[-3000:]}"
    assert (run_dir / f"{args[0].split('=')[1]}-s0" / "finished.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_run_is_bit_identical_to_the_recorded_commits(name, tmp_path):
    commit = _commit(BASELINE)
    if commit is None:
        pytest.skip(f"commit {BASELINE[:10]} is not in this clone's history (a shallow clone?): nothing to compare with")
    old = _export(commit, tmp_path / "old")
    _train(old, RUNS[name], tmp_path / "runs-old")
    _train(REPO, RUNS[name], tmp_path / "runs-new")
    run = f"{name}-s0"
    assert differences(tmp_path / "runs-old" / run, tmp_path / "runs-new" / run) == []
