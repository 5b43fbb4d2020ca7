"""LoRA's pieces on the tiny VLM, without a training run: which weights train, the teacher on the policy's own
base (adapters off, or its adapter set synced / blended), merged weights against peft's own merge, the vLLM
sync's merged names and values against the stand-in engine, the ledger's backward charge, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from rlsd_harness.config import ConfigError
from rlsd_harness.models import (
    TEACHER_ADAPTER,
    AdapterView,
    apply_lora,
    load_model,
    lora_layers,
    merged_state_dict,
)
from rlsd_harness.rollout import vllm as vr
from rlsd_harness.training import lora
from rlsd_harness.training.ledger import ModelShape
from rlsd_harness.training.teacher import TeacherConfig, TeacherWeights
from tests.test_vllm_engine import FakeZero3, StandInModel

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def settings(**kw):
    return OmegaConf.create({"enabled": True, "rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": TARGETS,
                             "vision": False, "teacher": "adapters", **kw})


def run_cfg(algorithm_teacher: dict, **kw):
    return OmegaConf.create({"model": {"lora": settings(**kw)}, "algorithm": {"teacher": algorithm_teacher}})


def lora_model(tiny_dir, seed: int = 0, teacher_adapter: bool = False, **kw):
    """The tiny model with adapters whose B is random (peft starts it at zero: the adapters would do nothing)."""
    model = apply_lora(load_model(tiny_dir), settings(**kw), teacher_adapter=teacher_adapter)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model.eval()


def inputs(tiny):
    _, processor = tiny
    ids = processor.tokenizer("What is 3 + 4? The answer is 7.", return_tensors="pt").input_ids
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def test_only_the_student_adapters_train(tiny_dir):
    model = lora_model(tiny_dir, teacher_adapter=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and ".default." in n for n in trainable)
    # language model only: the vision tower's MLPs share the names but get no adapter unless model.lora.vision
    assert not any(".visual." in n for n, _ in model.named_parameters() if ".lora_" in n)
    assert {n.split(".")[-4] for n in trainable} == set(TARGETS)
    with_vision = apply_lora(load_model(tiny_dir), settings(vision=True))
    assert any(".visual." in n for n, _ in with_vision.named_parameters() if ".lora_" in n)


def test_base_teacher_is_the_base_model_and_no_copy(tiny, tiny_dir):
    plain = load_model(tiny_dir).eval()
    model = lora_model(tiny_dir)
    params_before = sum(p.numel() for p in model.parameters())
    holder = lora.teacher_weights(run_cfg({"weights": "frozen"}), TeacherConfig(weights="frozen"), model)
    assert isinstance(holder, lora.LoraTeacher) and holder.model is None
    assert sum(p.numel() for p in model.parameters()) == params_before  # nothing was copied or added
    x = inputs(tiny)
    with torch.no_grad():
        want, student = plain(**x).logits, model(**x).logits
        got = holder.module(model)(**x).logits
        again = model(**x).logits
    assert torch.equal(got, want)  # adapters off: exactly the base's computation
    assert not torch.allclose(student, want)  # the adapters (random B) do change the output
    assert torch.equal(again, student)  # and are back on after the teacher's forward
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())
    ref = lora.reference_weights(run_cfg({"weights": "frozen"}), model)
    assert ref.model is None and ref.adapter is None


@pytest.mark.parametrize("weights", ["sync", "ema"])
def test_teacher_adapter_follows_the_student_on_schedule(tiny, tiny_dir, weights):
    model = lora_model(tiny_dir, teacher_adapter=True)
    tconf = TeacherConfig(weights=weights, sync_every=2, ema_rate=0.25)
    holder = lora.teacher_weights(run_cfg({"weights": weights}), tconf, model)
    assert holder.adapter == TEACHER_ADAPTER
    layer = lora_layers(model)[0]
    student_b, teacher_b = layer.lora_B["default"].weight, layer.lora_B[TEACHER_ADAPTER].weight
    assert not teacher_b.requires_grad and teacher_b.abs().sum() == 0  # the initial (zero) B, before our change
    x = inputs(tiny)
    with torch.no_grad():
        base = AdapterView(model, None)(**x).logits
        assert torch.equal(holder.module(model)(**x).logits, base)  # teacher adapter = initial policy = base
    changed = holder.after_step(1, model)
    if weights == "sync":  # not at step 1 of sync_every=2; at step 2 a hard copy
        assert not changed and teacher_b.abs().sum() == 0
        assert holder.after_step(2, model)
        assert torch.equal(teacher_b, student_b)
        with torch.no_grad():
            assert torch.equal(holder.module(model)(**x).logits, model(**x).logits)
    else:
        assert changed and torch.allclose(teacher_b, 0.25 * student_b)
    assert holder.updates == 1
    assert all(p.requires_grad == (".lora_" in n and ".default." in n) for n, p in model.named_parameters())


def test_merged_weights_equal_peft_merge_and_load_into_the_plain_model(tiny, tiny_dir):
    model = lora_model(tiny_dir)
    merged = merged_state_dict(model, {k: v.clone() for k, v in model.state_dict().items()})
    reference = copy.deepcopy(model)
    for layer in lora_layers(reference):
        layer.merge()  # peft's own merge: base_layer.weight += delta
    for prefix, module in reference.named_modules():
        if module in lora_layers(reference):
            assert torch.allclose(merged[f"{prefix}.weight"], module.base_layer.weight, atol=1e-7), prefix
    plain = load_model(tiny_dir).eval()
    assert set(merged) == set(plain.state_dict()) - {k for k in plain.state_dict() if k not in merged
                                                      and k == "lm_head.weight"}  # the tied head is an alias
    plain.load_state_dict(merged, strict=False)
    x = inputs(tiny)
    with torch.no_grad():
        assert torch.allclose(plain(**x).logits, model(**x).logits, atol=1e-5)


@pytest.mark.parametrize("zero3", [False, True], ids=["whole", "zero3-partitioned"])
def test_vllm_sync_sends_merged_weights_under_plain_names(tiny_dir, zero3):
    model = lora_model(tiny_dir, teacher_adapter=True)
    want = merged_state_dict(model, {k: v.clone() for k, v in model.state_dict().items()})
    plain_names = [n for n, _ in load_model(tiny_dir).named_parameters()]
    engine = StandInModel()
    if zero3:
        fake = FakeZero3(model)
        stats = vr.push_weights(model, 3, engine.load_weights, 64 * 1024, gather=fake.gather)
        assert fake.held == 0  # every bucket released
    else:
        stats = vr.push_weights(model, 0, engine.load_weights, 64 * 1024)
    assert sorted(engine.received) == sorted(plain_names)  # plain names, each once, no adapter
    assert all(len(v) == 1 for v in engine.received.values())
    assert stats.params == len(plain_names) and stats.buckets > 1
    for name, (got,) in engine.received.items():
        assert torch.equal(got, want[name]), name


def test_ledger_charges_frozen_weights_one_forward_in_the_backward(tiny_dir):
    full = load_model(tiny_dir)
    model = apply_lora(load_model(tiny_dir), settings(), teacher_adapter=True)
    idle = lora.idle_parameters(model)
    assert idle and all(f".{TEACHER_ADAPTER}." in n for n in idle)
    s_full, s_lora = ModelShape.of(full), ModelShape.of(model, idle=idle)
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n and n not in idle)
    assert s_lora.n_text == s_full.n_text + n_adapter  # the student's adapters run in the forward, the teacher's not
    assert s_lora.n_text_frozen == s_full.n_text and s_full.n_text_frozen == 0
    assert not s_lora.vision_trains and s_full.vision_trains
    seq, patches = torch.tensor([40.0, 60.0]), torch.tensor([16.0, 16.0])
    tokens = float(seq.sum())
    fwd_full, fwd = s_full.forward_flops(seq, patches), s_lora.forward_flops(seq, patches)
    assert s_full.backward_flops(fwd_full, tokens, patches) == 2 * fwd_full  # full-parameter: 2x, as before
    # LoRA: attention 2x, adapters 2x, frozen matmuls 1x (activation gradients only), vision tower 0x
    attn = float((2 * s_lora.layers * s_lora.d_model * seq * seq).sum())
    want = 2 * attn + 2 * (2 * n_adapter * tokens) + 1 * (2 * s_full.n_text * tokens)
    assert s_lora.backward_flops(fwd, tokens, patches) == pytest.approx(want, rel=1e-12)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # peft, on the lm_head we then refuse
def test_refusals_name_the_bad_value_and_the_valid_ones(tiny_dir):
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.preflight import check_config

    # the config's own rules: the schema's (before a model is loaded), not apply_lora's or prepare_policy's
    on = ["model.lora.enabled=true"]
    for overrides, message in [
        (["algorithm=rlsd", "model.lora.teacher=base", "algorithm.teacher.weights=sync"],
         r"model.lora.teacher='base' .*is the frozen base model, but algorithm.teacher.weights='sync' .*valid: "
         r"model.lora.teacher=adapters, or algorithm.teacher.weights=frozen"),
        (["algorithm=rlsd", "model.lora.teacher=base", "algorithm.teacher.weights=live"], "updates the teacher"),
        (["model.lora.teacher=student"], r"model.lora.teacher='student' .*valid: 'adapters', 'base'"),
        (["model.lora.rank=0"], r"model.lora.rank=0 .*valid: an integer >= 1"),
        (["model.lora.dropout=1.0"], r"model.lora.dropout=1.0 .*valid: a number >= 0 and < 1"),
        (["model.lora.target_modules=[]"], r"model.lora.target_modules=\[\] .*no module would get an adapter"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_config(compose_config([*on, *overrides]))
    check_config(compose_config([*on, "algorithm=rlsd", "model.lora.teacher=base", "algorithm.teacher.weights=frozen"]))
    check_config(compose_config(["model.lora.teacher=base", "algorithm=rlsd", "algorithm.teacher.weights=sync"]))  # off
    # what only the model shows: where the named modules are
    with pytest.raises(ConfigError, match="output head"):
        apply_lora(load_model(tiny_dir), settings(target_modules=["lm_head", "q_proj"]))
    with pytest.raises(ConfigError, match="model.lora.target_modules=.*no_such_proj"):
        apply_lora(load_model(tiny_dir), settings(target_modules=["no_such_proj"]))
    holder = lora.teacher_weights(run_cfg({"weights": "live"}), TeacherConfig(weights="live"), load_model(tiny_dir))
    assert isinstance(holder, TeacherWeights) and holder.model is None  # live: the student itself


def test_trainer_with_lora_syncs_merged_weights_to_the_vllm_engine(tmp_path, tiny_dir, monkeypatch):
    """rollout=vllm with LoRA through the trainer (the vLLM build replaced by the stand-in: vLLM needs a GPU):
    the engine gets the plain model's names, each adapted weight as W + (alpha / r) B A."""
    from tests.test_trainer import make_trainer
    from tests.test_vllm_engine import StandInLLM

    monkeypatch.setattr(vr, "build_llm", lambda *args: StandInLLM(StandInModel()))
    trainer = make_trainer(tmp_path, "rollout=vllm", "model.lora.enabled=true", "model.lora.rank=4",
                           "model.lora.alpha=8", "algorithm=rlsd")
    policy = trainer.engine.module
    with torch.no_grad():  # adapters that do something (peft starts B at zero)
        for layer in lora_layers(policy):
            layer.lora_B["default"].weight.normal_(0, 0.1)
    trainer.rollout.sync_weights(policy, trainer.zero_stage)
    received = trainer.rollout.llm.model.received
    assert sorted(received) == sorted(n for n, _ in load_model(tiny_dir).named_parameters())
    for prefix, module in policy.named_modules():
        if module in lora_layers(policy):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            want = module.base_layer.weight + (8 / 4) * b @ a
            assert torch.allclose(received[f"{prefix}.weight"][0], want, atol=1e-6), prefix
