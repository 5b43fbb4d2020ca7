"""Dynamic sampling (DAPO's, training/dynamic_sampling.py): the keep rule, the refill loop and its cap, seeded
determinism, and the ledger charging every rollout, the dropped ones included."""

from __future__ import annotations

import pytest
import torch

from rlsd_harness.algorithms.batch import PromptInputs, RolloutBatch
from rlsd_harness.config.typed import TrainDynamicSamplingSection
from rlsd_harness.data import EmbeddedData
from rlsd_harness.rollout.hf import stable_seed
from rlsd_harness.training.dynamic_sampling import (
    ShortBatch,
    fill_batch,
    informative_groups,
)
from rlsd_harness.verifier import Verdict
from tests.conftest import typed_config
from tests.test_trainer import make_trainer

G = 4


def test_keep_rule_is_dapos_unequal_rewards():
    rewards = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0.5, 0.5, 0.5, 0.25], dtype=torch.float)
    assert informative_groups(rewards, 4).tolist() == [False, False, True, True]
    assert informative_groups(torch.tensor([0.0, 1.0, 1.0]), 1).tolist() == [True, True, True]  # verl: len == 1
    with pytest.raises(ValueError, match="groups of 4"):
        informative_groups(torch.zeros(6), 4)


def _batch(rewards: list[float], tag: str) -> tuple[RolloutBatch, list[str]]:
    n = len(rewards) // G
    b = RolloutBatch(response_ids=torch.arange(len(rewards))[:, None].repeat(1, 3), response_mask=torch.ones(len(rewards), 3),
                     rewards=torch.tensor(rewards, dtype=torch.float), group_size=G,
                     rollout_logp=torch.zeros(len(rewards), 3),
                     student=PromptInputs(torch.ones(len(rewards), 2, dtype=torch.long), torch.ones(len(rewards), 2)),
                     extras={"texts": [f"{tag}-{i}" for i in range(len(rewards))]})
    return b, [f"{tag}-p{g}" for g in range(n)]


def seeded_sampler(seed: int, p_equal: float):
    """A rollout stand-in: each group's 0/1 rewards drawn from (seed, round); a group is all-equal w.p. ~p_equal."""
    calls = []

    def sample(round_: int, n: int):
        gen = torch.Generator().manual_seed(stable_seed(seed, round_) % 2**31)
        rewards = []
        for _ in range(n):
            if torch.rand((), generator=gen) < p_equal:
                rewards += [float(torch.rand((), generator=gen) < 0.5)] * G
            else:
                rewards += [1.0, 0.0, 0.0, 0.0]
        calls.append(n)
        return _batch(rewards, f"r{round_}")

    return sample, calls


def test_the_batch_is_refilled_with_informative_groups_only():
    first, prompts = _batch([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0], "r0")  # groups 0, 2 dropped
    sample, calls = seeded_sampler(0, p_equal=0.5)
    out, out_prompts, m = fill_batch(first, prompts, sample, TrainDynamicSamplingSection(enabled=True, max_rounds=10, on_short="fill"))
    assert out.batch_size == 16 and len(out_prompts) == 4
    assert informative_groups(out.rewards, G).all()
    assert out_prompts[:2] == ["r0-p1", "r0-p3"]  # the first rollout's kept groups first, in order
    assert all(p.startswith("r") and not p.startswith("r0") for p in out_prompts[2:])
    # texts travel with their rows
    assert out.extras["texts"][:4] == ["r0-4", "r0-5", "r0-6", "r0-7"]
    assert calls[0] == 2  # the first refill samples what the batch lacks
    assert m["rollout/extra_rollouts"] == sum(calls) * G
    assert m["rollout/refill_rounds"] == len(calls)
    assert m["rollout/groups_dropped"] >= 2 and m["rollout/groups_short"] == 0


@pytest.mark.parametrize("max_rounds", [1, 3])
def test_the_cap_holds_and_a_short_batch_is_filled_or_refused(max_rounds):
    first, prompts = _batch([0.0] * 16, "r0")
    sample, calls = seeded_sampler(1, p_equal=1.0)  # nothing is ever informative
    cfg = TrainDynamicSamplingSection(enabled=True, max_rounds=max_rounds, on_short="fill")
    out, out_prompts, m = fill_batch(first, prompts, sample, cfg)
    assert len(calls) == max_rounds and all(n == 4 for n in calls)
    assert m["rollout/refill_rounds"] == max_rounds and m["rollout/extra_rollouts"] == max_rounds * 16
    assert m["rollout/groups_short"] == 4 and m["rollout/groups_dropped"] == 4 * (max_rounds + 1)
    assert out.batch_size == 16 and out_prompts == prompts  # filled with the first dropped groups
    sample, calls = seeded_sampler(1, p_equal=1.0)
    with pytest.raises(ShortBatch, match="max_rounds"):
        fill_batch(first, prompts, sample, TrainDynamicSamplingSection(enabled=True, max_rounds=max_rounds, on_short="error"))
    assert len(calls) == max_rounds


def test_config_refuses_bad_values():
    # the schema is the one check of train.dynamic_sampling (the Trainer reads the validated section)
    from rlsd_harness.config import ConfigError, compose_config
    from rlsd_harness.training.preflight import check_config

    with pytest.raises(ConfigError, match=r"train.dynamic_sampling.on_short='drop' .*valid: 'fill', 'error'"):
        check_config(compose_config(["train.dynamic_sampling.on_short=drop"]))
    with pytest.raises(ConfigError, match=r"train.dynamic_sampling.max_rounds=0 .*valid: an integer >= 1"):
        check_config(compose_config(["train.dynamic_sampling.max_rounds=0"]))
    default = typed_config().train.dynamic_sampling
    assert default == TrainDynamicSamplingSection(enabled=False, max_rounds=4, on_short="fill")  # train.yaml's


def test_seeded_determinism():
    first, prompts = _batch([1, 1, 1, 1] * 4, "r0")
    runs = []
    for _ in range(2):
        sample, _ = seeded_sampler(7, p_equal=0.6)
        out, p, m = fill_batch(first, prompts, sample, TrainDynamicSamplingSection(enabled=True, max_rounds=8, on_short="fill"))
        runs.append((out.rewards.tolist(), out.extras["texts"], p, m))
    assert runs[0] == runs[1]
    sample, _ = seeded_sampler(8, p_equal=0.6)
    assert fill_batch(first, prompts, sample, TrainDynamicSamplingSection(enabled=True, max_rounds=8, on_short="fill"))[1] != runs[0][2]


def test_refill_stream_is_pure_disjoint_over_ranks_and_leaves_the_main_stream():
    data = EmbeddedData(level=1, seed=3)
    whole = [p.id for p in data.refill_prompts(5, 0, 3)]
    assert [p.id for p in data.refill_prompts(5, 0, 2) + data.refill_prompts(5, 2, 1)] == whole
    ranks = [[p.id for p in data.refill_prompts(5, 0, 3, rank=r, world=2)] for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert whole != [p.id for p in data.refill_prompts(6, 0, 3)]
    assert set(whole).isdisjoint(p.id for p in data.prompts(5, 8))


def test_ledger_charges_dropped_rollouts(tmp_path, tiny_dir):
    """The step's first rollout is all reward 0 (every group dropped); the refill rounds' parity rewards are
    mixed. The ledger's generated tokens and rollout FLOPs are those of every response the engine produced,
    not only of the batch trained on: this fails if the dropped rollouts are not charged."""
    trainer = make_trainer(tmp_path, "train.steps=1", "train.dynamic_sampling.enabled=true",
                           "train.dynamic_sampling.max_rounds=6")
    calls = {"n": 0}

    def verifier(text, gold):
        calls["n"] += 1
        return Verdict(0.0 if calls["n"] <= 16 else float(len(text) % 2 == 0), None)

    generated, trained = [], {}
    original_generate = trainer.rollout.generate

    def spy_generate(prompts, params, seeds):
        ro = original_generate(prompts, params, seeds)
        generated.append(ro)
        return ro

    original_prepare = trainer._prepare

    def spy_prepare(batch, prompts):
        trained["batch"] = batch
        return original_prepare(batch, prompts)

    trainer.verifier, trainer.rollout.generate, trainer._prepare = verifier, spy_generate, spy_prepare
    m = trainer.step()
    assert len(generated) >= 2 and m["rollout/groups_dropped"] >= 4
    all_tokens = sum(float(ro.response_mask.sum()) for ro in generated)
    kept_tokens = float(trained["batch"].response_mask.sum())
    assert m["ledger/step/tokens/generated"] == all_tokens > kept_tokens
    shape = trainer.shape
    all_flops = sum(shape.generate_flops(ro.prompt.mask.sum(-1), ro.response_mask.sum(-1))
                    + shape.forward_flops(torch.zeros(0), ro.vision.image_grid_thw.prod(-1)) for ro in generated)
    assert m["ledger/step/flops/rollout"] == pytest.approx(all_flops, rel=1e-12)
    assert m["ledger/step/prompts"] == sum(len(ro.texts) for ro in generated) / 4
    assert m["rollout/extra_rollouts"] == sum(len(ro.texts) for ro in generated) - 16
    # the trained batch is full, of informative groups only, keyed group by group
    assert trained["batch"].batch_size == 16 and m["rollout/groups_short"] == 0
    assert informative_groups(trained["batch"].rewards, 4).all() and m["actor/zero_std_groups"] == 0
    assert trained["batch"].student.key.tolist() == [g for g in range(4) for _ in range(4)]


@pytest.mark.slow
def test_two_ranks_under_zero3_refill_their_shares_and_charge_every_rollout(tmp_path, tiny_dir):
    """Two ranks (ZeRO-3: generation is collective, so a rank already full still samples in a refill round and
    drops it): the run completes, every trained group is informative, and the ledger's prompts, summed over the
    ranks, are the step's prompts plus every refill prompt (168 s on 2 shared cores at load 25)."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import small_overrides

    repo = Path(__file__).resolve().parent.parent
    args = small_overrides(tmp_path, "run.name=two", "deepspeed=zero3", "train.steps=3", "train.group_size=2",
                           "train.micro_batch_size=4", "train.dynamic_sampling.enabled=true",
                           "train.dynamic_sampling.max_rounds=8", "--stop-early")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    subprocess.run([launcher, "--num_gpus", "2", "--master_port", "29547", "tests/ds_worker.py", *args],
                   cwd=repo, env=env, check=True, timeout=600)
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(lines) == 3
    assert sum(m["rollout/groups_dropped"] for m in lines) > 0 and sum(m["rollout/extra_rollouts"] for m in lines) > 0
    assert sum(m["rollout/groups_surplus"] for m in lines) > 0  # a full rank sampled in a synced round (3, 1, 1 here)
    for m in lines:
        assert m["ledger/step/prompts"] == 4 + m["rollout/extra_rollouts"] / 2
        assert m["rollout/groups_short"] == 0 and m["actor/zero_std_groups"] == 0
