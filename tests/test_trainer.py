"""End to end on the random-init tiny VLM: every objective trains, splits change nothing, runs resume exactly,
bad input is refused with a clear message."""

import json

import pytest
import torch

from rlsd_harness.algorithms import objective_names
from rlsd_harness.config import ConfigError, compose_config
from rlsd_harness.data import build_data
from rlsd_harness.models import load_model, load_processor
from rlsd_harness.training import checkpoint
from rlsd_harness.training.preflight import read_config
from rlsd_harness.training.run import run
from rlsd_harness.training.trainer import NonFiniteLoss, Trainer
from rlsd_harness.training.warmup import policy_path
from tests.conftest import small_overrides

ALGORITHMS = [a for a in objective_names()]


def make_trainer(tmp_path, *extra):
    """A Trainer on a small config, validated first as rlsd-train validates it (the Trainer does not check it)."""
    cfg = read_config(compose_config(small_overrides(tmp_path, *extra)))
    path = policy_path(cfg.model, cfg.data)
    return Trainer(cfg, load_model(path), load_processor(path), build_data(cfg.data, cfg.seed), log=lambda m: None,
                   model_path=str(path))


def _train_recording_gradients(trainer, steps: int) -> tuple[dict[str, float], list[float]]:
    """Run `steps` steps; returns each parameter's summed |gradient| over them, and the losses."""
    grad_mass = {n: 0.0 for n, _ in trainer.engine.module.named_parameters()}
    handles = []
    for name, p in trainer.engine.module.named_parameters():
        def record(param, name=name):
            grad_mass[name] += float(param.grad.abs().sum())
        handles.append(p.register_post_accumulate_grad_hook(record))
    losses = [trainer.step()["actor/loss"] for _ in range(steps)]
    for h in handles:
        h.remove()
    return grad_mass, losses


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_objective_moves_every_parameter(tmp_path, tiny_dir, algorithm):
    # Weight decay off: it would move every parameter whatever the gradient. Every parameter must get a non-zero
    # gradient from the objective and move because of it.
    trainer = make_trainer(tmp_path, f"algorithm={algorithm}", "algorithm.lr=null", "optim.weight_decay=0")
    before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    grad_mass, losses = _train_recording_gradients(trainer, 2)
    no_grad = [n for n, g in grad_mass.items() if not g > 0]
    assert not no_grad, f"{algorithm}: parameters with zero gradient: {no_grad[:5]} ({len(no_grad)} in all)"
    unchanged = [n for n, p in trainer.engine.module.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"{algorithm}: parameters that did not move: {unchanged[:5]}"
    assert losses[0] != losses[1]
    assert all(torch.isfinite(torch.tensor(losses)))


def _params_after_one_step(tmp_path, *extra):
    # Adam's eps at 1e-6 rather than 1e-8: its first update is lr * g / (|g| + eps), which turns float-order noise
    # on parameters whose gradient is ~1e-9 (pure noise) into a few percent of lr. A real difference in the
    # gradient still moves parameters by O(lr), 100x the tolerance of the tests below.
    trainer = make_trainer(tmp_path, "optim.eps=1e-6", *extra)
    m = trainer.step()
    return {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}, m


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd", "sdpo"])
def test_micro_batch_split_changes_nothing(tmp_path, tiny_dir, algorithm):
    one, m1 = _params_after_one_step(tmp_path, f"algorithm={algorithm}", "train.micro_batch_size=16")
    many, m4 = _params_after_one_step(tmp_path, f"algorithm={algorithm}", "train.micro_batch_size=4")
    assert m1["rollout/reward"] == m4["rollout/reward"]
    assert abs(m1["actor/loss"] - m4["actor/loss"]) < 1e-5
    worst = max((one[n] - many[n]).abs().max().item() for n in one)
    assert worst < 1e-5


@pytest.mark.parametrize("algorithm", ["grpo", "rlsd"])
def test_shared_prompt_forwards_change_nothing(tmp_path, tiny_dir, algorithm):
    # teacher (RLSD), KL reference (GRPO) and old-policy (two mini-batches) forwards, prompts shared or not
    extra = [f"algorithm={algorithm}", "train.mini_batches=2", "train.micro_batch_size=8",
             *(["algorithm.params.kl_coef=0.1"] if algorithm == "grpo" else [])]
    full, m_full = _params_after_one_step(tmp_path, *extra, "train.share_prompts=false")
    shared, m_shared = _params_after_one_step(tmp_path, *extra, "train.share_prompts=true")
    for key in ("actor/loss", "teacher/kl", "actor/entropy"):
        assert m_full[key] == pytest.approx(m_shared[key], abs=1e-6), key
    assert max((full[n] - shared[n]).abs().max().item() for n in full) < 1e-5
    # the ledger charges what ran: the shared prompts once
    role = "teacher" if algorithm == "rlsd" else "ref"
    assert m_shared[f"ledger/step/tokens/fwd_{role}"] < m_full[f"ledger/step/tokens/fwd_{role}"]


def test_resume_repeats_the_uninterrupted_run(tmp_path, tiny_dir):
    common = ["algorithm=rlsd", "train.steps=4", "train.save_every=2"]
    run(compose_config(small_overrides(tmp_path, *common, "run.name=straight")), log=lambda m: None)
    run(compose_config(small_overrides(tmp_path, *common, "run.name=split", "train.steps=2")), log=lambda m: None)
    run(compose_config(small_overrides(tmp_path, *common, "run.name=split", "run.resume=true")), log=lambda m: None)
    read = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    straight, split = read("straight"), read("split")
    assert [m["rollout_step"] for m in split] == [0, 1, 2, 3, 4]
    for a, b in zip(straight[3:], split[3:]):
        for key in ("rollout/reward", "actor/loss", "actor/entropy", "teacher/kl", "actor/w_clip_high_frac", "ledger/cum/tokens/generated"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, tiny_dir, monkeypatch):
    cfg = compose_config(small_overrides(tmp_path, "train.steps=3", "train.save_every=1", "run.name=nanrun"))
    from rlsd_harness.algorithms.grpo import GRPO

    original = GRPO.loss

    def poisoned(self, mb, policy):
        loss, m = original(self, mb, policy)
        return (loss * float("nan") if mb.step == 2 else loss), m

    monkeypatch.setattr(GRPO, "loss", poisoned)
    with pytest.raises(NonFiniteLoss, match="step 2"):
        run(cfg, log=lambda m: None)
    ckpt = checkpoint.latest(tmp_path / "nanrun")
    assert ckpt.name == "step-000001" and (ckpt / "state.json").exists()
    assert "step 2" in json.loads((tmp_path / "nanrun" / "failed.json").read_text())["error"]


def test_config_errors_name_the_valid_choices(tmp_path):
    with pytest.raises(ConfigError, match="valid: .*grpo.*rlsd"):
        compose_config(["algorithm=nope"])
    with pytest.raises(ConfigError, match="valid: .*tiny"):
        compose_config(["model=huge"])
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'.*steps"):
        compose_config(["train.stepz=3"])
    with pytest.raises(ConfigError, match="unknown key 'algorithm.params.bogus'.*valid keys under algorithm.params"):
        make_trainer(tmp_path, "+algorithm.params.bogus=1")
    # a model that only comes from a local folder: a missing or wrong path is named before any run folder exists
    with pytest.raises(ConfigError, match="set model.path=<folder>"):
        run(compose_config(small_overrides(tmp_path, "model=qwen3-vl-8b", "run.name=nomodel")))
    with pytest.raises(FileNotFoundError, match="model.path=.*nowhere is not a model folder"):
        run(compose_config(small_overrides(tmp_path, "model=qwen3-vl-8b", f"model.path={tmp_path}/nowhere", "run.name=nomodel")))
    assert not (tmp_path / "nomodel").exists()


def test_run_folders_are_never_overwritten_silently(tmp_path, tiny_dir):
    cfg = compose_config(small_overrides(tmp_path, "train.steps=1", "run.name=once"))
    run(cfg, log=lambda m: None)
    with pytest.raises(FileExistsError, match="run.overwrite=true"):
        run(cfg, log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="no run at"):
        run(compose_config(small_overrides(tmp_path, "run.name=never", "run.resume=true")), log=lambda m: None)


def test_objective_needing_a_teacher_refuses_none(tmp_path, tiny_dir):
    # refused by the schema (the Trainer's copy of the rule is gone), naming the key and the valid sources
    with pytest.raises(ConfigError, match=r"algorithm.teacher.weights='none' .*algorithm rlsd needs a teacher signal "
                                          r".*valid: frozen, sync, ema, live"):
        make_trainer(tmp_path, "algorithm=rlsd", "algorithm.teacher.weights=none")


def test_local_data_rows_are_validated(tmp_path):
    from rlsd_harness.data import LocalData

    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"id": "q7", "problem": "What?", "answer": "3"}) + "\n")
    with pytest.raises(ValueError, match="no image column"):
        LocalData(str(bad), cache_dir=str(tmp_path / "cache"))
    bad.write_text(json.dumps({"id": "q8", "problem": "What?", "images": ["x.png"]}) + "\n")
    with pytest.raises(ValueError, match="no column for answer"):
        LocalData(str(bad), cache_dir=str(tmp_path / "cache"))


def test_token_budget_micro_batches_change_nothing(tmp_path, tiny_dir):
    fixed, m1 = _params_after_one_step(tmp_path, "algorithm=rlsd", "train.micro_batch_size=16")
    packed, m2 = _params_after_one_step(tmp_path, "algorithm=rlsd", "train.token_budget=150",
                                        "train.gradient_checkpointing=true")
    assert m1["rollout/reward"] == m2["rollout/reward"] and abs(m1["actor/loss"] - m2["actor/loss"]) < 1e-5
    assert max((fixed[n] - packed[n]).abs().max().item() for n in fixed) < 1e-5


@pytest.mark.parametrize("case", [
    ("grpo", "train.mini_batches=2", "train.micro_batch_size=8", "algorithm.params.kl_coef=0.1"),  # ref + old policy
    ("grpo", "train.share_prompts=false", "train.mini_batches=2", "train.micro_batch_size=8"),
    ("rlsd",), ("rlsd", "train.share_prompts=false"), ("rlsd", "model=tiny_qwen3vl"),
    ("opsd",),  # full-vocabulary JSD with the point-wise clip
    ("sdpo",), ("sdpo", "algorithm.params.topk=0"),  # top-k + tail; full vocabulary
    ("grpo_opsd",), ("opd",),
])
def test_chunked_head_changes_nothing(tmp_path, tiny_dir, case):
    # every pass (update, teacher, reference, old policy) through the chunked head (3 positions per chunk) or the
    # whole (B, T, V) tensor: the same losses, entropies and parameters after a step
    algorithm, *extra = case
    whole, m_whole = _params_after_one_step(tmp_path, f"algorithm={algorithm}", *extra, "train.logits_chunk=0")
    chunked, m_chunked = _params_after_one_step(tmp_path, f"algorithm={algorithm}", *extra, "train.logits_chunk=3")
    for key in ("actor/loss", "actor/entropy", "teacher/kl", "actor/rollout_logp_gap"):
        assert m_chunked[key] == pytest.approx(m_whole[key], abs=1e-6), key
    assert max((whole[n] - chunked[n]).abs().max().item() for n in whole) < 1e-5


def test_a_run_builds_its_data_once(tmp_path, monkeypatch):
    """The data checked before the run folder exists is the data the run trains on: data=local validates every
    row as it opens the files, which a second build repeated at every start."""
    import rlsd_harness.data as data_module

    real, calls = data_module.build_data, []
    monkeypatch.setattr(data_module, "build_data", lambda *a, **k: calls.append(a) or real(*a, **k))
    run(compose_config(small_overrides(tmp_path, "train.steps=1", "run.name=once")), log=lambda m: None)
    assert len(calls) == 1
