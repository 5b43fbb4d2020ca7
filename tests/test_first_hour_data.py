"""Images Qwen-VL's processors cannot take (a 4000 x 3 strip, a one-pixel side) are refused by the data check,
one line naming the row and the image's size, before a run writes anything (they used to pass the check and
fail in step 1 with a traceback, after the run folder was written)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from rlsd_harness.data import DataError, LocalData


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    """Keep the converted json/parquet inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, "PNG")
    return buf.getvalue()


def _rows(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """One row per size, each with its own image file beside the jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, size in enumerate(sizes):
        Image.new("RGB", size, "red").save(folder / f"img{i}.png")
        rows.append({"id": f"q{i}", "question": "How many?", "images": [f"img{i}.png"], "answer": "1"})
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rows.jsonl"


def test_a_thin_strip_and_a_one_pixel_side_are_named_by_row_and_size(tmp_path):
    path = _rows(tmp_path, [(32, 32), (4000, 3), (32, 32), (1, 40), (5600, 28)])  # 200:1 is still taken
    with pytest.raises(DataError) as err:
        LocalData(str(path))
    msg = str(err.value)
    assert "2 bad row(s)" in msg, msg
    assert "rows.jsonl): images (column 'images'): img1.png: image is 4000 x 3 pixels" in msg, msg
    assert "row 1 (id 'q1', " in msg
    assert "aspect ratio 1333 is over 200" in msg
    assert "row 3 (id 'q3'" in msg and "image is 1 x 40 pixels" in msg and "under 2 pixels" in msg
    assert "row 0 " not in msg and "row 4 " not in msg


def test_encoded_images_are_checked_from_their_headers(tmp_path):
    import datasets

    feats = datasets.Features({"question": datasets.Value("string"), "image": datasets.Image(),
                               "answer": datasets.Value("string")})
    rows = [{"question": f"Q{i}", "image": {"bytes": _png((3, 4000) if i == 2 else (16, 16)), "path": None},
             "answer": "1"} for i in range(4)]
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"row 2 \(id 2, .*p.parquet\): images \(column 'image'\): image is 3 x "
                                        r"4000 pixels \(width x height\): aspect ratio 1333 is over 200"):
        LocalData(str(tmp_path / "p.parquet"))


def test_the_processor_refuses_what_the_check_refuses_and_takes_the_rest():
    """The aspect limit is the processor's own: the image processor the models use (models.build_processor)
    raises on the refused strip and takes the 200:1 image the check lets through."""
    from transformers import Qwen2VLImageProcessorPil

    from rlsd_harness.data import image_size_problem

    processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    assert image_size_problem(4000, 3) and image_size_problem(1, 40)
    with pytest.raises(ValueError, match="aspect ratio"):
        processor(images=[Image.new("RGB", (4000, 3))], return_tensors="pt")
    assert not image_size_problem(5600, 28)
    assert processor(images=[Image.new("RGB", (5600, 28))], return_tensors="pt")["pixel_values"].shape[0] > 0


def test_rlsd_train_refuses_before_writing_anything(tmp_path, capsys, monkeypatch):
    from rlsd_harness.cli import train as train_cli

    path = _rows(tmp_path / "data", [(32, 32), (4000, 3)])
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["model.warmup=null", "train.steps=1", "train.eval_every=0", "train.save_every=0",
                        "eval.budget_points=[]", "data=local", f"data.path={path}", "data.verifier=exact",
                        "train.prompts_per_step=2", "train.group_size=2", "train.micro_batch_size=4",
                        "rollout.max_new_tokens=4", "train.progress=false", f"run.dir={runs}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "row 1 (id 'q1'" in err and "4000 x 3 pixels" in err, err
    assert not runs.exists(), sorted(p.name for p in runs.rglob("*"))
