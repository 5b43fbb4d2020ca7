"""The chunked output head gives the whole-tensor numbers: log-probs, entropies, top-k supports, gathered
log-probs, per-position vocabulary losses and their gradients, on random heads and on both tiny VLMs."""

from types import SimpleNamespace

import pytest
import torch

from rlsd_harness.algorithms import build_objective
from rlsd_harness.algorithms.batch import PromptInputs
from rlsd_harness.training.vocab import HeadConfig, head_signals

DIFFERENTIABLE = ("logp", "topk_logp", "gathered", "vocab_loss")


def _random_head(n=37, h=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(h, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
    hidden = torch.randn(n, h, generator=g)
    targets = torch.randint(0, v - 3, (n,), generator=g)  # the banned ids (the last three) are never targets
    teacher = torch.log_softmax(torch.randn(n, v, generator=g), -1)
    gather_ids = torch.randint(0, v, (n, 4), generator=g)
    return head, hidden, targets, teacher, gather_ids, [v - 3, v - 2, v - 1]


def _run(cfg, head, hidden, targets, banned, seed=1, **signals):
    head.zero_grad()
    x = hidden.clone().requires_grad_(True)
    out = head_signals(head, x, targets, banned, 0.7, cfg, **signals)
    g = torch.Generator().manual_seed(seed)
    total = sum((getattr(out, k) * torch.randn(getattr(out, k).shape, generator=g)).sum()
                for k in DIFFERENTIABLE if getattr(out, k) is not None)
    total.backward()
    return out, x.grad.clone(), head.weight.grad.clone()


@pytest.mark.parametrize("objective", [None, ("opsd", {}), ("opsd", {"teacher_topk": 5, "beta": 0.5}), ("sdpo", {"topk": 0})])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_chunked_head_matches_the_whole_tensor(objective, rows):
    # without a vocabulary loss the backward is the written-out log_softmax gradient, with one it is autograd's
    head, hidden, targets, teacher, gather_ids, banned = _random_head()
    signals = dict(topk=6, gather_ids=gather_ids)  # some gathered ids are banned: their gradient must be 0
    if objective is not None:
        signals.update(vocab_loss=build_objective(*objective).vocab_loss, teacher=teacher)
    ref, ref_gh, ref_gw = _run(HeadConfig("full", None), head, hidden, targets, banned, **signals)
    out, gh, gw = _run(HeadConfig("chunked", rows), head, hidden, targets, banned, **signals)
    assert torch.equal(out.topk_ids, ref.topk_ids)
    for k in ("logp", "entropy", "topk_logp", "gathered", "vocab_loss"):
        if k != "vocab_loss" or objective is not None:
            assert torch.allclose(getattr(out, k), getattr(ref, k), atol=1e-5, rtol=0), k
    assert torch.isinf(ref.gathered).any()
    assert torch.allclose(gh, ref_gh, atol=1e-5, rtol=1e-5) and torch.allclose(gw, ref_gw, atol=1e-5, rtol=1e-5)
    # the vision placeholders are out of the distribution: probability 0, and no gradient reaches their rows
    full = head_signals(head, hidden, targets, banned, 0.7, HeadConfig("chunked", rows), full=True).logprobs
    assert torch.isinf(full[:, banned]).all() and torch.allclose(full.exp().sum(-1), torch.ones(len(full)), atol=1e-5)
    assert (gw[banned] == 0).all() and gw[:-3].abs().sum() > 0


def test_temperature_divides_the_logits():
    head, hidden, targets, _, _, banned = _random_head()
    out = head_signals(head, hidden, targets, banned, 0.7, HeadConfig("chunked", 4), full=True)
    logits = head(hidden)
    logits[:, banned] = float("-inf")
    assert torch.allclose(out.logprobs, torch.log_softmax(logits / 0.7, -1), atol=1e-6)
    assert torch.allclose(out.logp, out.logprobs.gather(-1, targets[:, None])[:, 0], atol=1e-6)


def test_auto_chunk_follows_device_and_vocabulary():
    from rlsd_harness.training.vocab import AUTO_CHUNK_ELEMENTS

    cfg = HeadConfig.from_setting(None)
    assert cfg.rows(151936, torch.device("cpu")) == AUTO_CHUNK_ELEMENTS["cpu"] // 151936
    assert cfg.rows(151936, torch.device("cuda")) == AUTO_CHUNK_ELEMENTS["cuda"] // 151936
    assert HeadConfig.from_setting(0).mode == "full" and HeadConfig.from_setting("auto") == cfg
    assert HeadConfig.from_setting(7).rows(512, torch.device("cpu")) == 7
    with pytest.raises(ValueError, match=r"logits_chunk=-1.*valid: null \(by device\), 0"):
        HeadConfig.from_setting(-1)
    with pytest.raises(ValueError, match="logits_chunk='big'"):
        HeadConfig.from_setting("big")


def _old_forward(model, prompt, vision, response_ids, response_mask, temperature):
    """The log-softmax as the trainer computed it before the chunked head: the model's own (B, T, V) logits."""
    from rlsd_harness.rollout.hf import vision_token_ids

    ids = torch.cat([prompt.ids, response_ids], 1)
    attn = torch.cat([prompt.mask, response_mask.to(prompt.mask.dtype)], 1)
    inputs = dict(input_ids=ids, attention_mask=attn, mm_token_type_ids=(ids == model.config.image_token_id).int(),
                  use_cache=False)
    if vision is not None:
        inputs.update(pixel_values=vision.pixel_values, image_grid_thw=vision.image_grid_thw)
    logits = model(**inputs, logits_to_keep=response_ids.shape[1] + 1).logits[:, :-1].float()
    logits = logits.index_fill(-1, torch.tensor(vision_token_ids(model.config)), float("-inf"))
    return torch.log_softmax(logits / temperature, dim=-1)


@pytest.mark.parametrize("images", [True, False])
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_model_forward_matches_the_whole_tensor_forward(cache_dir, arch, images):
    from rlsd_harness.benchmarks import embedded
    from rlsd_harness.models import build_tiny, load_model, load_processor
    from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams, sample_seed
    from rlsd_harness.training.trainer import forward_head

    path = build_tiny(arch, "tiny", seed=0)
    model, proc = load_model(path).eval(), load_processor(path)
    items = [SimpleNamespace(id=it.id, question=it.question + " Check twice." * k, images=it.images if images else [])
             for k, it in enumerate(embedded.generate("train", 3, seed=1))]  # uneven left padding
    ro = HFRolloutEngine(model, proc).generate(items, SamplingParams(n=3, max_new_tokens=10),
                                               [sample_seed(0, 1, it.id, j) for it in items for j in range(3)])
    order = torch.tensor([4, 0, 8, 1, 5, 2, 7, 3, 6])  # rows of a prompt need not be adjacent
    prompt = PromptInputs(ro.prompt.ids, ro.prompt.mask, torch.arange(9) // 3).rows(order)
    vision = ro.vision.select(order) if images else None
    ids, rmask = ro.response_ids[order], ro.response_mask[order]
    mask = rmask > 0
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask

    def grads_of(value):
        model.zero_grad()
        value.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    old = _old_forward(model, prompt, vision, ids, rmask, 0.9)
    old_logp = old.gather(-1, ids[..., None])[..., 0]
    old_grad = grads_of((old_logp * weights).sum())
    old_ent = -(old.exp() * old.masked_fill(torch.isinf(old), 0)).sum(-1).detach()
    for share in (False, True):
        out = forward_head(model, prompt, vision, ids, rmask, 0.9, model.config.image_token_id, share_prompts=share,
                           head=HeadConfig("chunked", 4))
        assert torch.allclose(out.logp[mask], old_logp[mask], atol=1e-5), share
        assert torch.allclose(out.entropy[mask], old_ent[mask], atol=1e-5), share
        grad = grads_of((out.logp * weights).sum())
        assert (grad - old_grad).abs().max() < 1e-5 * old_grad.abs().max(), share


def test_a_wider_head_keeps_the_tokenizer_ids_and_never_samples_the_rest(cache_dir):
    from rlsd_harness.benchmarks import embedded
    from rlsd_harness.models import build_tiny, load_model, load_processor
    from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams, sample_seed
    from rlsd_harness.training.trainer import forward_head

    path = build_tiny("qwen3_vl", "tiny", seed=0, head_vocab=4096)
    model, proc = load_model(path).eval(), load_processor(path)
    n_tok = len(proc.tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == 4096
    assert n_tok <= 512 and build_tiny("qwen3_vl", "tiny", seed=0) != path  # its own recipe, the default kept
    items = embedded.generate("train", 2, seed=0)
    ro = HFRolloutEngine(model, proc).generate(items, SamplingParams(n=4, max_new_tokens=12),
                                               [sample_seed(0, 1, it.id, j) for it in items for j in range(4)])
    assert int(ro.response_ids.max()) < n_tok
    with torch.no_grad():
        out = forward_head(model, ro.prompt, ro.vision, ro.response_ids, ro.response_mask, 1.0,
                           model.config.image_token_id, full=True)
    assert torch.isinf(out.logprobs[..., n_tok:]).all()  # probability 0 beyond the tokenizer
    assert torch.allclose(out.logprobs[..., :n_tok].exp().sum(-1), torch.ones(out.logp.shape), atol=1e-5)
    with pytest.raises(ValueError, match=f"head_vocab=100 is smaller than the tokenizer's {n_tok} ids"):
        build_tiny("qwen3_vl", "tiny", seed=0, head_vocab=100)


def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_head_on_cuda_matches_the_whole_tensor(dtype):
    _needs_cuda()
    head, hidden, targets, teacher, gather_ids, banned = _random_head(n=300, h=64, v=3000)
    head, hidden = head.cuda().to(dtype), hidden.cuda().to(dtype)
    targets, teacher, gather_ids = targets.cuda(), teacher.cuda(), gather_ids.cuda()
    obj = build_objective("opsd", {})
    signals = dict(topk=6, gather_ids=gather_ids, vocab_loss=obj.vocab_loss, teacher=teacher)
    ref, ref_gh, ref_gw = _run(HeadConfig("full", None), head, hidden, targets, banned, **signals)
    auto = HeadConfig("chunked", "auto")
    assert auto.rows(3000, hidden.device) == (1 << 26) // 3000  # the CUDA default, not the CPU one
    for cfg in (auto, HeadConfig("chunked", 7)):
        out, gh, gw = _run(cfg, head, hidden, targets, banned, **signals)
        tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16 matmuls: one rounding of 8 mantissa bits apart
        for k in ("logp", "entropy", "topk_logp", "gathered", "vocab_loss"):
            assert torch.allclose(getattr(out, k).float(), getattr(ref, k).float(), atol=tol, rtol=tol), k
        scale = ref_gw.float().abs().max()
        assert (gw.float() - ref_gw.float()).abs().max() <= tol * scale
        assert (gh.float() - ref_gh.float()).abs().max() <= tol * ref_gh.float().abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_model_forward_on_cuda_matches_the_whole_tensor_forward(cache_dir, arch):
    _needs_cuda()
    from benchmarks import embedded
    from harness.models import build_tiny, load_model, load_processor
    from harness.rollout import HFRolloutEngine, SamplingParams, sample_seed
    from harness.trainer import forward_head

    path = build_tiny(arch, "tiny", seed=0)
    model, proc = load_model(path).eval(), load_processor(path)
    items = embedded.generate("train", 3, seed=1)
    ro = HFRolloutEngine(model, proc).generate(items, SamplingParams(n=2, max_new_tokens=10),
                                               [sample_seed(0, 1, it.id, j) for it in items for j in range(2)])
    model = model.cuda()
    prompt = PromptInputs(ro.prompt.ids.cuda(), ro.prompt.mask.cuda(), (torch.arange(6) // 2).cuda())
    vision = type(ro.vision)(ro.vision.pixel_values.cuda(), ro.vision.image_grid_thw.cuda(),
                             ro.vision.images_per_row.cuda())
    ids, rmask = ro.response_ids.cuda(), ro.response_mask.cuda()
    mask = rmask > 0
    old = _old_forward(model, prompt, vision, ids, rmask, 0.9)
    old_logp = old.gather(-1, ids[..., None])[..., 0]
    model.zero_grad()
    (old_logp * rmask).sum().backward()
    old_grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for share in (False, True):
        out = forward_head(model, prompt, vision, ids, rmask, 0.9, model.config.image_token_id, share_prompts=share,
                           head=HeadConfig("chunked", 4))
        assert torch.allclose(out.logp[mask], old_logp[mask], atol=1e-4), share
        model.zero_grad()
        (out.logp * rmask).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert (grad - old_grad).abs().max() < 1e-4 * old_grad.abs().max(), share
