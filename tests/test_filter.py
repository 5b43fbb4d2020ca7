"""rlsd-filter (cli/filter.py, evaluation/difficulty.py): k samples per item with the training's engine and
verifier, resumable records, the keep rule, the filtered set written in the layout it came in, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rlsd_harness.cli import filter as filter_cli
from rlsd_harness.data import LocalData
from rlsd_harness.evaluation import difficulty
from rlsd_harness.evaluation.difficulty import KeepRule, read_records
from rlsd_harness.io import drop_cut_last_line

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "rlsd_harness" / "bases" / "qwen2_5_vl_tiny_warmup200_level1"
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-benchmarks"


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    """Keep the converted json and any hub lookup inside the test's folder."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


def test_keep_rule_parses_and_names_what_is_valid():
    rule = KeepRule.parse("pass_rate<0.5 and passes>=1")
    assert rule({"pass_rate": 0.25, "passes": 1, "fails": 3})
    assert not rule({"pass_rate": 0.0, "passes": 0, "fails": 4})
    assert KeepRule.parse(difficulty.DEFAULT_RULE)({"pass_rate": 0.0, "passes": 0, "fails": 4})
    for bad in ("accuracy<1", "pass_rate<<1", "pass_rate<=x", "pass_rate<=0 or passes>1"):
        with pytest.raises(ValueError, match="valid fields pass_rate, passes, fails"):
            KeepRule.parse(bad)


def test_records_survive_a_kill_mid_line(tmp_path):
    path = tmp_path / "records.jsonl"
    good = [json.dumps(difficulty.item_record(i, f"q{i}", [1.0, 0.0], ["a", "b"])) for i in range(2)]
    path.write_text(good[0] + "\n" + good[1] + "\n" + good[0][:17])
    records = read_records(path)
    assert sorted(records) == [0, 1] and records[1]["passes"] == 1 and records[1]["pass_rate"] == 0.5
    assert path.read_text().endswith(good[0][:17])  # reading never writes
    drop_cut_last_line(path)  # what sample_items does before it appends
    assert path.read_text() == good[0] + "\n" + good[1] + "\n"  # the cut line is gone; appends start clean


def _dataset(folder: Path, n: int) -> Path:
    (folder / "img").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i % 256, 90, 200)).save(folder / "img" / f"{i}.png")
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"How many dots? ({i})", "images": [f"img/{i}.png"],
                                        "answer": str(i), "extra": {"kept": "verbatim"}}) + "\n" for i in range(n)))
    return path


def _run(capsys, *args: str) -> str:
    try:
        filter_cli.main([f"checkpoint={BASE}", "rollout.max_new_tokens=8", "progress=false", *args])
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def test_filter_on_a_local_file_resumes_and_writes_its_layout(tmp_path, capsys, monkeypatch):
    src = _dataset(tmp_path / "data", 5)
    out = tmp_path / "out"
    sampled: list[list[int]] = []
    original = difficulty.sample_items

    def spy(engine, items, todo, *rest, **kw):
        sampled.append(list(todo))
        return original(engine, items, todo, *rest, **kw)

    monkeypatch.setattr(difficulty, "sample_items", spy)
    common = ["data=local", f"data.path={src}", "data.verifier=parity", "k=3", f"out={out}", "batch=2"]
    _run(capsys, *common, "limit=3")
    said = _run(capsys, *common)  # the two items not sampled yet, and only those
    assert sampled == [[0, 1, 2], [3, 4]]
    records = read_records(out / "records.jsonl")
    assert sorted(records) == [0, 1, 2, 3, 4] and all(r["k"] == 3 and len(r["responses"]) == 3 for r in records.values())
    kept = [i for i in range(5) if records[i]["pass_rate"] <= 0]
    source_lines = src.read_text().splitlines()
    assert (out / "train.jsonl").read_text().splitlines() == [source_lines[i] for i in kept]  # rows verbatim
    assert all((out / "img" / f"{i}.png").is_file() for i in kept)
    assert not any((out / "img" / f"{i}.png").exists() for i in range(5) if i not in kept)
    rep = json.loads((out / "report.json").read_text())
    assert rep["items"] == 5 and rep["kept"] == len(kept) and sum(rep["passes_histogram"].values()) == 5
    assert rep["passes_histogram"] == {str(p): sum(r["passes"] == p for r in records.values()) for p in range(4)}
    assert f"kept {len(kept)} of 5 items" in said
    # another rule re-selects from the records without sampling
    _run(capsys, *common, "keep_if=passes>=1")
    assert len(sampled) == 2
    kept_again = [i for i in range(5) if records[i]["passes"] >= 1]
    assert (out / "train.jsonl").read_text().splitlines() == [source_lines[i] for i in kept_again]
    if kept_again:  # the written set is a data=local dataset as it stands
        assert [ex.id for ex in (LocalData(str(out / "train.jsonl"))[i] for i in range(len(kept_again)))] == \
            [f"q{i}" for i in kept_again]
    # other sampling settings would mix records: refused, naming what changed
    with pytest.raises(SystemExit) as e:
        filter_cli.main([f"checkpoint={BASE}", "rollout.max_new_tokens=8", "progress=false", *common[:-2], "k=4",
                         f"out={out}"])
    assert e.value.code == 2 and "k 3 -> 4" in capsys.readouterr().err


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, capsys):
    src = _dataset(tmp_path / "data", 2)
    for args, needle in ((["keep_if=accuracy<1"], "valid fields"), (["k=0"], "k='0'"),
                         (["data.path=" + str(tmp_path / "missing.jsonl")], "does not exist")):
        with pytest.raises(SystemExit) as e:
            filter_cli.main(["data=local", f"data.path={src}", f"out={tmp_path / 'out'}", *args])
        assert e.value.code == 2 and needle in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not REAL.is_dir(), reason=f"no real benchmark files: {REAL} does not exist")
@pytest.mark.parametrize("schema, rel, image_root, rows_of", [
    # MATH-V's `image` starts at the folder above data/ (images/ beside data/): data.image_root says so
    ("mathvision", "mathvision/data/testmini.jsonl", "mathvision",
     lambda p: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]),
    ("wemath", "wemath/testmini.json", None, lambda p: json.loads(p.read_text())),
])
def test_filter_keeps_a_real_benchmark_files_layout(tmp_path, capsys, schema, rel, image_root, rows_of):
    src, out = REAL / rel, tmp_path / "out"
    root = [f"data.image_root={REAL / image_root}"] if image_root else []
    _run(capsys, "data=local", f"data.path={src}", f"data.schema={schema}", *root, "k=2", "limit=3", f"out={out}",
         "keep_if=pass_rate<=1")  # keep all three: the layout is what is checked
    written = out / src.relative_to(REAL / image_root) if image_root else out / src.name
    assert rows_of(written) == rows_of(src)[:3]
    image_key = "image" if schema == "mathvision" else "image_path"
    for row in rows_of(written):
        assert ((out if image_root else written.parent) / row[image_key]).is_file()
    # the filtered file opens as a data=local dataset, the same way the source did
    data = LocalData(str(written), schema=schema, image_root=str(out) if image_root else None)
    assert len(data) == 3 and data[0].images
