"""The vLLM engine's weight sync on CPU, against a stand-in with vLLM's `LLM` interface and its models'
`load_weights(weights=[(name, tensor), ...])` contract (vLLM itself needs a GPU and is not installed here)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rlsd_harness.rollout import vllm as vr

MIB = 1024**2


class StandInModel:
    """What `LLM.apply_model` hands its function: a model whose `load_weights` copies what it is given. It
    records each call's names and bytes, and what the trainer side had gathered while the call ran."""

    def __init__(self, gathered_bytes: Callable | None = None) -> None:
        self.received: dict[str, list[torch.Tensor]] = {}
        self.calls: list[dict] = []
        self.gathered_bytes = gathered_bytes

    def load_weights(self, weights) -> set[str]:
        names, nbytes = [], 0
        for name, tensor in weights:
            self.received.setdefault(name, []).append(tensor.detach().clone())
            names.append(name)
            nbytes += tensor.numel() * tensor.element_size()
        held = self.gathered_bytes() if self.gathered_bytes else None
        self.calls.append({"names": names, "nbytes": nbytes, "gathered": held})
        return set(names)


class StandInLLM:
    """`vllm.LLM`'s sleep / wake_up / apply_model / reset_prefix_cache, recording the order of calls."""

    def __init__(self, model: StandInModel) -> None:
        self.model = model
        self.log: list[str] = []

    def apply_model(self, fn):
        self.log.append("apply_model")
        return [fn(self.model)]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.log.append("reset_prefix_cache")
        return True

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        self.log.append(f"sleep({level})")

    def wake_up(self, tags=None) -> bool:
        self.log.append(f"wake_up({tags})")
        return True


class FakeZero3:
    """A model whose parameters look partitioned the way DeepSpeed ZeRO-3 leaves them between forwards:
    `p.data` is empty (numel() == 0) while `ds_numel` / `ds_shape` hold the full size. `gather` restores the
    full tensors for the duration of its context and tracks the bytes held, like GatheredParameters."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.full = {id(p): p.data.clone() for p in module.parameters()}
        for p in module.parameters():
            p.ds_numel, p.ds_shape = p.numel(), tuple(p.shape)
            p.data = torch.empty(0, dtype=p.dtype)
        self.held = 0
        self.peak = 0
        self.gathers: list[int] = []

    @contextlib.contextmanager
    def gather(self, params):
        size = sum(self.full[id(p)].numel() * self.full[id(p)].element_size() for p in params)
        self.gathers.append(len(params))
        for p in params:
            p.data = self.full[id(p)]
        self.held += size
        self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            for p in params:
                p.data = torch.empty(0, dtype=p.dtype)
            self.held -= size


def _engine(tiny, bucket_mb: float):
    model = StandInModel()
    llm = StandInLLM(model)
    _, processor = tiny
    return vr.VLLMRolloutEngine("unused", processor, sleep_level=1, sync_bucket_mb=bucket_mb, llm=llm), llm, model


def _sizes(module: torch.nn.Module) -> dict[str, int]:
    return {n: p.numel() * p.element_size() for n, p in module.named_parameters()}


def test_sync_sends_every_parameter_once_with_the_trainers_values_in_bounded_buckets(tiny):
    policy, _ = tiny
    sizes = _sizes(policy)
    bucket = 256 * 1024  # 0.25 MiB: the 4.4 MB tiny model takes several buckets; its embedding (> 0.25 MiB) one alone
    engine, llm, model = _engine(tiny, bucket / MIB)
    engine.sleep()
    sent = engine.sync_weights(policy, zero_stage=0)

    params = dict(policy.named_parameters())
    assert sent == len(params)
    assert model.received.keys() == params.keys()  # checkpoint names, every one
    assert all(len(v) == 1 for v in model.received.values())  # exactly once
    assert all(torch.equal(model.received[n][0], p.data) for n, p in params.items())
    # one load_weights call per bucket, each bounded unless it is one oversize tensor
    assert len(model.calls) == engine.last_sync.buckets > 1
    for call in model.calls:
        assert call["nbytes"] <= bucket or len(call["names"]) == 1, call
    oversize = [n for n, s in sizes.items() if s > bucket]
    assert oversize and all([n] in [c["names"] for c in model.calls] for n in oversize)
    # the order colocated trainers use: weights woken, buckets loaded, prefix cache reset once after the last
    n = len(model.calls)
    assert llm.log == ["sleep(1)", "wake_up(['weights'])"] + ["apply_model"] * n + ["reset_prefix_cache"]
    assert engine.last_sync.nbytes == sum(sizes.values())


def test_one_bucket_when_the_bucket_holds_the_whole_model(tiny):
    policy, _ = tiny
    engine, llm, model = _engine(tiny, 1024)
    engine.sync_weights(policy, zero_stage=2)
    assert len(model.calls) == 1 and llm.log.count("reset_prefix_cache") == 1
    assert model.calls[0]["names"] == [n for n, _ in policy.named_parameters()]


def test_plan_buckets_packs_in_order_and_isolates_oversize_tensors():
    params = [(f"p{i}", torch.empty(n, dtype=torch.float32)) for i, n in enumerate([10, 10, 30, 5, 5, 5, 1])]
    buckets = vr.plan_buckets(params, bucket_bytes=80)  # 20 floats
    assert [[n for n, _ in b.params] for b in buckets] == [["p0", "p1"], ["p2"], ["p3", "p4", "p5", "p6"]]
    assert [b.nbytes for b in buckets] == [80, 120, 64]
    assert vr.plan_buckets([], 80) == []
    with pytest.raises(ValueError, match="positive number of bytes, got 0"):
        vr.plan_buckets(params, 0)


def test_zero3_buckets_are_sized_by_the_partitioned_full_size(tiny_dir):
    """huggingface/trl PR #6386: a ZeRO-3 parameter's numel() is 0 between forwards, so numel()-sized buckets
    take the whole model at once. Sized by ds_numel, the peak gathered memory stays within a bucket."""
    from rlsd_harness.models import load_model

    policy = load_model(tiny_dir)
    expected = {n: p.data.clone() for n, p in policy.named_parameters()}
    sizes = _sizes(policy)
    fake = FakeZero3(policy)
    assert all(p.numel() == 0 for p in policy.parameters())

    bucket = 256 * 1024
    planned = vr.plan_buckets(policy.named_parameters(), bucket)
    assert [b.nbytes for b in planned] and sum(b.nbytes for b in planned) == sum(sizes.values())
    assert len(planned) > 1

    model = StandInModel(gathered_bytes=lambda: fake.held)
    stats = vr.push_weights(policy, 3, lambda w: model.load_weights(w), bucket, gather=fake.gather)
    assert stats.buckets == len(planned) == len(fake.gathers) == len(model.calls)
    assert model.received.keys() == expected.keys()
    assert all(len(v) == 1 and torch.equal(v[0], expected[n]) for n, v in model.received.items())
    # while each bucket loads, the trainer holds only that bucket gathered
    assert all(c["gathered"] == c["nbytes"] for c in model.calls)
    largest_tensor = max(sizes.values())
    assert fake.peak <= max(bucket, largest_tensor)
    assert fake.peak < sum(sizes.values()) / 2
    assert all(p.numel() == 0 for p in policy.parameters())  # released again


def test_a_failing_load_leaves_no_bucket_gathered():
    module = torch.nn.Module()
    module.lm_head = torch.nn.Linear(64, 64, bias=False)  # 16 KiB per weight: one bucket each at 16 KiB
    module.model = torch.nn.Module()
    module.model.visual = torch.nn.Linear(64, 64, bias=False)
    fake = FakeZero3(module)
    calls = []

    def load(weights):
        calls.append([n for n, _ in weights])
        if len(calls) == 2:
            raise RuntimeError("engine refused the bucket")

    with pytest.raises(RuntimeError, match="engine refused"):
        vr.push_weights(module, 3, load, 16 * 1024, gather=fake.gather)
    assert calls == [["lm_head.weight"], ["model.visual.weight"]]
    assert fake.held == 0 and all(p.numel() == 0 for p in module.parameters())


def test_a_bad_name_is_refused_before_any_bucket_is_sent():
    module = torch.nn.Module()
    module.lm_head = torch.nn.Linear(2, 2, bias=False)  # accepted, so it would go first if names were not checked first
    module.encoder = torch.nn.Linear(2, 2)
    model = StandInModel()
    with pytest.raises(KeyError, match="'encoder.weight' has no vLLM counterpart .*model.language_model"):
        vr.push_weights(module, 0, model.load_weights, 1024)
    assert model.calls == []
    with pytest.raises(ValueError, match="unknown ZeRO stage 4; valid: 0, 1, 2, 3"):
        vr.push_weights(module, 4, model.load_weights, 1024)


def test_engine_refuses_bad_settings_before_building_anything(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="sync_bucket_mb must be > 0 .* got 0"):
        vr.VLLMRolloutEngine("unused", processor, sync_bucket_mb=0, llm=StandInLLM(StandInModel()))
    with pytest.raises(ValueError, match="unknown vLLM sleep level 3; valid: 1, 2"):
        vr.VLLMRolloutEngine("unused", processor, sleep_level=3, llm=StandInLLM(StandInModel()))


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_names_are_those_the_pinned_qwen_vl_loaders_accept(arch):
    """Every state_dict name of a tiny model of each architecture (lm_head.weight included, which a tied
    model's state_dict lists) is sent unchanged, and the pinned loader of either architecture places it on
    one of its own modules, one name per parameter."""
    from rlsd_harness.models import build_tiny, load_model

    names = list(load_model(build_tiny(arch, "tiny", seed=0)).state_dict())
    assert "lm_head.weight" in names
    assert [vr.vllm_load_name(n) for n in names] == names
    for loader in vr.VLLM_LOADER_PREFIXES:
        mapped = [vr.hf_to_vllm_name(n, loader) for n in names]
        assert len(set(mapped)) == len(names)
        assert all(m.startswith(("language_model.model.", "visual.", "language_model.lm_head.")) for m in mapped)
    assert vr.hf_to_vllm_name("model.visual.blocks.0.attn.qkv.weight", "qwen3_vl") == "visual.blocks.0.attn.qkv.weight"
    assert vr.hf_to_vllm_name("lm_head.weight", arch) == "language_model.lm_head.weight"
    # only the Qwen2.5-VL loader still takes pre-4.52 checkpoint names; the sync never sends them
    assert vr.hf_to_vllm_name("model.layers.0.mlp.up_proj.weight", "qwen2_5_vl") == "language_model.model.layers.0.mlp.up_proj.weight"
    with pytest.raises(KeyError, match="no vLLM counterpart"):
        vr.hf_to_vllm_name("model.layers.0.mlp.up_proj.weight", "qwen3_vl")
    with pytest.raises(KeyError, match="no vLLM counterpart"):
        vr.vllm_load_name("model.layers.0.mlp.up_proj.weight")
    with pytest.raises(KeyError, match="unknown arch 'llava'; valid: qwen2_5_vl, qwen3_vl"):
        vr.hf_to_vllm_name("lm_head.weight", "llava")


def test_name_tables_match_the_installed_vllm():
    """Where vLLM is installed (the GPU image), its models' mappers are the tables this module was written from."""
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (GPU only); the tables are checked there")
    assert vllm.__version__ == vr.VLLM_VERSION
    from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    for arch, cls in (("qwen2_5_vl", Qwen2_5_VLForConditionalGeneration), ("qwen3_vl", Qwen3VLForConditionalGeneration)):
        assert tuple(cls.hf_to_vllm_mapper.orig_to_new_prefix.items()) == vr.VLLM_LOADER_PREFIXES[arch]


def test_gpu_extra_pins_the_version_the_engine_is_written_for():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    gpu = [line for line in text.splitlines() if line.startswith("gpu = ")]
    assert gpu and f'"vllm=={vr.VLLM_VERSION}"' in gpu[0]


@pytest.mark.slow  # DeepSpeed start-up: 40 s on the 2 shared cores
def test_real_zero3_partitioned_model_syncs_in_bounded_buckets(tiny_dir):
    """The same under DeepSpeed ZeRO-3 itself (one rank, gloo, CPU; every parameter partitioned): numel() is 0
    between gathers, and while a bucket loads only that bucket's parameters are whole."""
    from rlsd_harness import dist
    from rlsd_harness.models import load_model

    dist.init_distributed()
    policy = load_model(tiny_dir)
    expected = {n: p.data.clone() for n, p in policy.named_parameters()}
    sizes = _sizes(policy)
    engine = dist.initialize_inference_engine(policy, {"zero_optimization": {
        "stage": 3, "stage3_param_persistence_threshold": 0}})
    module = engine.module
    assert all(p.numel() == 0 and p.ds_numel == sizes[n] // 4 for n, p in module.named_parameters())
    assert len(vr.plan_buckets(module.named_parameters(), 256 * 1024)) > 1

    def whole_bytes() -> int:  # bytes of the parameters that are gathered right now
        return sum(p.numel() * p.element_size() for p in module.parameters())

    model = StandInModel(gathered_bytes=whole_bytes)
    stats = vr.push_weights(module, 3, model.load_weights, 256 * 1024)
    assert stats.params == len(expected) and stats.nbytes == sum(sizes.values())
    assert all(len(v) == 1 and torch.equal(v[0], expected[n]) for n, v in model.received.items())
    assert model.received.keys() == expected.keys()
    assert all(c["gathered"] == c["nbytes"] for c in model.calls)  # exactly the bucket, nothing else
    assert max(c["gathered"] for c in model.calls) <= max(256 * 1024, max(sizes.values()))
    assert whole_bytes() == 0


def test_trainer_builds_the_engine_with_its_bucket_size_and_syncs_its_policy(tmp_path, tiny_dir, monkeypatch):
    """rollout=vllm through the trainer, the vLLM build replaced by the stand-in (vLLM needs a GPU)."""
    from tests.test_trainer import make_trainer

    built = []

    def stand_in(*args):
        built.append(args)
        return StandInLLM(StandInModel())

    monkeypatch.setattr(vr, "build_llm", stand_in)
    trainer = make_trainer(tmp_path, "rollout=vllm")
    engine = trainer.rollout
    assert isinstance(engine, vr.VLLMRolloutEngine) and len(built) == 1
    assert engine.sync_bucket_bytes == vr.DEFAULT_SYNC_BUCKET_MB * MIB
    assert engine.llm.log == ["sleep(1)"]  # asleep until the first rollout
    engine.sync_weights(trainer.engine.module, trainer.zero_stage)
    received = engine.llm.model.received
    assert all(torch.equal(received[n][0], p.data) for n, p in trainer.engine.module.named_parameters())
    assert engine.llm.log[-1] == "reset_prefix_cache" and engine.llm.log.count("reset_prefix_cache") == 1
