from collections import Counter, defaultdict

import numpy as np
import pytest

from rlsd_harness.benchmarks import embedded


def test_generation_is_reproducible_and_distinct():
    a = embedded.generate("train", 50, seed=3)
    b = embedded.generate("train", 50, seed=3)
    assert [x.id for x in a] == [x.id for x in b]
    assert len({x.id for x in a}) == 50
    assert [x.id for x in embedded.generate("train", 50, seed=4)] != [x.id for x in a]


def test_splits_never_share_an_item():
    train = {x.id for s in range(3) for x in embedded.generate("train", 400, seed=s)}
    test = {x.id for x in embedded.generate("test", 400, seed=0)}
    assert train and test and not train & test


@pytest.mark.parametrize("level", embedded.LEVELS)
def test_solution_steps_are_consistent_with_the_picture(level):
    for item in embedded.generate("test", 40, seed=1, level=level):
        target = item.meta["target"]
        counted = sum(1 for _, colour, _ in item.cells if target is None or colour == target)
        assert counted == item.count
        assert item.solution.endswith(f"\\boxed{{{item.answer}}}.")
        assert f" {item.count} " in f" {item.solution} "
        assert item.images[0].size == (embedded.IMAGE_SIZE, embedded.IMAGE_SIZE)


def _pixel_count(item):
    """Read the count back from the rendered image: the centre pixel of every cell."""
    img = np.asarray(item.images[0])
    colour = embedded.COLOURS[item.meta["target"]]
    centres = [img[r * embedded.CELL + embedded.CELL // 2, c * embedded.CELL + embedded.CELL // 2]
               for r in range(embedded.GRID) for c in range(embedded.GRID)]
    return sum(tuple(p) == colour for p in centres)


def test_answer_needs_the_image():
    """A reader of the image gets every answer; the best blind guesser (the most frequent training answer
    for each exact question text) stays near the constant-guess rate."""
    train = [x for s in range(5) for x in embedded.generate("train", 1000, seed=s)]
    test = embedded.generate("test", 1000, seed=0)
    by_question = defaultdict(Counter)
    for x in train:
        by_question[x.question][x.answer] += 1
    blind = sum(by_question[x.question].most_common(1)[0][0] == x.answer for x in test if by_question[x.question]) / len(test)
    with_image = sum(_pixel_count(x) + int(x.question.split("Add ")[1].rstrip(".")) == x.answer for x in test) / len(test)
    assert with_image == 1.0
    assert blind < 0.3


def test_bad_split_and_level_name_the_valid_ones():
    with pytest.raises(ValueError, match="valid: train, validation, test"):
        embedded.generate("dev", 1, 0)
    with pytest.raises(ValueError, match="valid: 1, 2, 3"):
        embedded.generate("train", 1, 0, level=7)


def test_prompt_streams_are_the_same_in_every_process():
    """Seeds must not come from Python's per-process salted hash(): two interpreters with different hash
    salts see the same training prompts and warm-up items."""
    import os
    import subprocess
    import sys

    code = ("from rlsd_harness.data import EmbeddedData; from rlsd_harness.rollout.hf import stable_seed; "
            "from rlsd_harness.benchmarks import embedded; "
            "print([x.id for x in EmbeddedData(seed=0).prompts(3, 4)], "
            "[x.id for x in embedded.generate('train', 4, seed=stable_seed('warmup', 0, 1), level=1)])")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": salt}).stdout for salt in ("1", "2")]
    assert outs[0] == outs[1] and "[" in outs[0]
