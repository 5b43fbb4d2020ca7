import pytest
import torch

from rlsd_harness.prompts import REFERENCE_TEMPLATE
from rlsd_harness.training import teacher as teacher_module
from rlsd_harness.training.teacher import TeacherConfig, TeacherWeights, sibling_contexts
from tests.test_trainer import make_trainer


def test_teacher_sees_the_same_images_and_response_tokens(tmp_path, tiny_dir):
    trainer = make_trainer(tmp_path, "algorithm=rlsd")
    seen = {}
    original = trainer._teacher_signals

    def spy(mb, policy):
        seen["mb"] = mb
        original(mb, policy)

    trainer._teacher_signals = spy
    trainer.step()
    mb = seen["mb"]
    pad = trainer.processor.tokenizer.pad_token_id
    tok = trainer.processor.tokenizer
    for r in range(mb.batch_size):
        student = tok.decode(mb.student.ids[r][mb.student.mask[r] > 0])
        teacher = tok.decode(mb.teacher.ids[r][mb.teacher.mask[r] > 0])
        assert "Here is a reference solution:" in teacher and "reference" not in student
        assert teacher.count("<|image_pad|>") == student.count("<|image_pad|>") > 0
    # the teacher's own encoding of its prompts carries exactly the student's pixels
    from rlsd_harness.rollout.hf import encode_prompts, user_messages

    prompts = trainer.data.prompts(1, 4)
    _, t_vision = encode_prompts(trainer.processor,
                                 [user_messages(REFERENCE_TEMPLATE.format(question=p.question, hint=p.answer), 1) for p in prompts],
                                 [p.images for p in prompts])
    _, s_vision = encode_prompts(trainer.processor, [user_messages(p.question, 1) for p in prompts], [p.images for p in prompts])
    assert torch.equal(t_vision.pixel_values, s_vision.pixel_values)
    assert mb.teacher_logp.shape == mb.response_ids.shape
    assert not (mb.response_ids == pad).logical_and(mb.response_mask > 0).any()


def _tiny_module():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_sync_and_ema_update_at_exactly_the_configured_steps():
    student = _tiny_module()
    sync = TeacherWeights(TeacherConfig(weights="sync", sync_every=3), student)
    ema = TeacherWeights(TeacherConfig(weights="ema", ema_rate=0.25), student)
    frozen = TeacherWeights(TeacherConfig(weights="frozen"), student)
    init = student.weight.detach().clone()
    changed = []
    for step in range(1, 8):
        with torch.no_grad():
            student.weight.add_(1.0)
        before = ema.model.weight.detach().clone()
        if sync.after_step(step, student):
            changed.append(step)
            assert torch.equal(sync.model.weight, student.weight)
        ema.after_step(step, student)
        frozen.after_step(step, student)
        assert torch.allclose(ema.model.weight, 0.75 * before + 0.25 * student.weight)
    assert changed == [3, 6]
    assert torch.equal(frozen.model.weight, init)
    live = TeacherWeights(TeacherConfig(weights="live"), student)
    assert live.module(student) is student and live.model is None


def test_sibling_context_excludes_own_success_and_masks_lonely_rows():
    class Ex:
        question, images = "Q?", [None]

    texts = ["a", "b", "c", "d", "e", "f"]
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    convs, mask = sibling_contexts([Ex(), Ex()], 3, texts, rewards, TeacherConfig(weights="ema"))
    # group 1 (rows 0-2): row 0 is the only success, so it has no demonstration of its own
    assert mask.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert "Correct solution:\n\na" in convs[1][0]["content"][-1]["text"]
    assert "Correct solution:\n\ne" in convs[3][0]["content"][-1]["text"]


def test_teacher_config_has_no_feedback_option_and_names_unknown_keys():
    # No verifier returns feedback text, so an include_feedback switch could only ever be a no-op: it is gone, and
    # a config that still sets it fails, naming the key, where it came from and the valid keys.
    assert "include_feedback" not in TeacherConfig.__dataclass_fields__
    with pytest.raises(KeyError, match=r"\['include_feedback'\] for algorithm\.teacher; valid: .*include_own_success"):
        teacher_module.teacher_config({"weights": "ema", "include_feedback": True})
    assert teacher_module.teacher_config({"weights": "ema", "ema_rate": 0.25}).ema_rate == 0.25


@pytest.mark.parametrize("share", [True, False])
def test_ledger_counts_match_hand_counted_tokens(tmp_path, tiny_dir, share):
    trainer = make_trainer(tmp_path, "algorithm=rlsd", f"train.share_prompts={share}")
    seen = {}
    original = trainer._micro_loss

    def spy(mb, sums):
        seen.setdefault("mbs", []).append(mb)
        return original(mb, sums)

    trainer._micro_loss = spy
    m = trainer.step()
    mbs = seen["mbs"]
    generated = sum(float(mb.response_mask.sum()) for mb in mbs)
    G = trainer.cfg.train.group_size
    assert len(mbs) == 1 and mbs[0].batch_size == 4 * G  # one micro-batch: whole groups, rows prompt-major
    mb = mbs[0]
    shape, responses, patches = trainer.shape, mb.response_mask.sum(-1), mb.vision.image_grid_thw.prod(-1)

    def hand_count(prompt_mask):
        if share:  # each group's prompt (and image) once, then every response over it
            return (float(prompt_mask[::G].sum() + responses.sum()),
                    shape.forward_flops(prompt_mask[::G].sum(-1), patches[::G])
                    + shape.generate_flops(prompt_mask.sum(-1), responses))
        return float(prompt_mask.sum() + responses.sum()), shape.forward_flops(prompt_mask.sum(-1) + responses, patches)

    student, student_flops = hand_count(mb.student.mask)
    teacher, teacher_flops = hand_count(mb.teacher.mask)
    assert m["ledger/step/tokens/generated"] == generated
    assert m["ledger/step/tokens/fwd_policy"] == m["ledger/step/tokens/bwd_policy"] == student
    assert m["ledger/step/tokens/fwd_teacher"] == teacher
    assert m["ledger/step/flops/teacher"] == pytest.approx(teacher_flops, rel=1e-12)
    assert m["ledger/step/prompts"] == 4
    assert m["ledger/step/flops/policy_fwd"] == pytest.approx(student_flops, rel=1e-12)
    assert m["ledger/step/flops/policy_bwd"] == 2 * m["ledger/step/flops/policy_fwd"]
    assert m["ledger/step/flops/total"] == sum(m[f"ledger/step/flops/{k}"] for k in ("rollout", "policy_fwd", "policy_bwd", "teacher"))


def _gathered(module) -> dict[str, torch.Tensor]:
    from rlsd_harness.dist import iter_full_parameters

    return {n: t.detach().clone() for n, t in iter_full_parameters(module, zero_stage=3)}


def test_zero3_teacher_is_partitioned_and_follows_sync_ema_and_checkpoints(tmp_path, tiny_dir):
    from rlsd_harness.training import checkpoint

    # sync every step (RLSD's teacher): after one step the partitioned teacher equals the policy
    trainer = make_trainer(tmp_path, "algorithm=rlsd", "deepspeed=zero3", "algorithm.teacher.sync_every=1")
    teacher = trainer.teacher.model
    assert trainer.teacher.partitioned
    assert all(hasattr(p, "ds_tensor") for p in teacher.parameters())
    assert any(p.numel() == 0 for p in teacher.parameters())  # big parameters live only as shards between forwards
    trainer.step()
    synced, policy = _gathered(teacher), _gathered(trainer.engine.module)
    assert synced.keys() == policy.keys() and all(torch.equal(synced[n], policy[n]) for n in synced)
    # forwards agree too: small "persistent" parameters, kept gathered after a forward, were not left stale
    ids = torch.arange(1, 17).view(2, 8)
    with torch.no_grad():
        assert torch.equal(teacher(input_ids=ids).logits, trainer.engine.module(input_ids=ids).logits)

    # a checkpoint carries the partitioned teacher's full weights and restores them into a fresh trainer
    folder = checkpoint.save(tmp_path / "ck" / "step-000001", trainer, 0, {"step": 1})
    fresh = make_trainer(tmp_path, "algorithm=rlsd", "deepspeed=zero3", "algorithm.teacher.sync_every=1")
    initial = _gathered(fresh.teacher.model)
    assert any(not torch.equal(initial[n], synced[n]) for n in synced)
    checkpoint.load(folder, fresh, 0)
    restored = _gathered(fresh.teacher.model)
    assert all(torch.equal(restored[n], synced[n]) for n in synced)

    # EMA (SDPO's teacher): theta_T <- theta_T + tau (theta_S - theta_T), shard by shard
    trainer = make_trainer(tmp_path, "algorithm=sdpo", "deepspeed=zero3", "run.name=ema")
    before = _gathered(trainer.teacher.model)
    trainer.step()
    after, policy = _gathered(trainer.teacher.model), _gathered(trainer.engine.module)
    tau = trainer.teacher.cfg.ema_rate
    for n in before:
        assert torch.allclose(after[n], before[n] + tau * (policy[n] - before[n]), atol=1e-7), n
    assert any(not torch.equal(after[n], before[n]) for n in before)


def test_bf16_policy_keeps_an_fp32_ema_teacher_under_zero3(tmp_path, tiny_dir):
    trainer = make_trainer(tmp_path, "algorithm=sdpo", "deepspeed=zero3", "deepspeed.bf16=true")
    assert next(trainer.engine.module.parameters()).dtype == torch.bfloat16
    assert all(p.ds_tensor.dtype == torch.float32 for p in trainer.teacher.model.parameters())
    before = _gathered(trainer.teacher.model)
    metrics = trainer.step()
    after, policy = _gathered(trainer.teacher.model), _gathered(trainer.engine.module)
    tau = trainer.teacher.cfg.ema_rate
    for n in before:  # the blend reads the bf16 student and accumulates in fp32
        assert torch.allclose(after[n], before[n] + tau * (policy[n].float() - before[n]), atol=1e-6), n
    assert metrics["teacher/updates"] == 1 and torch.isfinite(torch.tensor(metrics["actor/loss"]))


def test_rlsd_runs_and_charges_no_teacher_once_lambda_is_zero_and_trains_the_same(tmp_path, tiny_dir, monkeypatch):
    # λ 0.5 -> 0 over 2 steps: λ(1) = 0.25, λ(2) = λ(3) = 0, where Â = A exactly and the teacher is not read
    args = ("algorithm=rlsd", "algorithm.params.lam_decay_steps=2", "algorithm.teacher.weights=frozen")
    lean = make_trainer(tmp_path / "lean", *args)
    steps = [lean.step() for _ in range(3)]
    charged = [m.get("ledger/step/flops/teacher", 0.0) for m in steps]
    assert charged[0] > 0 and charged[1:] == [0.0, 0.0]
    assert steps[0]["ledger/step/tokens/fwd_teacher"] > 0 and "ledger/step/tokens/fwd_teacher" not in steps[2]
    assert "actor/w_clip_low_frac" in steps[0] and "actor/w_clip_low_frac" not in steps[2]
    assert [m["actor/lambda"] for m in steps] == [0.25, 0.0, 0.0]
    # the same three steps with the teacher forced on at every step: the same parameters, bit for bit
    from rlsd_harness.algorithms.rlsd import RLSD

    monkeypatch.setattr(RLSD, "uses_teacher", lambda self, step: True)
    full = make_trainer(tmp_path / "full", *args)
    forced = [full.step() for _ in range(3)]
    assert all(m["ledger/step/flops/teacher"] > 0 for m in forced)
    for (name, p), (_, q) in zip(lean.engine.module.named_parameters(), full.engine.module.named_parameters()):
        assert torch.equal(p, q), name
