"""The embedded benchmark: a seeded synthetic visual reasoning task a ~1 M-parameter VLM learns on a CPU.

Each item is a 56x56 picture of coloured squares and circles on a 4x4 grid (one 14-px ViT patch per cell),
a question whose answer needs the picture and one or two arithmetic steps, an integer answer, and a
reference solution with visible intermediate steps ending in \\boxed{}:

  level 1  "How many shapes are there? Add 7."                      -> There are 5 shapes. 5 + 7 = 12. ...
  level 2  "How many red shapes are there? Add 7."                  -> There are 3 red shapes. 3 + 7 = 10. ...
  level 3  "How many red shapes are there? Multiply by 2, then add 7." -> ... 3 * 2 = 6. 6 + 7 = 13. ...

Level 1 is the default of the comparison (rlsd_harness/config/data/embedded.yaml): after a 143-step warm-up the 1 M model
answers 31 % of the test split greedily (47 % with the reference answer in its prompt, 7 % with a blank
image), and RL moves it within tens of steps. Level 2's colour binding is the harder variant: under the
supervised recipe (AdamW lr 1e-3, batch 64) the same model sat at 29-37 % greedy from step 150 to step 800
(measured on a 2-core CPU; every remaining error a miscount), and GRPO at this scale did not lift it in
60-100 steps. Counting all shapes, with no colour filter, is learned by step 350.

Splits. Every item's content hash decides its split, and each split's generator rejects the other splits'
items, so train, validation and test never share an item: hash % 10 in {0} is test, {5} is validation, the
other eight residues are train. Validation (hyperparameter choice) and test (reported numbers) together are
the items with hash % 5 == 0, so the train split is every item whose hash is not a multiple of 5; the test
split is the even-hash half of that share, in the generator's order.

How many distinct items a split can supply: about a tenth of the task's items each for validation and test,
2.3e10 at level 1 and 5.0e10 at level 2; but the generator's smallest strata are tiny (level 1 with one
shape: 864 items in all, about 86 per held-out split; level 2 with an empty picture: 27 in all), so a
held-out set of more than a few hundred items holds fewer of those than the training distribution would
(`distinct_supply` gives the numbers per stratum). Measured on 1,200-item sets (seed 0): level 1 test holds
80 one-shape items where the generating distribution gives 150 (validation 75); level 2 test holds no
empty picture where it gives 40 (validation 5). Those are the easiest items, so a large held-out set is
slightly harder than the prompts trained on.

Privileged context (`privileged`, data.privileged): "text" (the default) gives the teacher the reference in
words; "image_hint" gives it instead one more image, after the student's, that shows the answer in
seven-segment digits (`render_hint`), with a text that names the image and holds no answer. The student's
prompt is the same in both: `Item.images` never holds the hint; `Item.teacher_images` does.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from rlsd_harness.answers import last_boxed
from rlsd_harness.benchmarks import Metadata, options_scorer
from rlsd_harness.benchmarks._common import acc_entry
from rlsd_harness.prompts import REFERENCE_TEMPLATE

NAME = "embedded"
IMAGE_SIZE = 56
GRID = 4
CELL = IMAGE_SIZE // GRID
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (30, 160, 60)}
SHAPES = ("square", "circle")
LEVELS = (1, 2, 3)
SPLITS = ("train", "validation", "test")
PRIVILEGED = ("text", "image_hint")
HELDOUT_MODULUS = 10  # hash % 10: 0 -> test, 5 -> validation, the rest -> train
_HELDOUT = {0: "test", HELDOUT_MODULUS // 2: "validation"}

@dataclass
class Item:
    id: str
    level: int
    cells: tuple  # ((cell index, colour, shape), ...) sorted
    question: str
    answer: int
    solution: str
    count: int
    meta: dict = field(default_factory=dict)
    privileged: str = "text"  # one of PRIVILEGED: where the teacher's reference is (text or an extra image)

    @property
    def images(self) -> list[Image.Image]:
        return [render(self.cells)]

    @property
    def teacher_images(self) -> list[Image.Image]:
        """Images only the teacher sees, after the student's: the answer, under privileged="image_hint"."""
        return [render_hint(str(self.answer))] if self.privileged == "image_hint" else []


def render(cells: tuple) -> Image.Image:
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    margin = 2
    yy, xx = np.mgrid[0:CELL, 0:CELL]
    centre = (CELL - 1) / 2
    circle = (yy - centre) ** 2 + (xx - centre) ** 2 <= (CELL / 2 - margin + 0.5) ** 2
    square = np.zeros((CELL, CELL), bool)
    square[margin : CELL - margin, margin : CELL - margin] = True
    for cell, colour, shape in cells:
        r, c = divmod(cell, GRID)
        patch = img[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL]
        patch[circle if shape == "circle" else square] = COLOURS[colour]
    return Image.fromarray(img)


# Seven-segment digits (a b c d e f g: top, upper right, lower right, bottom, lower left, upper left, middle),
# drawn with numpy rather than a font, so the hint image is the same bytes on every machine and Pillow version.
_SEGMENTS = {"0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg", "6": "acdefg",
             "7": "abc", "8": "abcdefg", "9": "abcdfg", "-": "g"}
_DIGIT_W, _DIGIT_H, _STROKE = 12, 24, 3


def render_hint(text: str) -> Image.Image:
    """A 56x56 picture of `text` (digits and '-', at most 4) in black seven-segment digits on white, centred:
    the hint image of privileged="image_hint". The size of a task picture, so the processor treats it alike."""
    bad = sorted(set(text) - set(_SEGMENTS))
    if bad or not 0 < len(text) <= 4:
        raise ValueError(f"render_hint: {text!r} must be 1 to 4 characters of {''.join(_SEGMENTS)}")
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    w, h, s, gap = _DIGIT_W, _DIGIT_H, _STROKE, 2
    x0 = (IMAGE_SIZE - (len(text) * (w + gap) - gap)) // 2
    y0 = (IMAGE_SIZE - h) // 2
    mid = y0 + (h - s) // 2
    for k, ch in enumerate(text):
        x = x0 + k * (w + gap)
        boxes = {"a": (y0, y0 + s, x, x + w), "d": (y0 + h - s, y0 + h, x, x + w), "g": (mid, mid + s, x, x + w),
                 "f": (y0, mid + s, x, x + s), "b": (y0, mid + s, x + w - s, x + w),
                 "e": (mid, y0 + h, x, x + s), "c": (mid, y0 + h, x + w - s, x + w)}
        for seg in _SEGMENTS[ch]:
            top, bottom, left, right = boxes[seg]
            img[top:bottom, left:right] = 0
    return Image.fromarray(img)


def _content_key(level: int, cells: tuple, question: str) -> str:
    return hashlib.sha1(repr((level, cells, question)).encode()).hexdigest()


def split_of(item: Item) -> str:
    return _HELDOUT.get(int(item.id, 16) % HELDOUT_MODULUS, "train")


def distinct_supply(level: int) -> dict[str, int]:
    """How many distinct items the task has at `level` in all ("total") and in its smallest strata, counted
    from the generator's ranges (positions on the grid, a colour and a shape per shape, the added number).
    A held-out split holds about 1 / HELDOUT_MODULUS of each."""
    from math import comb

    shapes_kinds, adds, cells = len(COLOURS) * len(SHAPES), 9, GRID * GRID
    if level == 1:
        strata = {f"{c} shapes": adds * comb(cells, c) * shapes_kinds**c for c in range(1, 9)}
    elif level in (2, 3):
        others = (len(COLOURS) - 1) * len(SHAPES)
        muls = 2 if level == 3 else 1
        strata = {}
        for c in range(6):
            for o in range(len(COLOURS) + 2):
                n = len(COLOURS) * adds * muls * comb(cells, c) * comb(cells - c, o) * len(SHAPES)**c * others**o
                strata[f"{c} target + {o} other"] = n
    else:
        raise ValueError(f"embedded: unknown level {level!r}; valid: {', '.join(map(str, LEVELS))}")
    return {"total": sum(strata.values()), **strata}


def _draw(rng: random.Random, level: int) -> Item:
    n_colours = len(COLOURS)
    names = list(COLOURS)
    free = rng.sample(range(GRID * GRID), GRID * GRID)
    if level == 1:
        count = rng.randint(1, 8)
        cells = [(free.pop(), rng.choice(names), rng.choice(SHAPES)) for _ in range(count)]
        target, subject = None, "shapes"
    else:
        target = rng.choice(names)
        count = rng.randint(0, 5)
        others = [c for c in names if c != target]
        cells = [(free.pop(), target, rng.choice(SHAPES)) for _ in range(count)]
        cells += [(free.pop(), rng.choice(others), rng.choice(SHAPES)) for _ in range(rng.randint(0, n_colours + 1))]
        subject = f"{target} shapes"
    add = rng.randint(1, 9)
    steps = [f"There {'is' if count == 1 else 'are'} {count} {subject[:-1] if count == 1 else subject}."]
    if level == 3:
        mul = rng.randint(2, 3)
        question = f"How many {subject} are there? Multiply by {mul}, then add {add}."
        steps += [f"{count} * {mul} = {count * mul}.", f"{count * mul} + {add} = {count * mul + add}."]
        answer = count * mul + add
    else:
        question = f"How many {subject} are there? Add {add}."
        steps.append(f"{count} + {add} = {count + add}.")
        answer = count + add
    steps.append(f"The answer is \\boxed{{{answer}}}.")
    cells_t = tuple(sorted(cells))
    return Item(
        id=_content_key(level, cells_t, question)[:16],
        level=level,
        cells=cells_t,
        question=question,
        answer=answer,
        solution=" ".join(steps),
        count=count,
        meta={"target": target},
    )


def generate(split: str, n: int, seed: int, level: int = 2, privileged: str = "text") -> list[Item]:
    """`n` distinct items of one split, reproducible from (split, seed, level); `privileged` (one of PRIVILEGED)
    says where the teacher's reference is and changes neither the items nor what the student sees."""
    if split not in SPLITS:
        raise ValueError(f"embedded: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if level not in LEVELS:
        raise ValueError(f"embedded: unknown level {level!r}; valid: {', '.join(map(str, LEVELS))}")
    if privileged not in PRIVILEGED:
        raise ValueError(f"embedded: unknown privileged context {privileged!r}; valid: {', '.join(PRIVILEGED)}")
    rng = random.Random(f"{split}/{seed}/{level}")
    items, seen = [], set()
    while len(items) < n:
        item = _draw(rng, level)
        if split_of(item) == split and item.id not in seen:
            seen.add(item.id)
            item.privileged = privileged
            items.append(item)
    return items


def score(response: str, item: Item) -> dict:
    """Exact integer match of the last \\boxed{} (the training reward uses the verifier; this is for reports)."""
    parsed = last_boxed(response)
    try:
        correct = parsed is not None and int(parsed.strip()) == item.answer
    except ValueError:
        correct = False
    return {"parsed": parsed, "correct": bool(correct)}


def metrics(items: list[Item], results: list[dict]) -> dict:
    """Accuracy over `items` (one score record each)."""
    return acc_entry(sum(bool(r["correct"]) for r in results), len(items))


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Texts the project's tokenizer is trained on: questions, solutions and privileged prompts of all levels."""
    texts = []
    for level in LEVELS:
        for item in generate("train", n // len(LEVELS), seed, level):
            texts += [item.question, item.solution, REFERENCE_TEMPLATE.format(question=item.question, hint=item.answer)]
            texts.append(REFERENCE_TEMPLATE.format(question=item.question, hint=item.solution))
    return texts


METADATA = Metadata(row_id=lambda item: str(item.id), headline="accuracy", new_scorer=options_scorer(score),
                    training_task=True)
