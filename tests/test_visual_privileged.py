"""Visual privileged context: the teacher's prompt can hold images the student's does not.

Two sources: the embedded task's `data.privileged=image_hint` (one more image, after the task picture, showing
the answer) and a `teacher_images` column of `data=local`. Checked here: the items and rows carry the images,
the teacher's conversation has a placeholder for each, a training step of every objective with a teacher reads
them through the same processor as the student's, and the student's inputs (the rollout prompt, its images,
every policy forward) are exactly those of the student's own images: a test that fails when a teacher image
leaks into them. The teacher's log-probs with the extra image are checked by value in test_teacher_boundary.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rlsd_harness.algorithms import get_objective_class, objective_names
from rlsd_harness.benchmarks import embedded
from rlsd_harness.config import ConfigError
from rlsd_harness.data import DataError, EmbeddedData, LocalData
from rlsd_harness.rollout.hf import encode_prompts, user_messages
from rlsd_harness.training import trainer as trainer_module
from rlsd_harness.training.teacher import TeacherConfig, context_images, reference_contexts, sibling_contexts

TEACHER_OBJECTIVES = [n for n in objective_names() if get_objective_class(n).teacher_context is not None]


# ----------------------------------------------------------------------------- the embedded image hint


def test_image_hint_changes_no_item_and_nothing_the_student_sees():
    text = embedded.generate("train", 20, seed=3, level=1)
    hint = embedded.generate("train", 20, seed=3, level=1, privileged="image_hint")
    assert [x.id for x in hint] == [x.id for x in text] and [x.question for x in hint] == [x.question for x in text]
    for a, b in zip(text, hint):
        assert [np.asarray(i).tobytes() for i in a.images] == [np.asarray(i).tobytes() for i in b.images]
        assert a.teacher_images == [] and len(b.teacher_images) == 1
        shown = np.asarray(b.teacher_images[0])
        assert np.array_equal(shown, np.asarray(embedded.render_hint(str(b.answer))))
    # different answers draw different pictures; the hint is the task picture's size
    assert len({np.asarray(x.teacher_images[0]).tobytes() for x in hint}) == len({x.answer for x in hint})
    assert hint[0].teacher_images[0].size == hint[0].images[0].size
    with pytest.raises(ValueError, match="unknown privileged context 'words'; valid: text, image_hint"):
        embedded.generate("train", 1, seed=0, privileged="words")
    with pytest.raises(ValueError, match="render_hint"):
        embedded.render_hint("12a")


def test_embedded_data_hands_the_hint_to_training_and_held_out_items():
    data = EmbeddedData(level=1, privileged="image_hint")
    assert all(len(x.teacher_images) == 1 for x in data.prompts(1, 4) + data.test_set(4))
    assert all(x.teacher_images == [] for x in EmbeddedData(level=1).prompts(1, 4))
    with pytest.raises(ConfigError, match="data.privileged=.picture.; valid: text, image_hint"):
        EmbeddedData(privileged="picture")


def test_the_teacher_conversation_has_a_placeholder_per_image_and_the_hint_only_in_the_image():
    item = embedded.generate("train", 1, seed=0, level=1, privileged="image_hint")[0]
    plain = embedded.generate("train", 1, seed=0, level=1)[0]
    conv = reference_contexts([item], 2, "answer")
    assert len(conv) == 2
    content = conv[0][0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert len(context_images(item)) == 2 and context_images(plain) == plain.images
    assert "last image" in content[-1]["text"] and f"solution:\n{item.answer}" not in content[-1]["text"]
    text = reference_contexts([plain], 1, "answer")[0][0]["content"]
    assert [c["type"] for c in text] == ["image", "text"] and f"solution:\n{plain.answer}" in text[-1]["text"]
    # SDPO's sibling context shows the hint image too
    sib, mask = sibling_contexts([item], 2, ["a", "b"], torch.tensor([1.0, 0.0]), TeacherConfig(weights="frozen"))
    assert [c["type"] for c in sib[1][0]["content"]] == ["image", "image", "text"] and mask.tolist() == [0.0, 1.0]


# ----------------------------------------------------------------------------- data=local's teacher_images column


def write_local_rows(folder: Path, n: int, teacher_column: str = "teacher_images", hint_every: int = 1) -> Path:
    """n jsonl rows, each with one task picture (files beside the jsonl); rows i with i % hint_every == 0 also
    have a teacher-only hint picture, the others an empty list. Levels 1, 2, 3 in turn: questions of uneven length."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        it = embedded.generate("train", i + 1, seed=0, level=1 + i % 3, privileged="image_hint")[i]
        it.images[0].save(folder / "img" / f"q{i}.png")
        hints = []
        if i % hint_every == 0:
            it.teacher_images[0].save(folder / "img" / f"hint{i}.png")
            hints = [f"img/hint{i}.png"]
        rows.append({"id": f"q{i}", "question": it.question, "images": [f"img/q{i}.png"],
                     teacher_column: hints, "answer": str(it.answer)})
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def _caches(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def test_a_teacher_images_column_is_read_checked_and_kept_from_the_student(tmp_path, _caches):
    path = write_local_rows(tmp_path, 3)
    data = LocalData(str(path))
    ex = data[1]
    assert len(ex.images) == 1 and len(ex.teacher_images) == 1
    assert np.array_equal(np.asarray(ex.teacher_images[0].convert("RGB")),
                          np.asarray(Image.open(tmp_path / "img" / "hint1.png").convert("RGB")))
    assert not np.array_equal(np.asarray(ex.images[0].convert("RGB")), np.asarray(ex.teacher_images[0].convert("RGB")))
    # another column name, through data.fields; a named column that is missing is refused
    other = write_local_rows(tmp_path / "other", 2, teacher_column="hint_pictures")
    assert LocalData(str(other))[0].teacher_images == []  # not a default name: the teacher sees nothing extra
    assert len(LocalData(str(other), fields={"teacher_images": "hint_pictures"})[0].teacher_images) == 1
    with pytest.raises(DataError, match=r"teacher_images \(column 'nope'\)"):
        LocalData(str(other), fields={"teacher_images": "nope"})
    with pytest.raises(DataError, match="hold both the student's images and the teacher's"):
        LocalData(str(path), fields={"teacher_images": "images"})
    # a missing teacher image is a bad row named by its field, before anything runs
    (tmp_path / "img" / "hint2.png").unlink()
    with pytest.raises(DataError, match=r"row 2 \(id 'q2', .*\): teacher_images \(column 'teacher_images'\): image "
                                        r"file .*hint2.png does not exist"):
        LocalData(str(path))


# ----------------------------------------------------------------------------- training steps


def _capture_teacher_batches(monkeypatch) -> list:
    """Every micro-batch the teacher runs on, after its forward (class-level: works inside `run`)."""
    seen = []
    original = trainer_module.Trainer._teacher_signals

    def spy(self, mb, topk_ids):
        original(self, mb, topk_ids)
        seen.append((self, mb))

    monkeypatch.setattr(trainer_module.Trainer, "_teacher_signals", spy)
    return seen


def _row_inputs(mb, prompt, vision, r: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    rows = torch.tensor([r])
    one = vision.select(rows)
    return prompt.ids[r][prompt.mask[r] > 0], one.pixel_values, int(one.images_per_row[0])


def assert_inputs_kept_apart(trainer, mb, examples: list) -> None:
    """The student's prompt and images in `mb` are exactly the processor's output for the student's own
    question and images, and the teacher's images are the student's followed by the example's teacher images.
    `examples[k]` is the example of student key k (one rank: the key is the prompt's index in its step)."""
    for r in range(mb.batch_size):
        ex = examples[int(mb.student.key[r])]
        own, own_vision = encode_prompts(trainer.processor, [user_messages(ex.question, len(ex.images))], [ex.images])
        ids, pixels, n_images = _row_inputs(mb, mb.student, mb.vision, r)
        assert n_images == len(ex.images), f"row {r}: the student's prompt holds {n_images} images, its own are {len(ex.images)}"
        assert torch.equal(ids, own.ids[0]), f"row {r}: the student's prompt tokens are not its own prompt's"
        assert torch.equal(pixels, own_vision.pixel_values), f"row {r}: the student's pixels are not its own images'"
        images = [*ex.images, *ex.teacher_images]  # the order the image-hint text promises: the hint last
        _, full = encode_prompts(trainer.processor, [user_messages("", len(images))], [images])
        t_ids, t_pixels, t_images = _row_inputs(mb, mb.teacher, mb.teacher_vision, r)
        assert t_images == len(images) and torch.equal(t_pixels, full.pixel_values)
        more = int((t_ids == trainer.image_token_id).sum()) - int((ids == trainer.image_token_id).sum())
        assert (more > 0) == bool(ex.teacher_images), f"row {r}: {more} more image tokens in the teacher's prompt"


def _examples_of(trainer, mb) -> list:
    return trainer.data.prompts(mb.step, trainer.cfg.train.prompts_per_step)


@pytest.mark.parametrize("algorithm", ["rlsd", "opsd"])
def test_a_step_with_the_image_hint_feeds_the_teacher_the_hint_and_the_student_only_its_picture(
        tmp_path, tiny_dir, monkeypatch, algorithm):
    from tests.test_trainer import make_trainer

    seen = _capture_teacher_batches(monkeypatch)
    students = []
    original = trainer_module.forward_head

    def spy(model, prompt, vision, *args, **kwargs):  # every forward: the policy's and the teacher's
        students.append((prompt, vision))
        return original(model, prompt, vision, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "forward_head", spy)
    trainer = make_trainer(tmp_path, f"algorithm={algorithm}", "data.privileged=image_hint", "train.micro_batch_size=8")
    metrics = trainer.step()
    assert all(np.isfinite(v) for v in metrics.values())
    assert len(seen) == 2, "two micro-batches, each with a teacher forward"
    for tr, mb in seen:
        assert_inputs_kept_apart(tr, mb, _examples_of(tr, mb))
    # the policy's own forwards (the loss) read the student's prompt and one image per row, never the teacher's
    policy = [(p, v) for p, v in students if not any(p is mb.teacher for _, mb in seen)]
    assert len(policy) == len(students) - len(seen) >= 2
    assert all(int(v.images_per_row.max()) == 1 for _, v in policy)


def test_the_leak_check_fails_when_the_hint_reaches_the_student(tmp_path, tiny_dir, monkeypatch):
    """The negative control of the test above: an item whose student images include the hint must fail it."""
    from tests.test_trainer import make_trainer

    monkeypatch.setattr(embedded.Item, "images", property(lambda self: [embedded.render(self.cells), *self.teacher_images]))
    seen = _capture_teacher_batches(monkeypatch)
    trainer = make_trainer(tmp_path, "algorithm=rlsd", "data.privileged=image_hint")
    trainer.step()
    tr, mb = seen[0]
    examples = [_without_hint(x) for x in _examples_of(tr, mb)]  # what the student should have seen
    with pytest.raises(AssertionError, match="the student's prompt holds 2 images, its own are 1"):
        assert_inputs_kept_apart(tr, mb, examples)


def _without_hint(item: embedded.Item) -> Any:
    """The item as it should be: the task picture for the student, the hint for the teacher."""
    return SimpleNamespace(question=item.question, images=[embedded.render(item.cells)],
                           teacher_images=item.teacher_images)


@pytest.mark.parametrize("algorithm", [a for a in TEACHER_OBJECTIVES if a not in ("rlsd", "opsd")])
def test_every_objective_with_a_teacher_reads_the_hint_image(tmp_path, tiny_dir, monkeypatch, algorithm):
    from tests.test_trainer import make_trainer

    seen = _capture_teacher_batches(monkeypatch)
    trainer = make_trainer(tmp_path, f"algorithm={algorithm}", "data.privileged=image_hint")
    metrics = trainer.step()
    assert all(np.isfinite(v) for v in metrics.values()) and seen
    for tr, mb in seen:
        assert_inputs_kept_apart(tr, mb, _examples_of(tr, mb))


def test_a_run_on_local_rows_with_a_teacher_images_column(tmp_path, tiny_dir, monkeypatch, _caches):
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.run import run
    from tests.conftest import small_overrides

    path = write_local_rows(tmp_path / "data", 6, hint_every=2)  # rows with and without a teacher image
    seen = _capture_teacher_batches(monkeypatch)
    cfg = compose_config(small_overrides(tmp_path / "runs", "algorithm=opsd", "data=local", f"data.path={path}",
                                         "data.verifier=parity", "run.name=local-hint", "train.steps=2"))
    run_dir = run(cfg, log=lambda m: None)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout_step"] for m in lines if m["rollout_step"] > 0] == [1, 2]
    assert {mb.step for _, mb in seen} == {1, 2}
    for tr, mb in seen:
        assert_inputs_kept_apart(tr, mb, _examples_of(tr, mb))


def test_the_ledger_charges_the_teacher_its_extra_images(tmp_path, tiny_dir, monkeypatch):
    """The teacher's forward FLOPs in the ledger count the hint image's patches (more than the student's images
    alone would give), micro-batch by micro-batch."""
    from tests.test_trainer import make_trainer

    seen = _capture_teacher_batches(monkeypatch)
    trainer = make_trainer(tmp_path, "algorithm=rlsd", "data.privileged=image_hint", "train.micro_batch_size=8")
    trainer.step()
    share = trainer.cfg.train.share_prompts
    charged = trainer.ledger.total["flops/teacher"]  # the one step's teacher forwards
    with_hint = sum(tr._forward_cost(mb, mb.teacher, share, mb.teacher_vision)[1] for tr, mb in seen)
    student_only = sum(tr._forward_cost(mb, mb.teacher, share, mb.vision)[1] for tr, mb in seen)
    assert charged == pytest.approx(with_hint, rel=1e-9) and with_hint > student_only


def _shard(n_rows: int, images_per_row: int, teacher_extra: int | None) -> Any:
    """A RolloutBatch of n_rows rows with `images_per_row` one-patch student images per row; with teacher_extra,
    a teacher_vision of that many more images per row (pixel value 100 + image index, to tell them apart)."""
    from rlsd_harness.algorithms.batch import PromptInputs, RolloutBatch, VisionInputs

    def vision(per_row: int, base: float) -> VisionInputs:
        n = n_rows * per_row
        return VisionInputs(pixel_values=base + torch.arange(n, dtype=torch.float)[:, None].expand(n, 3),
                            image_grid_thw=torch.ones(n, 3, dtype=torch.long),
                            images_per_row=torch.full((n_rows,), per_row, dtype=torch.long))

    ids = torch.ones(n_rows, 2, dtype=torch.long)
    return RolloutBatch(response_ids=ids, response_mask=ids.float(), rewards=torch.zeros(n_rows), group_size=n_rows,
                        rollout_logp=ids.float(), student=PromptInputs(ids, ids), vision=vision(images_per_row, 0.0),
                        teacher_vision=None if teacher_extra is None else vision(images_per_row + teacher_extra, 100.0))


def test_shards_with_and_without_teacher_images_concatenate_row_by_row():
    """Rows that change rank (train.balance_ranks) keep their teacher's images: a shard without teacher-only
    images contributes its student images, one with none at all contributes rows of no image."""
    from rlsd_harness.algorithms.batch import RolloutBatch

    plain, hinted, blind = _shard(2, 1, None), _shard(3, 1, 1), _shard(1, 0, None)
    blind.vision = None
    merged = RolloutBatch.concat([plain, hinted, blind])
    tv = merged.teacher_vision
    assert tv.images_per_row.tolist() == [1, 1, 2, 2, 2, 0]
    assert torch.equal(tv.pixel_values, torch.cat([plain.vision.pixel_values, hinted.teacher_vision.pixel_values]))
    assert torch.equal(merged.select(torch.tensor([3])).teacher_vision.pixel_values, hinted.teacher_vision.pixel_values[2:4])
    assert merged.vision.images_per_row.tolist() == [1, 1, 1, 1, 1, 0]
    assert RolloutBatch.concat([plain, _shard(1, 1, None)]).teacher_vision is None
