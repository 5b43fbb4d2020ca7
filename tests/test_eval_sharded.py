"""`rlsd-evaluate` across ranks: each rank evaluates items i % world == rank into its own shard file, and rank 0
merges the shards into the same `<key>.jsonl`, metrics and table as one process writes, byte for byte (MMMU's
stateful scorer replayed in dataset order). A killed sharded run resumes per item."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlsd_harness.config import compose_config
from rlsd_harness.dist import _free_port
from rlsd_harness.evaluation.runner import launched_world, read_records, run_benchmarks
from rlsd_harness.rollout.hf import HFRolloutEngine
from tests import benchmark_fixtures as fixtures

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["mmmu", "wemath", "zerobench", "embedded"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return fixtures.write_all(tmp_path_factory.mktemp("shard-fixtures"))


def overrides(sources: dict[str, Path]) -> list[str]:
    return [*(f"eval.sources.{n}={p}" for n, p in sources.items()), "eval.benchmark_max_new_tokens=4",
            "eval.max_new_tokens=4", "eval.progress=false", "eval.batch=2", "eval.decoding=paper"]


def result_files(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())}


def test_the_launched_world_is_read_from_torchrun_and_srun_variables():
    assert launched_world({}) == 1
    assert launched_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == 4
    assert launched_world({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3", "SLURM_NTASKS": "3"}) == 3
    # the batch script itself (no step variables) is one process, whatever --ntasks says
    assert launched_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == 1


def test_a_killed_sharded_run_resumes_per_item_and_merges_as_one_process(tiny, tiny_dir, sources, tmp_path,
                                                                         monkeypatch):
    model, processor = tiny
    cfg = compose_config(overrides(sources))

    def run(out: Path) -> None:
        run_benchmarks(tiny_dir, NAMES, cfg, out, limit=3, model=model, processor=processor, log=lambda m: None)

    one = tmp_path / "one"
    run(one)
    # A 2-rank run killed part-way: rank 0 finished its share (items 0, 2, ...), rank 1 wrote none of its own.
    # Rank 0 scored MMMU with its own generator, which drew for its items only: its verdicts may differ from
    # one process's, so they are replaced here by wrong ones that the merge must score again in order.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(one / "config.json", killed / "config.json")
    expected = 0
    for key in NAMES:
        lines = [json.loads(ln) for ln in (one / f"{key}.jsonl").read_text().splitlines()]
        order = list(dict.fromkeys(r["id"] for r in lines))
        rank0 = [r for r in lines if order.index(r["id"]) % 2 == 0]
        if key == "mmmu":
            rank0 = [{**r, "correct": not r["correct"], "parsed": "Z"} for r in rank0]
        (killed / f"{key}.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rank0))
        expected += len(order) - len(order[::2])
    prompts: list[int] = []
    original = HFRolloutEngine.generate

    def counting(self, prompts_, params, seeds):
        prompts.append(len(prompts_))
        return original(self, prompts_, params, seeds)

    monkeypatch.setattr(HFRolloutEngine, "generate", counting)
    run(killed)  # one process finishes the shards' work
    assert sum(prompts) == expected  # only rank 1's items were generated
    assert not list(killed.glob("*.rank*.jsonl"))  # merged, then removed
    assert result_files(killed) == result_files(one)
    fallbacks = [r for recs in read_records(one / "mmmu.jsonl").values() for r in recs if r.get("random_fallback")]
    assert fallbacks  # the replayed generator decided some verdicts


def _evaluate(out: Path, tiny_dir: Path, sources: dict[str, Path], env: dict[str, str],
              names: list[str] = NAMES) -> subprocess.Popen:
    code = ("import sys; from rlsd_harness.cli import evaluate; evaluate.main(sys.argv[1:])")
    args = [sys.executable, "-c", code, f"checkpoint={tiny_dir}", f"out={out}", f"benchmarks=[{','.join(names)}]",
            "limit=5", *overrides(sources)]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.Popen(args, cwd=ROOT, env={**base, "OMP_NUM_THREADS": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_ranks_write_the_same_files_as_one_process(tiny_dir, sources, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    proc = _evaluate(one, tiny_dir, sources, {})
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    port = str(_free_port())
    ranks = [_evaluate(two, tiny_dir, sources, {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], [err for _, err in outputs]
    assert outputs[0][0] == stdout.replace(str(one), str(two))  # rank 0 prints the table
    assert outputs[1][0] == ""  # the other rank prints nothing
    assert "(2 ranks)" in outputs[0][1]
    assert result_files(two) == result_files(one)
    # both ranks generated: rank 1's items are in the merged file too (limit=5: items 1 and 3 of each)
    assert len(read_records(two / "embedded.jsonl")) == 5


@pytest.mark.slow
def test_a_problem_stops_every_rank_with_its_message(tiny_dir, sources, tmp_path):
    """No rank waits forever for one that stopped: both exit 2 with the problem, and nothing is written."""
    out = tmp_path / "out"
    port = str(_free_port())
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    ranks = []
    for r in (0, 1):
        proc = _evaluate(out, tiny_dir, {**sources, "mathvision": Path("/nonexistent/mathvision")},
                         {**env, "RANK": str(r), "LOCAL_RANK": str(r)}, [*NAMES, "mathvision"])
        ranks.append(proc)
    errors = [p.communicate(timeout=300)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [2, 2], errors
    assert all("mathvision: split 'test', row None: local path '/nonexistent/mathvision' does not exist" in e
               for e in errors), errors
    assert not out.exists()
