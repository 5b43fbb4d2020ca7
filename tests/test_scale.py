"""CPU-checkable pieces of the cluster path: vLLM name mapping, plan arithmetic, the paper config's dry run."""

import pytest
import torch

from rlsd_harness.analysis.plan import memory_per_gpu
from rlsd_harness.dist import iter_full_parameters
from rlsd_harness.rollout.vllm import HF_TO_VLLM_PREFIXES, hf_to_vllm_name, vllm_sampling_kwargs


def test_every_parameter_maps_to_a_vllm_name(tiny):
    model, _ = tiny
    names = [n for n, _ in model.named_parameters()]
    mapped = [hf_to_vllm_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    assert all(m.startswith(("language_model.model.", "visual.", "language_model.lm_head.")) for m in mapped)
    assert hf_to_vllm_name("model.language_model.layers.0.mlp.up_proj.weight") == "language_model.model.layers.0.mlp.up_proj.weight"
    with pytest.raises(KeyError, match="no vLLM counterpart"):
        hf_to_vllm_name("encoder.weight")
    assert len(HF_TO_VLLM_PREFIXES) == 3


def test_full_parameters_stream_one_by_one_without_zero(tiny):
    model, _ = tiny
    streamed = dict(iter_full_parameters(model, zero_stage=0))
    assert streamed.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(streamed[n], p.data) for n, p in model.named_parameters())


def test_vllm_sampling_kwargs_follow_our_params():
    from rlsd_harness.rollout.hf import SamplingParams

    kw = vllm_sampling_kwargs(SamplingParams(n=4, temperature=0.7, top_p=0.8, top_k=20, max_new_tokens=99), seed=5)
    assert kw == dict(n=1, temperature=0.7, top_p=0.8, top_k=20, max_tokens=99, min_tokens=0, logprobs=0, seed=5,
                      skip_special_tokens=False)
    assert vllm_sampling_kwargs(SamplingParams(top_k=0), 0)["top_k"] == -1


def test_memory_plan_matches_the_zero_formulas():
    gib = 1024**3
    p, n = 1 * gib, 8  # one Gi parameters on 8 ranks
    assert memory_per_gpu(p, 0, n, [])["policy_gib"] == 16
    assert memory_per_gpu(p, 1, n, [])["policy_gib"] == 4 + 12 / 8
    assert memory_per_gpu(p, 2, n, [])["policy_gib"] == 2 + 14 / 8
    assert memory_per_gpu(p, 3, n, [])["policy_gib"] == 2
    assert memory_per_gpu(p, 3, n, [], offload=True)["policy_gib"] == 0.5
    assert memory_per_gpu(p, 2, n, ["teacher:sync"])["teacher_ref_gib"] == 2
    assert memory_per_gpu(p, 3, n, ["teacher:ema"])["teacher_ref_gib"] == 4 / 8  # fp32, partitioned like the policy
    assert memory_per_gpu(p, 3, n, ["teacher:sync", "reference"])["teacher_ref_gib"] == 2 * 2 / 8


def test_paper_main_table_dry_run(capsys):
    from rlsd_harness.cli.compare import main

    main(["experiment=paper_main_table", "dry_run=true"])
    out = capsys.readouterr().out
    assert "to set before launching: data.path, model.path" in out
    assert "8.77 B parameters" in out  # Qwen3-VL-8B-Instruct's published size
    for method in ("grpo", "opsd", "sdpo", "grpo_opsd", "rlsd"):
        assert f"| {method} |" in out


def test_train_launches_one_method_of_an_experiment():
    from rlsd_harness.config import ConfigError, compose_config, expand_experiment

    cfg = compose_config(expand_experiment(["experiment=paper_main_table", "algorithm=sdpo", "train.steps=7"]))
    assert cfg.algorithm.name == "sdpo" and cfg.rollout.engine == "vllm" and cfg.deepspeed.zero_stage == 3
    assert cfg.train.prompts_per_step == 256 and cfg.model.arch == "qwen3_vl" and cfg.deepspeed.bf16
    assert cfg.train.steps == 7  # the command line wins over the experiment
    with pytest.raises(ConfigError, match="one method per launch: add algorithm=<one of grpo, opsd"):
        expand_experiment(["experiment=paper_main_table"])
    with pytest.raises(ConfigError, match="unknown experiment 'paper'; valid: .*paper_main_table"):
        expand_experiment(["experiment=paper", "algorithm=rlsd"])


def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.mark.gpu
def test_vllm_generates_on_the_tiny_model_and_matches_the_trainer(tiny_dir):
    pytest.importorskip("vllm")
    _needs_cuda()
    from rlsd_harness.benchmarks import embedded
    from rlsd_harness.models import load_model, load_processor
    from rlsd_harness.rollout.hf import SamplingParams, sample_seed
    from rlsd_harness.rollout.vllm import VLLMRolloutEngine
    from rlsd_harness.training.trainer import forward_logprobs

    processor = load_processor(tiny_dir)
    engine = VLLMRolloutEngine(str(tiny_dir), processor, gpu_memory_utilization=0.2, max_model_len=256, dtype="float32")
    items = embedded.generate("test", 4, seed=0)
    params = SamplingParams(n=2, max_new_tokens=16)
    ro = engine.generate(items, params, [sample_seed(0, 1, it.id, j) for it in items for j in range(2)])
    model = load_model(tiny_dir).cuda().eval()
    engine.sync_weights(model, zero_stage=0)
    ro = engine.generate(items, params, [sample_seed(0, 2, it.id, j) for it in items for j in range(2)])
    vision = ro.vision.select(torch.arange(len(ro.texts)))
    with torch.no_grad():
        lp = forward_logprobs(model, ro.prompt.__class__(ro.prompt.ids.cuda(), ro.prompt.mask.cuda()),
                              vision.__class__(vision.pixel_values.cuda(), vision.image_grid_thw.cuda(), vision.images_per_row.cuda()),
                              ro.response_ids.cuda(), ro.response_mask.cuda(), 1.0, model.config.image_token_id)
    trainer_logp = lp.gather(-1, ro.response_ids.cuda()[..., None])[..., 0].cpu() * ro.response_mask
    assert (trainer_logp - ro.logp).abs().max() < 1e-2


def test_token_budget_partition_packs_by_padded_length():
    from rlsd_harness.training.microbatch import pad_to_count, partition_by_tokens

    lengths = [10, 50, 20, 40, 30, 5]
    groups = partition_by_tokens(lengths, budget=80)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 80 or len(g) == 1
    assert groups[0] == [1]  # 50: a second row would cost 2 x 50 > 80
    assert partition_by_tokens([100, 3], budget=10) == [[0], [1]]  # an over-long row still gets a micro-batch
    padded = pad_to_count(groups, len(groups) + 2)
    assert len(padded) == len(groups) + 2 and sorted(i for g in padded for i in g) == list(range(6))
    with pytest.raises(ValueError, match="token budget"):
        partition_by_tokens(lengths, 0)


def test_balance_rows_evens_tokens_between_equal_sized_shares():
    from rlsd_harness.training.microbatch import balance_rows

    lengths = [100, 90, 10, 10, 50, 40, 30, 30]
    parts = balance_rows(lengths, 2)
    assert sorted(i for p in parts for i in p) == list(range(8)) and [len(p) for p in parts] == [4, 4]
    loads = [sum(lengths[i] for i in p) for p in parts]
    assert loads == [180, 180]  # the strided split (rows 0,2,4,6 | 1,3,5,7) would give 190 / 170
    assert balance_rows(lengths, 2) == parts  # deterministic
    assert balance_rows([5, 5, 5, 5], 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="equal parts"):
        balance_rows(lengths, 3)


def test_concat_pads_and_joins_shards_back_into_the_batch():
    from rlsd_harness.algorithms.batch import PromptInputs, RolloutBatch, VisionInputs
    from tests.objective_helpers import make_batch

    batch = make_batch(num_groups=2, group_size=3, response_len=5)
    rows = batch.batch_size
    batch.student = PromptInputs(ids=torch.arange(rows * 4).view(rows, 4), mask=torch.ones(rows, 4, dtype=torch.long))
    batch.student.mask[0, :2] = 0  # left padding in the first row only
    grid = torch.tensor([[1, 2, 2], [1, 2, 4]]).repeat(3, 1)  # rows alternate 4- and 8-patch images
    batch.vision = VisionInputs(torch.randn(int(grid.prod(-1).sum()), 6), grid, torch.ones(rows, dtype=torch.long))
    batch.extras = {"texts": [f"t{i}" for i in range(rows)], "note": "kept"}
    shards = [batch.select(torch.tensor(r, dtype=torch.long)).trim() for r in ([0, 4], [1, 2, 3], [5], [])]
    joined = RolloutBatch.concat(shards)
    order = [0, 4, 1, 2, 3, 5]
    same = batch.select(torch.tensor(order))
    assert torch.equal(joined.response_mask, same.response_mask)
    assert torch.equal(joined.response_ids * joined.response_mask.long(), same.response_ids * same.response_mask.long())
    assert torch.equal(joined.student.mask, same.student.mask)
    assert torch.equal(joined.student.ids * joined.student.mask, same.student.ids * same.student.mask)
    assert torch.equal(joined.vision.pixel_values, same.vision.pixel_values)
    assert torch.equal(joined.vision.image_grid_thw, same.vision.image_grid_thw)
    assert torch.equal(joined.rewards, same.rewards)
    assert joined.extras == {"texts": [f"t{i}" for i in order], "note": "kept"}


@pytest.mark.gpu
def test_zero3_rlsd_step_with_a_partitioned_teacher_runs_on_gpu(tmp_path, tiny_dir):
    _needs_cuda()
    from tests.test_trainer import make_trainer

    trainer = make_trainer(tmp_path, "algorithm=rlsd", "deepspeed=zero3", "deepspeed.bf16=true",
                           "algorithm.teacher.sync_every=1", "train.gradient_checkpointing=true")
    metrics = trainer.step()
    assert trainer.teacher.partitioned and next(trainer.engine.module.parameters()).device.type == "cuda"
    assert torch.isfinite(torch.tensor(metrics["actor/loss"])) and metrics["teacher/updates"] == 1
    teacher = dict(iter_full_parameters(trainer.teacher.model, 3))
    policy = {n: t.clone() for n, t in iter_full_parameters(trainer.engine.module, 3)}
    assert all(torch.equal(teacher[n], policy[n]) for n in policy)


@pytest.mark.gpu
def test_vllm_rollouts_train_zero3_steps_and_stay_in_sync(tmp_path, tiny_dir):
    pytest.importorskip("vllm")
    _needs_cuda()
    from tests.test_trainer import make_trainer

    trainer = make_trainer(tmp_path, "rollout=vllm", "rollout.max_model_len=512", "rollout.gpu_memory_utilization=0.2",
                           "algorithm=rlsd", "deepspeed=zero3", "optim.lr=1e-4")
    gaps = [trainer.step()["actor/rollout_logp_gap"] for _ in range(3)]
    # vLLM generates in bf16, the trainer runs fp32: a small gap, which must not grow as weights are synced
    assert all(g < 0.05 for g in gaps), gaps


def test_memory_plan_counts_the_measured_head_bytes():
    from types import SimpleNamespace

    from rlsd_harness.analysis.plan import HEAD_BYTES_PER_TOKEN_PER_VOCAB, activation_gib
    from rlsd_harness.training.vocab import AUTO_CHUNK_ELEMENTS

    gib, vocab, resp = 1024**3, 151936, 4096
    shape = SimpleNamespace(model=SimpleNamespace(layers=36, d_model=4096, v_layers=27, v_d_model=1152), vocab=vocab,
                            ffn=12288, kv_dim=1024, qk_norm=True, v_ffn=4304, v_gated=False)  # Qwen3-VL-8B's dims
    chunked, whole = activation_gib(shape, 5000, resp), activation_gib(shape, 5000, resp, head="full")
    per_token = HEAD_BYTES_PER_TOKEN_PER_VOCAB["full"] - max(HEAD_BYTES_PER_TOKEN_PER_VOCAB["chunked"], 0)
    transient = 3 * 4 * AUTO_CHUNK_ELEMENTS["cuda"]
    assert whole - chunked == pytest.approx((resp * vocab * per_token - transient) / gib)
    assert whole - chunked > 7  # the whole-tensor path at 4K responses and Qwen3-VL's vocabulary: 8.4 GiB more
    teacher = activation_gib(shape, 5000, resp, full_signal=True) - chunked
    assert teacher == pytest.approx(resp * vocab * 4 / gib)
    with pytest.raises(ValueError, match="head 'fused'; valid: full, chunked"):
        activation_gib(shape, 5000, resp, head="fused")
