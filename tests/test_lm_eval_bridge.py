"""The lm-eval bridge, offline: local YAML tasks written at test time, the random-init tiny model.
Accuracy is ~0 by construction; what is checked is that lm-eval's pipeline runs on the bridge and that
each request type returns what it should."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from rlsd_harness.evaluation.lm_eval_bridge import HarnessLM  # noqa: E402

DOCS = [
    {"question": "What is 2 + 3?", "answer": "5", "choices": ["4", "5", "6"], "label": 1,
     "text": "There are 3 red shapes. 3 + 7 = 10."},
    {"question": "What is 1 + 1?", "answer": "2", "choices": ["2", "3", "7"], "label": 0,
     "text": "How many shapes are there? Add 7."},
    {"question": "What is 4 + 4?", "answer": "8", "choices": ["1", "9", "8"], "label": 2,
     "text": "4 * 2 = 8. 8 + 7 = 15."},
]


@pytest.fixture(scope="module")
def lm(tiny) -> HarnessLM:
    model, processor = tiny
    return HarnessLM(model=model, processor=processor, batch_size=2)


@pytest.fixture
def task_dir(tmp_path):
    """Three tasks over one jsonl file: generate_until, multiple_choice (loglikelihood) and perplexity."""
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = (f"dataset_path: json\ndataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
              "metadata: {version: 1.0}\n")
    (tmp_path / "gen.yaml").write_text(
        "task: bridge_gen\noutput_type: generate_until\n" + common +
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs: {until: ["<|im_end|>"], max_gen_toks: 5, do_sample: false}\n'
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    (tmp_path / "mc.yaml").write_text(
        "task: bridge_mc\noutput_type: multiple_choice\n" + common +
        'doc_to_text: "{{question}} Answer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\n")
    (tmp_path / "ppl.yaml").write_text(
        "task: bridge_ppl\noutput_type: loglikelihood_rolling\n" + common +
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list: [{metric: word_perplexity}, {metric: byte_perplexity}, {metric: bits_per_byte}]\n")
    # a multimodal task: lm-eval hands the images over beside the text, marked by <image>
    (tmp_path / "images.py").write_text(
        "from PIL import Image\n\n\ndef image(doc):\n    return [Image.new('RGB', (56, 56), (40, 80, 220))]\n")
    (tmp_path / "mm.yaml").write_text(
        "task: bridge_mm\noutput_type: generate_until\n" + common +
        'doc_to_image: !function images.image\ndoc_to_text: "<image>{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs: {until: ["<|im_end|>"], max_gen_toks: 3, do_sample: false}\n'
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    return tmp_path


def request(kind: str, args: tuple, idx: int = 0, doc_id: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx, metadata=("t", doc_id, 1))


def test_registered_beside_the_builtin_models(tiny_dir, task_dir):
    assert get_model("harness") is HarnessLM
    assert get_model("hf").__name__ == "HFLM"  # the registry quirk: built-ins are still there
    # by name, loading a checkpoint folder, with lm-eval's string-typed batch size
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    r = lm_eval.simple_evaluate(model="harness", model_args=f"checkpoint={tiny_dir},batch_size=auto", tasks=["bridge_gen"],
                                task_manager=tm, limit=1, bootstrap_iters=0, log_samples=True)
    assert r["config"]["model"] == "harness" and r["results"]["bridge_gen"]["exact_match,none"] in (0.0, 1.0)
    assert len(r["samples"]["bridge_gen"]) == 1


def test_local_tasks_run_through_simple_evaluate(lm, task_dir):
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    r = lm_eval.simple_evaluate(model=lm, tasks=["bridge_gen", "bridge_mc", "bridge_ppl", "bridge_mm"], task_manager=tm,
                                apply_chat_template=True, bootstrap_iters=0, log_samples=True)
    res = r["results"]
    assert 0.0 <= res["bridge_gen"]["exact_match,none"] <= 1.0
    assert 0.0 <= res["bridge_mc"]["acc,none"] <= 1.0
    assert math.isfinite(res["bridge_ppl"]["word_perplexity,none"]) and res["bridge_ppl"]["byte_perplexity,none"] > 1.0
    gen = r["samples"]["bridge_gen"]
    assert len(gen) == len(DOCS)
    for s in gen:
        context = s["arguments"][0][0]
        # chat template applied by the bridge: one user turn, then the assistant's turn opens
        assert context.startswith("<|im_start|>user\n") and context.endswith("<|im_start|>assistant\n")
        assert isinstance(s["resps"][0][0], str) and "<|im_end|>" not in s["resps"][0][0]
    mc = r["samples"]["bridge_mc"]
    assert len(mc) == len(DOCS) and all(len(s["resps"]) == 3 for s in mc)
    for s in mc:
        (logp, greedy), = s["resps"][0]
        assert logp < 0 and isinstance(greedy, bool)
    mm = r["samples"]["bridge_mm"]
    assert len(mm) == len(DOCS) and 0.0 <= res["bridge_mm"]["exact_match,none"] <= 1.0
    assert all(s["arguments"][0][0].startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What")
               and isinstance(s["resps"][0][0], str) for s in mm)
    assert r["config"]["model"] == "HarnessLM"


def test_generate_until_honours_max_gen_toks_and_until(lm, monkeypatch):
    context = lm.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}])
    budgets = []
    original = type(lm.engine)._generate_chunk

    def spy(self, prompt, vision, rows, sl, params, seeds):
        response, logp = original(self, prompt, vision, rows, sl, params, seeds)
        budgets.append((params.max_new_tokens, response.shape[1]))
        return response, logp

    monkeypatch.setattr(type(lm.engine), "_generate_chunk", spy)
    greedy = {"do_sample": False}
    outs = {m: lm.generate_until([request("generate_until", (context, {**greedy, "until": [], "max_gen_toks": m}))],
                                 disable_tqdm=True)[0] for m in (1, 4, 16)}
    assert [b for b, _ in budgets] == [1, 4, 16] and all(n <= b for b, n in budgets)
    # greedy with a larger budget extends, never changes, the shorter output
    assert outs[16].startswith(outs[4]) and outs[4].startswith(outs[1])
    assert len(outs[16]) > len(outs[1])
    # a stop string cuts the output right before its first occurrence
    stop = outs[16][len(outs[16]) // 2]
    cut = lm.generate_until([request("generate_until", (context, {**greedy, "until": [stop], "max_gen_toks": 16}))],
                            disable_tqdm=True)[0]
    assert cut == outs[16][: outs[16].index(stop)] and stop not in cut
    # requests with different kwargs in one call are grouped, answered in order
    both = lm.generate_until([request("generate_until", (context, {**greedy, "until": [stop], "max_gen_toks": 16})),
                              request("generate_until", (context, {**greedy, "until": [], "max_gen_toks": 4}), idx=1)],
                             disable_tqdm=True)
    assert both == [cut, outs[4]]


def test_sampled_repeats_differ_and_are_reproducible(lm):
    context = lm.apply_chat_template([{"role": "user", "content": "How many shapes are there? Add 7."}])
    kwargs = {"do_sample": True, "temperature": 1.0, "until": [], "max_gen_toks": 8}
    reqs = [request("generate_until", (context, kwargs))] * 3  # lm-eval lists one instance `repeats` times
    a = lm.generate_until(reqs, disable_tqdm=True)
    assert len(set(a)) > 1
    assert lm.generate_until(reqs, disable_tqdm=True) == a


def _direct_logprob(model, ids: list[int], n_cont: int) -> tuple[float, bool]:
    """Sum of log-probs of the last n_cont tokens of `ids`, from one unpadded forward."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x), mm_token_type_ids=torch.zeros_like(x)).logits
    logp = torch.log_softmax(logits[0].float(), -1)[:-1]
    target = x[0, 1:]
    lp = logp[-n_cont:].gather(-1, target[-n_cont:, None])[:, 0]
    return lp.sum().item(), bool((logp[-n_cont:].argmax(-1) == target[-n_cont:]).all())


def test_loglikelihood_matches_a_direct_forward(lm, tiny):
    model, processor = tiny
    tok = processor.tokenizer
    context, continuation = "How many shapes are there? Add", " 7."  # lengths differ: the batch is padded
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx
    expected = [_direct_logprob(model, whole, len(whole) - len(ctx))]
    cont_only = tok("There are 3 red shapes.", add_special_tokens=False)["input_ids"]
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    expected.append(_direct_logprob(model, [endoftext, *cont_only], len(cont_only)))  # empty context
    got = lm.loglikelihood([request("loglikelihood", (context, continuation)),
                            request("loglikelihood", ("", "There are 3 red shapes."), idx=1)], disable_tqdm=True)
    for (lp, greedy), (want, want_greedy) in zip(got, expected):
        assert lp == pytest.approx(want, abs=1e-4) and lp < 0
        assert greedy == want_greedy
    # rolling: the whole string after the end-of-text token, in one window when it fits
    rolling = lm.loglikelihood_rolling([request("loglikelihood_rolling", ("There are 3 red shapes.",))],
                                       disable_tqdm=True)
    assert rolling[0] == pytest.approx(expected[1][0], abs=1e-4)


def test_images_follow_the_placeholders(lm):
    history = [{"role": "user", "content": "<image>How many red shapes are there?"}]
    context = lm.apply_chat_template(history)
    assert context.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many")
    image = Image.new("RGB", (56, 56), (220, 40, 40))
    kwargs = {"do_sample": False, "until": [], "max_gen_toks": 3}
    out = lm.generate_until([request("generate_until", (context, kwargs, {"visual": [image]}))], disable_tqdm=True)
    assert isinstance(out[0], str)
    # no placeholder: the image goes first in the user turn
    plain = lm.apply_chat_template([{"role": "user", "content": "How many red shapes are there?"}])
    assert lm._with_vision(plain, 1) == context
    with pytest.raises(ValueError, match="2 images but its text marks 1"):
        lm.generate_until([request("generate_until", (context, kwargs, {"visual": [image, image]}))], disable_tqdm=True)
    lp = lm.loglikelihood([request("loglikelihood", (context, "3", {"visual": [image]}))], disable_tqdm=True)
    assert lp[0][0] < 0
