"""The teacher boundary, by value: the teacher's log-prob of every response token, the first one included,
equals an independent forward of the teacher model over the unpadded [privileged prompt, response] of that
row alone (whole logits, no padding, no shared-prompt cache, no chunked head), within 1e-5. Checked on the
micro-batches a real training step hands the teacher (left-padded prompts of uneven lengths, right-padded
responses), with shared prompts on and off, in one micro-batch, in micro-batches that split groups and in
token-budget micro-batches; and on a batch re-padded by hand (extra padding on both sides, uneven response
lengths). A hidden state shifted by one position, everywhere or at the first response token only, must fail
the same check: the last three tests patch such a shift into the trainer and see the error exceed 1e-3.
With a visual privileged context (data.privileged=image_hint: the teacher's prompt holds one more image than the
student's, so its image tokens and multimodal positions differ from the student's), the same checks hold on the
teacher's own images, on Qwen2.5-VL and Qwen3-VL."""

import pytest
import torch

from rlsd_harness.algorithms.batch import PromptInputs
from rlsd_harness.rollout.hf import vision_token_ids
from rlsd_harness.training import trainer as trainer_module
from tests.test_trainer import make_trainer

TOLERANCE = 1e-5
MICRO_BATCHING = {
    "whole": ["train.micro_batch_size=16"],
    "split-groups": ["train.micro_batch_size=2"],  # half a group each: micro-batches cut through shared prompts
    "token-budget": ["train.token_budget=300"],  # packed by tokens, each micro-batch trimmed of padding
}


def _step_capturing_teacher_batches(tmp_path, share: bool, micro_batching: str, *extra: str):
    trainer = make_trainer(tmp_path, "algorithm=rlsd", f"train.share_prompts={share}", *MICRO_BATCHING[micro_batching],
                           *extra)
    seen = []
    original = trainer._teacher_signals

    def spy(mb, topk_ids):
        original(mb, topk_ids)
        seen.append(mb)

    trainer._teacher_signals = spy
    trainer.step()
    assert seen, "the step ran no teacher forward"
    return trainer, seen


@torch.no_grad()
def _unpadded_teacher_logp(trainer, mb, row: int) -> torch.Tensor:
    """(L,) log-probs of row `row`'s L response tokens from one forward of the teacher over exactly its prompt
    tokens followed by its response tokens: the logits at position P − 1 + t predict response token t."""
    model = trainer.teacher.module(trainer.engine.module)
    prompt = mb.teacher.ids[row][mb.teacher.mask[row] > 0]
    length = int(mb.response_mask[row].sum())
    assert torch.equal(mb.response_mask[row, :length], torch.ones(length)), "responses are right-padded"
    response = mb.response_ids[row, :length]
    ids = torch.cat([prompt, response])[None]
    vision = (mb.teacher_vision if mb.teacher_vision is not None else mb.vision).select(torch.tensor([row]))
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == trainer.image_token_id).int(),
                   pixel_values=vision.pixel_values, image_grid_thw=vision.image_grid_thw, use_cache=False).logits
    model.train(was_training)
    start = len(prompt) - 1
    logits = logits[0, start: start + length].float()
    logits[:, vision_token_ids(model.config)] = -float("inf")  # the rollout never samples vision placeholders
    logprobs = torch.log_softmax(logits / trainer.sampling.temperature, dim=-1)
    return logprobs.gather(-1, response[:, None])[:, 0]


def _boundary_errors(trainer, mbs) -> tuple[float, float]:
    """(largest |teacher_logp − unpadded reference| over every response token, the same over first tokens)."""
    worst, worst_first = 0.0, 0.0
    for mb in mbs:
        for row in range(mb.batch_size):
            length = int(mb.response_mask[row].sum())
            if length == 0:
                continue
            gap = (mb.teacher_logp[row, :length] - _unpadded_teacher_logp(trainer, mb, row)).abs()
            worst, worst_first = max(worst, float(gap.max())), max(worst_first, float(gap[0]))
    return worst, worst_first


def _prompt_lengths(mbs) -> set[int]:
    return {int(n) for mb in mbs for n in mb.teacher.mask.sum(-1)}


@pytest.mark.parametrize(
    "share,micro_batching",
    [
        (True, "split-groups"),
        (False, "token-budget"),
        pytest.param(False, "split-groups", marks=pytest.mark.slow),
        pytest.param(True, "whole", marks=pytest.mark.slow),
        pytest.param(False, "whole", marks=pytest.mark.slow),
        pytest.param(True, "token-budget", marks=pytest.mark.slow),
    ],
)
def test_teacher_logp_of_every_response_token_matches_an_unpadded_forward(tmp_path, tiny_dir, share, micro_batching):
    trainer, mbs = _step_capturing_teacher_batches(tmp_path, share, micro_batching)
    if micro_batching != "whole":
        assert len(mbs) > 1, "the step was meant to run several micro-batches"
    assert len(_prompt_lengths(mbs)) > 1, "the teacher prompts were meant to differ in length (left padding)"
    worst, worst_first = _boundary_errors(trainer, mbs)
    assert worst_first < TOLERANCE, f"first response token: teacher log-prob off by {worst_first:.2e}"
    assert worst < TOLERANCE, f"teacher log-prob off by {worst:.2e}"


IMAGE_HINT = "data.privileged=image_hint"


def _teacher_image_source(source: str, tmp_path, monkeypatch) -> tuple[str, ...]:
    """Overrides for a teacher prompt with images the student's lacks. "image_hint": every row's teacher sees one
    more image (level 1 questions all tokenize alike, so every prompt has one length). "local": data=local rows of
    uneven question lengths where every other row has a teacher image: rows of 1 and 2 teacher images and
    uneven left padding in one batch."""
    if source == "image_hint":
        return (IMAGE_HINT,)
    if source == "image_hint-qwen3vl":  # Qwen3-VL's chat template and multimodal positions with two images
        return (IMAGE_HINT, "model=tiny_qwen3vl")
    import datasets

    from tests.test_visual_privileged import write_local_rows

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    path = write_local_rows(tmp_path / "data", 8, hint_every=2)
    return ("data=local", f"data.path={path}", "data.verifier=parity")


@pytest.mark.parametrize(
    "source,share,micro_batching",
    [
        ("image_hint", True, "split-groups"),
        ("local", True, "split-groups"),
        ("local", False, "token-budget"),
        ("image_hint-qwen3vl", True, "split-groups"),
        pytest.param("image_hint", False, "whole", marks=pytest.mark.slow),
        pytest.param("local", False, "whole", marks=pytest.mark.slow),
    ],
)
def test_with_teacher_only_images_the_teacher_logp_matches_an_unpadded_forward(tmp_path, tiny_dir, monkeypatch, source,
                                                                               share, micro_batching):
    extra = _teacher_image_source(source, tmp_path, monkeypatch)
    trainer, mbs = _step_capturing_teacher_batches(tmp_path, share, micro_batching, *extra)
    teacher_images = [n for mb in mbs for n in mb.teacher_vision.images_per_row.tolist()]
    assert all(n == 1 for mb in mbs for n in mb.vision.images_per_row.tolist())
    if source == "local":
        assert set(teacher_images) == {1, 2}, "rows with and without a teacher image in one step"
        assert len(_prompt_lengths(mbs)) > 1, "the teacher prompts were meant to differ in length (left padding)"
    else:
        assert set(teacher_images) == {2}
    worst, worst_first = _boundary_errors(trainer, mbs)
    assert worst_first < TOLERANCE, f"first response token: teacher log-prob off by {worst_first:.2e}"
    assert worst < TOLERANCE, f"teacher log-prob off by {worst:.2e}"


def _repadded(mb, extra_left: int, extra_right: int):
    """The micro-batch with `extra_left` more padding columns before every prompt, `extra_right` more after
    every response, and row r's response cut to 1 + (r mod T) tokens (uneven right padding)."""
    def left(p: PromptInputs) -> PromptInputs:
        pad = p.ids.new_zeros((p.ids.shape[0], extra_left))
        return PromptInputs(torch.cat([pad, p.ids], 1), torch.cat([pad.to(p.mask.dtype), p.mask], 1), p.key)

    width = mb.response_ids.shape[1]
    lengths = 1 + torch.arange(mb.batch_size) % width
    mask = (torch.arange(width + extra_right)[None] < lengths[:, None]).to(mb.response_mask.dtype)
    ids = torch.cat([mb.response_ids, mb.response_ids.new_zeros((mb.batch_size, extra_right))], 1)
    out = mb.select(torch.arange(mb.batch_size))
    out.teacher, out.student, out.response_ids, out.response_mask = left(mb.teacher), left(mb.student), ids, mask
    out.teacher_logp = None
    return out


@pytest.mark.parametrize("share", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_extra_padding_and_uneven_responses_change_no_teacher_logp(tmp_path, tiny_dir, share):
    trainer, mbs = _step_capturing_teacher_batches(tmp_path, share, "whole")
    repadded = _repadded(mbs[0], extra_left=3, extra_right=2)
    trainer._teacher_signals(repadded, None)
    assert len({int(n) for n in repadded.response_mask.sum(-1)}) > 1
    worst, worst_first = _boundary_errors(trainer, [repadded])
    assert worst_first < TOLERANCE and worst < TOLERANCE, (worst_first, worst)


def _shift(kind: str):
    original = trainer_module.response_hidden

    def shifted(*args, **kwargs):
        h = original(*args, **kwargs)
        if kind == "later":  # every position reads the hidden state one position further on
            return torch.cat([h[:, 1:], h[:, -1:]], 1)
        if kind == "earlier":  # one position back; the first token reads the second's
            return torch.cat([h[:, 1:2], h[:, :-1]], 1)
        return torch.cat([h[:, 1:2], h[:, 1:]], 1)  # first-only: only the first response token is off

    return shifted


@pytest.mark.parametrize(
    "kind,share,extra",
    [
        ("first-only", True, ()),
        ("first-only", True, (IMAGE_HINT,)),  # a prompt with the teacher's extra image
        pytest.param("first-only", False, (), marks=pytest.mark.slow),
        pytest.param("later", True, (), marks=pytest.mark.slow),
        pytest.param("earlier", False, (), marks=pytest.mark.slow),
    ],
)
def test_a_position_shifted_by_one_fails_the_check(tmp_path, tiny_dir, monkeypatch, kind, share, extra):
    monkeypatch.setattr(trainer_module, "response_hidden", _shift(kind))
    trainer, mbs = _step_capturing_teacher_batches(tmp_path, share, "split-groups", *extra)
    worst, worst_first = _boundary_errors(trainer, mbs)
    assert worst_first > 1e-3, f"a {kind} shift went unseen at the first response token ({worst_first:.2e})"
    assert worst > 1e-3
