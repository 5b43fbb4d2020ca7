import os
from types import SimpleNamespace

import pytest
import torch

from rlsd_harness.algorithms.batch import PromptInputs
from rlsd_harness.benchmarks import embedded
from rlsd_harness.models import build_tiny, load_model, load_processor
from rlsd_harness.rollout.hf import (
    HFRolloutEngine,
    SamplingParams,
    encode_prompts,
    filter_logits,
    sample_seed,
    user_messages,
    vision_token_ids,
)
from rlsd_harness.training.trainer import forward_logprobs
from rlsd_harness.verifier import ExactVerifier, MathVerifier, last_boxed


def test_tokenizer_and_chat_template_render_images(tiny):
    _, proc = tiny
    tok = proc.tokenizer
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.tokenize(special) == [special]
    text = proc.apply_chat_template(user_messages("How many?", 1), tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n<|im_start|>assistant\n"
    s = "There are 3 red shapes. 3 + 9 = 12. The answer is \\boxed{12}."
    assert tok.decode(tok(s)["input_ids"]) == s


def test_image_tokens_match_the_grid(tiny):
    model, proc = tiny
    items = embedded.generate("test", 3, seed=0)
    prompt, vision = encode_prompts(proc, [user_messages(i.question, 1) for i in items], [i.images for i in items])
    merge = proc.image_processor.merge_size
    n_pad = (prompt.ids == model.config.image_token_id).sum(-1)
    assert n_pad.tolist() == (vision.image_grid_thw.prod(-1) // merge**2).tolist()
    assert vision.pixel_values.shape[0] == int(vision.image_grid_thw.prod(-1).sum())


def test_model_build_is_deterministic(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    again = build_tiny("qwen2_5_vl", "tiny", seed=0)
    assert again != tiny_dir
    a, b = load_model(tiny_dir).state_dict(), load_model(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def _rollout(tiny, items, n=4, **kw):
    model, proc = tiny
    params = SamplingParams(n=n, max_new_tokens=10, **kw)
    seeds = [sample_seed(0, 1, it.id, j) for it in items for j in range(n)]
    return HFRolloutEngine(model, proc).generate(items, params, seeds)


def test_sampling_is_independent_of_batching(tiny):
    items = embedded.generate("train", 4, seed=0)
    full = _rollout(tiny, items)
    part = _rollout(tiny, items[2:])
    w = part.response_ids.shape[1]
    assert torch.equal(full.response_ids[8:, :w], part.response_ids)
    assert torch.allclose(full.logp[8:, :w], part.logp, atol=1e-5)


def test_sampling_logprobs_match_a_forward_pass(tiny):
    model, proc = tiny
    items = embedded.generate("train", 2, seed=0)
    for kw in ({"temperature": 1.0}, {"temperature": 0.7}, {"temperature": 1.0, "top_k": 5}):
        ro = _rollout(tiny, items, **kw)
        with torch.no_grad():
            lp = forward_logprobs(model, ro.prompt, ro.vision, ro.response_ids, ro.response_mask, kw["temperature"],
                                  model.config.image_token_id)
        lp = filter_logits(lp, 1.0, kw.get("top_k", 0), 1.0).log_softmax(-1)  # the sampler renormalises after top-k
        ref = lp.gather(-1, ro.response_ids[..., None])[..., 0] * ro.response_mask
        assert torch.allclose(ro.logp, ref, atol=1e-4)
        assert (ro.response_mask.sum(-1) >= 1).all()


@pytest.mark.parametrize("images", [True, False])
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_shared_prompt_forward_matches_the_full_forward(cache_dir, arch, images):
    path = build_tiny(arch, "tiny", seed=0)
    model, proc = load_model(path).eval(), load_processor(path)
    items = [SimpleNamespace(id=it.id, question=it.question + " Check twice." * k, images=it.images if images else [])
             for k, it in enumerate(embedded.generate("train", 3, seed=1))]  # uneven left padding
    ro = HFRolloutEngine(model, proc).generate(items, SamplingParams(n=3, max_new_tokens=10),
                                               [sample_seed(0, 1, it.id, j) for it in items for j in range(3)])
    assert ro.prompt.mask.sum(-1).unique().numel() > 1
    order = torch.tensor([4, 0, 8, 1, 5, 2, 7, 3, 6])  # rows of a prompt need not be adjacent
    prompt = PromptInputs(ro.prompt.ids, ro.prompt.mask, torch.arange(9) // 3).rows(order)
    vision = ro.vision.select(order) if images else None
    args = (prompt, vision, ro.response_ids[order], ro.response_mask[order], 0.9, model.config.image_token_id)
    with torch.no_grad():
        full = forward_logprobs(model, *args)
        shared = forward_logprobs(model, *args, share_prompts=True)
    mask = ro.response_mask[order] > 0
    assert torch.allclose(full[mask], shared[mask], atol=1e-5)
    # and the same gradient: the shared prompt's gets the sum over its rows
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask
    grads = []
    for share in (False, True):
        model.zero_grad()
        lp = forward_logprobs(model, *args, share_prompts=share)
        (lp.gather(-1, args[2][..., None])[..., 0] * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).abs().max() < 1e-5 * grads[0].abs().max()


def _boost_logits(model, bias: dict[int, float]):
    """A hook adding `bias` to the output logits of some tokens (the prompt's embeddings stay as they are), so
    that a random-init model samples them often; returns the hook's handle."""
    add = torch.zeros(model.get_output_embeddings().weight.shape[0])
    for token, b in bias.items():
        add[token] = b
    return model.get_output_embeddings().register_forward_hook(lambda m, a, out: out + add)


@pytest.mark.parametrize("images", [True, False])
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_shared_decode_samples_what_generate_samples(cache_dir, arch, images):
    """The rollout's prompt-once decode loop against per-row HF `generate` with the same seeded sampler: the same
    token ids and sampling log-probs, with images and text-only, uneven left padding, end-of-turn at different
    steps, `min_new_tokens`, top-k / top-p, and chunks of prompts (max_batch) of different widths."""
    path = build_tiny(arch, "tiny", seed=0)
    model, proc = load_model(path).eval(), load_processor(path)
    eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    banned = vision_token_ids(model.config)
    # end-of-turn at ~10% a step; a vision token would be sampled at almost every step if it were not banned
    _boost_logits(model, {eos: 4.0, **dict.fromkeys(banned, 12.0)})
    items = [SimpleNamespace(id=it.id, question=it.question + " Check twice." * k, images=it.images if images else [])
             for k, it in enumerate(embedded.generate("train", 3, seed=1))]
    n = 3
    seeds = [sample_seed(0, 1, it.id, j) for it in items for j in range(n)]
    cases = [dict(max_new_tokens=12), dict(max_new_tokens=12, min_new_tokens=5, temperature=1.5, top_k=50, top_p=0.9)]
    for kw in cases:
        params = SamplingParams(n=n, **kw)
        for max_batch in (256, 4):  # 4: one prompt per chunk here, and generate's chunks split a group
            ref = HFRolloutEngine(model, proc, max_batch=max_batch, decode="generate").generate(items, params, seeds)
            new = HFRolloutEngine(model, proc, max_batch=max_batch).generate(items, params, seeds)
            assert torch.equal(new.response_ids, ref.response_ids), (kw, max_batch)
            assert torch.equal(new.response_mask, ref.response_mask)
            assert (new.logp - ref.logp).abs().max() < 1e-5
            assert new.texts == ref.texts
            assert torch.equal(new.prompt.ids, ref.prompt.ids) and torch.equal(new.prompt.mask, ref.prompt.mask)
            if images:
                assert torch.equal(new.vision.pixel_values, ref.vision.pixel_values)
        lengths = new.response_mask.sum(-1)
        assert lengths.unique().numel() > 1 and lengths.min() >= kw.get("min_new_tokens", 1)  # EOS at several steps
        assert not torch.isin(new.response_ids, torch.tensor(banned)).any()
    assert new.prompt.mask.sum(-1).unique().numel() > 1


def test_shared_decode_runs_each_prompt_and_image_once(tiny):
    model, proc = tiny
    items = embedded.generate("train", 3, seed=0)
    seen = []
    hooks = [model.model.visual.register_forward_pre_hook(lambda m, a: seen.append(("image", a[0].shape[0]))),
             model.model.language_model.register_forward_pre_hook(
                 lambda m, a, kw: seen.append(("text", (kw.get("inputs_embeds") if kw.get("input_ids") is None
                                                        else kw["input_ids"]).shape[:2])), with_kwargs=True)]
    try:
        HFRolloutEngine(model, proc).generate(items, SamplingParams(n=4, max_new_tokens=5, min_new_tokens=5),
                                              [sample_seed(0, 1, it.id, j) for it in items for j in range(4)])
    finally:
        for h in hooks:
            h.remove()
    prompt, vision = encode_prompts(proc, [user_messages(i.question, 1) for i in items], [i.images for i in items])
    assert seen[0] == ("image", vision.pixel_values.shape[0])  # the three prompts' patches, once each
    assert seen[1] == ("text", (3, prompt.ids.shape[1]))  # prefill: one row per prompt
    assert seen[2:] == [("text", (12, 1))] * 4  # then the 12 samples, one token per step


def test_unknown_decode_mode_is_refused(tiny):
    with pytest.raises(ValueError, match="'beam'.*shared, generate"):
        HFRolloutEngine(*tiny, decode="beam")


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 1.0, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, 1.0, 0, 0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.8, 0.5 + 0.3 reaches it
    assert (~torch.isinf(filter_logits(logits, 1.0, 0, 0.81))).sum() == 3


def test_verifiers_are_strict_about_the_box():
    exact, math = ExactVerifier(), MathVerifier()
    assert exact("so \\boxed{12}.", 12).reward == 1.0
    assert exact("the answer is 12", 12).reward == 0.0
    assert exact("\\boxed{(B)}", "B").reward == 1.0
    assert math("\\boxed{\\frac{1}{2}}", "0.5").reward == 1.0
    assert math("no box, answer 42", "42").reward == 0.0
    assert math("\\boxed{", "42").reward == 0.0
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"


def test_a_cache_entry_published_by_another_process_first_is_kept(tmp_path):
    from rlsd_harness.models import cache_tmp, publish_cache_entry

    out = tmp_path / "models" / "abc"
    theirs, mine = out.with_name("abc.1.tmp"), cache_tmp(out)
    assert mine != out.with_name("abc.tmp") and str(os.getpid()) in mine.name  # one scratch folder per process
    for folder, text in ((theirs, "theirs"), (mine, "mine")):
        folder.mkdir(parents=True)
        (folder / "recipe.json").write_text(text)
    publish_cache_entry(theirs, out)
    publish_cache_entry(mine, out)  # same entry, published second: theirs stays, this build is dropped
    assert (out / "recipe.json").read_text() == "theirs" and not mine.exists()
    with pytest.raises(OSError):  # a failed rename with nothing in place is not swallowed
        publish_cache_entry(tmp_path / "missing.tmp", tmp_path / "models" / "other")
