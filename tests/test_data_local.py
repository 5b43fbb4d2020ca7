"""data=local: every supported source, the benchmarks' row schemas, epoch order, and bad input named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from rlsd_harness.data import DataError, LocalData

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "real-benchmarks"


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    """Keep the converted json/parquet and any hub lookup inside the test's folder."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


def _png(colour: str = "red", size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows_with_images(folder: Path, n: int) -> Path:
    """n rows in MMFineReason's shape, each with one image file beside the jsonl."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "blue").save(folder / "img" / "a.png")
    return _write_jsonl(folder / "rows.jsonl", [
        {"id": f"q{i}", "question": f"<image>How many? ({i})", "images": ["img/a.png"], "answer": str(i)}
        for i in range(n)])


# ----------------------------------------------------------------------------- epoch order


def test_an_epoch_is_a_permutation_and_the_next_one_reshuffles(tmp_path):
    data = LocalData(str(_rows_with_images(tmp_path, 10)), seed=3)
    stream = [ex.id for step in range(1, 11) for ex in data.prompts(step, 3)]  # 30 prompts = 3 epochs
    epochs = [stream[k:k + 10] for k in (0, 10, 20)]
    for e in epochs:
        assert sorted(e) == sorted(f"q{i}" for i in range(10)), e
    assert epochs[0] != epochs[1] != epochs[2]


def test_the_stream_resumes_at_any_position_and_is_the_same_for_every_instance(tmp_path):
    path = str(_rows_with_images(tmp_path, 10))
    long_lived = LocalData(path, seed=5)
    seen = [[ex.id for ex in long_lived.prompts(step, 3)] for step in range(1, 9)]
    # A resumed run (or another rank) opens the data afresh and starts at an arbitrary step.
    for step in (8, 4, 1, 6):
        assert [ex.id for ex in LocalData(path, seed=5).prompts(step, 3)] == seen[step - 1]
    # Step 4 straddles the epoch boundary: prompts 9, 10 and 11 of the global stream.
    fresh = LocalData(path, seed=5)
    assert [ex.id for ex in fresh.at(9, 3)] == seen[3]
    assert [fresh.at(k, 1)[0].id for k in range(24)] == [i for s in seen for i in s]
    # The trainer gives rank r of W the slice [r::W] of the step's prompts: every rank count covers the
    # same prompts, each once.
    for world in (1, 2, 3):
        per_rank = [LocalData(path, seed=5).prompts(5, 6)[r::world] for r in range(world)]
        assert sorted(ex.id for part in per_rank for ex in part) == sorted(ex.id for ex in long_lived.prompts(5, 6))
    assert [ex.id for ex in LocalData(path, seed=6).prompts(1, 10)] != [i for s in seen[:4] for i in s][:10]


# ----------------------------------------------------------------------------- sources


def _hf_rows(n: int = 4):
    import datasets

    feats = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                               "images": datasets.List(datasets.Image()), "answer": datasets.Value("string"),
                               "solution": datasets.Value("string")})
    rows = {"id": [f"r{i}" for i in range(n)], "question": [f"Q{i}" for i in range(n)],
            "images": [[{"bytes": _png("red"), "path": None}] * (1 + i % 3) for i in range(n)],
            "answer": ["\\frac{1}{2}", "3", "x^2", "7"][:n] + [str(i) for i in range(4, n)],
            "solution": [None, "Because 3.", None, "Seven."][:n] + [None] * max(0, n - 4)}
    return datasets.Dataset.from_dict(rows, features=feats)


def _check_hf_rows(data: LocalData) -> None:
    assert len(data) == 4
    ex = [data[i] for i in range(4)]
    assert [len(e.images) for e in ex] == [1, 2, 3, 1]
    assert all(isinstance(im, Image.Image) and im.getpixel((0, 0)) == (255, 0, 0) for e in ex for im in e.images)
    assert [e.answer for e in ex] == ["\\frac{1}{2}", "3", "x^2", "7"]
    assert [e.solution for e in ex] == ["\\frac{1}{2}", "Because 3.", "x^2", "Seven."]  # no solution: the answer


def test_parquet_arrow_and_save_to_disk_with_several_encoded_images_per_row(tmp_path):
    ds = _hf_rows()
    ds.to_parquet(str(tmp_path / "train.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for source in (tmp_path / "train.parquet", tmp_path / "saved", arrow, ds):
        _check_hf_rows(LocalData(source if not isinstance(source, Path) else str(source)))


def test_a_saved_dataset_dict_takes_the_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": _hf_rows(), "test": _hf_rows(2)}).save_to_disk(str(tmp_path / "dd"))
    data = LocalData(str(tmp_path / "dd"), test_path=str(tmp_path / "dd"))
    assert len(data) == 4 and len(data.test_set()) == 2 and len(data.test_set(1)) == 1
    with pytest.raises(DataError, match="no split 'dev'; valid: train, test"):
        LocalData(str(tmp_path / "dd"), split="dev")


def test_a_folder_of_split_shards_reads_only_the_split_and_keeps_file_order(tmp_path):
    ds = _hf_rows()
    (tmp_path / "data").mkdir()
    ds.select([0, 1]).to_parquet(str(tmp_path / "data" / "train-00000-of-00002.parquet"))
    ds.select([2, 3]).to_parquet(str(tmp_path / "data" / "train-00001-of-00002.parquet"))
    ds.select([0]).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    data = LocalData(str(tmp_path), test_path=str(tmp_path))
    _check_hf_rows(data)
    assert [e.id for e in data.test_set()] == ["r0"]
    assert data[3].meta["source"].endswith("train-00001-of-00002.parquet")


def _text_rows(tag: str, n: int) -> list[dict]:
    return [{"id": f"{tag}{i}", "question": f"What is {i}?", "answer": str(i)} for i in range(n)]


def test_a_folder_is_split_by_the_benchmarks_rule(tmp_path):
    """A folder's files of split S are S.<ext>, S's shards S-NNNNN-of-NNNNN*.<ext> and the files directly inside a
    folder named S (local_files.split_files, the benchmarks' rule): exact names, so ZeroBench's
    zerobench_subquestions file is not split zerobench. Before, data=local took any file whose name began with
    S and then -, _ or . (5 rows here, the subquestions too), and a train_extra file as train."""
    zb = tmp_path / "zb"
    zb.mkdir()
    _write_jsonl(zb / "zerobench.jsonl", _text_rows("main", 2))
    _write_jsonl(zb / "zerobench_subquestions.jsonl", _text_rows("sub", 3))
    data = LocalData(str(zb), split="zerobench", require_image=False, test_path=str(zb),
                     test_split="zerobench_subquestions")
    assert sorted(e.id for e in data.at(0, len(data))) == ["main0", "main1"]
    assert [e.id for e in data.test_set()] == ["sub0", "sub1", "sub2"]
    mixed = tmp_path / "mixed"
    (mixed / "train").mkdir(parents=True)
    _write_jsonl(mixed / "train.jsonl", _text_rows("a", 1))
    _write_jsonl(mixed / "train_extra.jsonl", _text_rows("x", 1))  # not a train file: named train_extra
    _write_jsonl(mixed / "train" / "part.jsonl", _text_rows("b", 1))  # in a folder named train: a train file
    assert sorted(e.id for e in LocalData(str(mixed), require_image=False).at(0, 2)) == ["a0", "b0"]


def test_a_folder_without_a_file_of_the_split_is_refused_not_read_whole(tmp_path):
    """Before, a folder with no file of data.split was read whole: a folder of test files trained on them."""
    _write_jsonl(tmp_path / "test.jsonl", _text_rows("t", 2))
    _write_jsonl(tmp_path / "testmini.jsonl", _text_rows("m", 1))
    with pytest.raises(DataError, match=r"data.path: .* has no file of split 'train' \(data.split\): a split's files "
                                        r"are train.<ext>.*the folder holds test.jsonl, testmini.jsonl"):
        LocalData(str(tmp_path), require_image=False)
    with pytest.raises(DataError, match=r"data.test_path: .* has no file of split 'validation' \(data.test_split\)"):
        LocalData(str(tmp_path), split="test", require_image=False, test_path=str(tmp_path), test_split="validation")
    assert len(LocalData(str(tmp_path), split="testmini", require_image=False)) == 1
    (tmp_path / "train").mkdir()
    _write_jsonl(tmp_path / "train" / "0000.jsonl", _text_rows("r", 3))
    assert len(LocalData(str(tmp_path), require_image=False)) == 3  # the files of the folder named train
    with pytest.raises(DataError, match=r"data.path: .*/train is the folder of split 'train' of .*: point data.path at"):
        LocalData(str(tmp_path / "train"), require_image=False)


def test_a_hub_id_is_read_from_the_local_cache_only(tmp_path):
    import huggingface_hub.constants

    snap = Path(huggingface_hub.constants.HF_HUB_CACHE) / "datasets--someone--mmfr" / "snapshots" / ("a" * 40)
    (snap / "data").mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    _hf_rows().to_parquet(str(snap / "data" / "train-00000-of-00001.parquet"))
    _check_hf_rows(LocalData("someone/mmfr"))
    with pytest.raises(DataError, match="not in the local Hugging Face caches.*nothing is downloaded"):
        LocalData("someone/absent")


def test_a_hub_id_falls_back_to_the_datasets_cache_of_an_earlier_load(tmp_path):
    import datasets

    shard = Path(datasets.config.HF_DATASETS_CACHE) / "someone___mmfr" / "default" / "0.0.0" / "abc123"
    shard.mkdir(parents=True)
    _hf_rows().save_to_disk(str(tmp_path / "saved"))
    next((tmp_path / "saved").glob("*.arrow")).rename(shard / "mmfr-train.arrow")
    _check_hf_rows(LocalData("someone/mmfr"))


def test_jsonl_json_list_and_json_mapping_with_relative_image_paths(tmp_path):
    (tmp_path / "sub" / "img").mkdir(parents=True)
    Image.new("RGB", (5, 5), "green").save(tmp_path / "sub" / "img" / "g.png")
    rows = [{"id": "a", "problem": "Find x.<image>", "images": ["img/g.png", "img/g.png"], "answer": "\\sqrt{2}"},
            {"id": "b", "problem": "Find y.", "images": ["img/g.png"], "answer": 4, "solution": "y = 4"}]
    _write_jsonl(tmp_path / "sub" / "rows.jsonl", rows)
    (tmp_path / "sub" / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "sub" / "mapping.json").write_text(json.dumps({r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows}))
    for name in ("rows.jsonl", "rows.json", "mapping.json"):
        data = LocalData(str(tmp_path / "sub" / name))
        a, b = data[0], data[1]
        assert (a.id, a.question, a.answer, len(a.images)) == ("a", "Find x.", "\\sqrt{2}", 2), name
        assert (b.id, b.answer, b.solution) == ("b", "4", "y = 4"), name
        assert a.images[0].size == (5, 5)


# ----------------------------------------------------------------------------- the benchmarks' row schemas


def _bench_rows(tmp_path: Path, schema: str) -> tuple[Path, dict]:
    """One row in the benchmark's own shape, and what the training example must be."""
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (6, 6), "white").save(tmp_path / "images" / "1.png")
    cell = {"bytes": _png(), "path": None}
    if schema == "mmmu":
        import datasets

        feats = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                   "options": datasets.Value("string"), "answer": datasets.Value("string"),
                                   **{f"image_{k}": datasets.Image() for k in range(1, 8)}})
        row = {"id": "validation_Art_1", "question": "<image 1> vs <image 2>: which is older?",
               "options": "['the left', 'the right']", "answer": "A",
               **{f"image_{k}": (cell if k <= 2 else None) for k in range(1, 8)}}
        datasets.Dataset.from_list([row], features=feats).to_parquet(str(tmp_path / "mmmu.parquet"))
        return tmp_path / "mmmu.parquet", {"id": "validation_Art_1", "answer": "A", "n_images": 2,
                                           "question": "vs : which is older?\nChoices:\nA. the left\nB. the right"}
    if schema == "mathvista":  # the repository's testmini.json: {pid: row}, no `query`
        path = tmp_path / "testmini.json"
        path.write_text(json.dumps({"7": {"question": "Which is larger?", "choices": ["3", "5"], "answer": "5",
                                          "image": "images/1.png"}}))
        return path, {"id": "7", "answer": "5", "n_images": 1, "question": "Which is larger?\nChoices:\nA. 3\nB. 5"}
    if schema == "mathvision":  # the repository's testmini.jsonl, `image` relative to it
        path = _write_jsonl(tmp_path / "testmini.jsonl", [{"id": "4", "question": "Which one?\n<image1>",
                                                           "options": ["A", "B", "C"], "answer": "B", "solution": None,
                                                           "image": "images/1.png"}])
        return path, {"id": "4", "answer": "B", "n_images": 1, "question": "Which one?\nChoices: A, B, C"}
    if schema == "zerobench":
        import datasets

        feats = datasets.Features({"question_id": datasets.Value("string"), "question_text": datasets.Value("string"),
                                   "question_images_decoded": datasets.List(datasets.Image()),
                                   "question_answer": datasets.Value("string")})
        datasets.Dataset.from_list([{"question_id": "z1", "question_text": "Count the dots.",
                                     "question_images_decoded": [cell, cell, cell], "question_answer": "12"}],
                                   features=feats).to_parquet(str(tmp_path / "zb.parquet"))
        return tmp_path / "zb.parquet", {"id": "z1", "answer": "12", "n_images": 3, "question": "Count the dots."}
    assert schema == "wemath"
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps([{"ID": "2steps_1", "question": "OA = ( ) m", "option": "A. 300;B. 400",
                                 "answer": "A", "image_path": "images/1.png"}]))
    return path, {"id": "2steps_1", "answer": "A", "n_images": 1, "question": "OA = ( ) m\nChoices: A. 300;B. 400"}


@pytest.mark.parametrize("schema", ["mmmu", "mathvista", "mathvision", "zerobench", "wemath"])
def test_each_benchmarks_rows_are_a_training_set(tmp_path, schema):
    path, want = _bench_rows(tmp_path, schema)
    ex = LocalData(str(path), schema=schema)[0]
    assert (ex.id, ex.question, ex.answer, len(ex.images)) == (want["id"], want["question"], want["answer"], want["n_images"])
    assert all(isinstance(im, Image.Image) for im in ex.images)


def test_field_overrides_pick_other_columns_and_must_exist(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"q": "What?", "final": "2", "pic": "a.png", "answer": "wrong"}])
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    ex = LocalData(str(path), fields={"question": "q", "answer": "final", "images": "pic"})[0]
    assert (ex.question, ex.answer, len(ex.images)) == ("What?", "2", 1)
    with pytest.raises(DataError, match=r"no column for solution \(column 'worked'\).*columns are q, final, pic, answer"):
        LocalData(str(path), fields={"question": "q", "images": "pic", "solution": "worked"})
    with pytest.raises(DataError, match="unknown data.schema 'mmfr'; valid: mmfinereason, mmmu"):
        LocalData(str(path), schema="mmfr")


@pytest.mark.real_data
@pytest.mark.skipif(not (REAL / "wemath" / "testmini.json").is_file(),
                    reason=f"no real benchmark files: {REAL / 'wemath' / 'testmini.json'} does not exist")
def test_real_wemath_testmini_is_a_training_set():
    data = LocalData(str(REAL / "wemath" / "testmini.json"), schema="wemath")
    assert len(data) == 1740
    ex = data.prompts(1, 4)
    assert all(len(e.images) == 1 and e.images[0].size[0] > 0 and e.answer for e in ex)


@pytest.mark.real_data
@pytest.mark.skipif(not (REAL / "mathvision" / "data" / "testmini.jsonl").is_file(),
                    reason=f"no real benchmark files: {REAL / 'mathvision' / 'data' / 'testmini.jsonl'} does not exist")
def test_real_mathvision_testmini_is_a_training_set():
    # The repository's `image` paths start at its root, the parent of data/.
    data = LocalData(str(REAL / "mathvision" / "data" / "testmini.jsonl"), schema="mathvision",
                     image_root=str(REAL / "mathvision"))
    assert len(data) == 304 and sorted(data.order(0)) == list(range(304))
    ex = data.prompts(1, 8)
    assert all(len(e.images) == 1 and e.images[0].size[0] > 0 and e.answer for e in ex)


# ----------------------------------------------------------------------------- bad input, named


@pytest.mark.parametrize("name,content,message", [
    ("rows.jsonl", b"", "rows.jsonl is empty"),
    ("rows.json", b"", "rows.json is empty"),
    ("rows.parquet", b"", "rows.parquet is empty"),
    ("rows.jsonl", b'{"question": "a", "answer": "1"}\n{"question": "b", "answer": \n', "rows.jsonl line 2 is not valid JSON"),
    ("rows.jsonl", '{"question": "caf\u00e9", "answer": "1"}\n'.encode("latin-1"), "rows.jsonl is not UTF-8 text \\(line 1"),
    ("rows.jsonl", b'["question", "answer"]\n', "rows.jsonl line 1 is a JSON list, not an object"),
    ("rows.json", b'[{"question": "a", "answer": "1"},', "rows.json is not valid JSON"),
    ("rows.parquet", b"PAR1 not really", "rows.parquet is not a readable parquet file"),
    ("rows.arrow", b"not arrow", "rows.arrow is not an Arrow IPC stream file"),
    ("rows.csv", b"question,answer\n", "rows.csv has an unsupported suffix; valid: .jsonl, .json, .parquet, .arrow"),
])
def test_unreadable_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        LocalData(str(tmp_path / name), require_image=False)


def test_every_bad_row_is_named_with_its_index_and_field(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    good = {"question": "Q", "images": ["ok.png"], "answer": "1"}
    rows = [dict(good, id=f"g{i}") for i in range(6)]
    rows[1]["answer"] = ["1", "2"]
    rows[2]["answer"] = None
    rows[3]["images"] = ["missing.png"]
    rows[4]["images"] = []
    rows[5]["question"] = "<image>"
    path = _write_jsonl(tmp_path / "rows.jsonl", rows + [dict(good, id="g6")])
    with pytest.raises(DataError) as err:
        LocalData(str(path))
    msg = str(err.value)
    assert msg.startswith("data.path: 5 bad row(s)")
    assert "row 1 (id 'g1', " in msg and "answer (column 'answer') is a list ['1', '2']" in msg
    assert "row 2 (id 'g2', " in msg and "answer (column 'answer') is missing or empty" in msg
    assert "row 3 (id 'g3', " in msg and f"image file {tmp_path / 'missing.png'} does not exist" in msg
    assert "row 4 (id 'g4', " in msg and "has no image (data.require_image=true)" in msg
    assert "row 5 (id 'g5', " in msg and "question (column 'question') is missing or empty" in msg
    assert "row 0 " not in msg and "row 6 " not in msg


def test_undecodable_image_bytes_are_named_when_the_row_is_read(tmp_path):
    import datasets

    feats = datasets.Features({"question": datasets.Value("string"), "image": datasets.Image(),
                               "answer": datasets.Value("string")})
    rows = [{"question": f"Q{i}", "image": {"bytes": _png() if i != 2 else b"\x89PNG broken", "path": None},
             "answer": "1"} for i in range(4)]
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(tmp_path / "p.parquet"))
    data = LocalData(str(tmp_path / "p.parquet"))  # encoded bytes are not decoded up front: that is the point
    assert len(data[1].images) == 1
    with pytest.raises(DataError, match=r"row 2 \(id '2', .*p.parquet\): images \(column 'image'\) cannot be decoded"):
        data[2]


def test_test_path_problems_name_data_test_path(tmp_path):
    path = str(_rows_with_images(tmp_path, 3))
    with pytest.raises(DataError, match=r"^data.test_path: .*nope.jsonl does not exist"):
        LocalData(path, test_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="data.test_path is not set"):
        LocalData(path).test_set(2)


def test_a_bad_data_file_stops_the_run_before_its_folder_exists(tmp_path, tiny_dir):
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.run import run
    from tests.conftest import small_overrides

    bad = _write_jsonl(tmp_path / "rows.jsonl", [{"question": "Q", "images": [], "answer": ["1", "2"]}])
    cfg = compose_config(small_overrides(tmp_path / "runs", "data=local", f"data.path={bad}",
                                         "data.verifier=parity", "run.name=bad"))
    with pytest.raises(DataError, match="row 0 .*is a list"):
        run(cfg, log=lambda m: None)
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_run_trains_on_local_rows(tmp_path, tiny_dir):
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.run import run
    from tests.conftest import small_overrides

    path = _rows_with_images(tmp_path, 6)
    cfg = compose_config(small_overrides(tmp_path / "runs", "data=local", f"data.path={path}", "data.verifier=parity",
                                         "run.name=local", "train.steps=2", "train.prompts_per_step=4",
                                         "eval.budget_points=[]"))  # no held-out rows: no budget evaluations
    run_dir = run(cfg, log=lambda m: None)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if m["rollout_step"] > 0]  # the step-0 line is the untrained policy's record
    assert [m["rollout_step"] for m in steps] == [1, 2] and all(0 <= m["rollout/reward"] <= 1 for m in steps)
