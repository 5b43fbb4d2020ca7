"""Loading the fixtures in the official schemas, revisions, lazy images, bad rows, the registry."""

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlsd_harness import benchmarks
from rlsd_harness.benchmarks import get_benchmark
from rlsd_harness.benchmarks._common import BenchmarkError, LazyImage
from tests import benchmark_fixtures as fixtures

SPLITS = {
    "mmmu": {"validation": 6, "dev": 1},
    "mathvista": {"testmini": 6, "test": 1},
    "mathvision": {"test": 7, "testmini": 2},
    "zerobench": {"zerobench": 3, "zerobench_subquestions": 3},
    "wemath": {"testmini": 9},
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return fixtures.write_all(tmp_path_factory.mktemp("fixtures"))


@pytest.mark.parametrize("name", list(SPLITS))
def test_every_split_loads_with_lazy_images_and_a_revision(paths, name):
    module = get_benchmark(name)
    for split, count in SPLITS[name].items():
        rows = module.load(paths[name], split)
        assert len(rows) == count
        meta = rows[0]["_meta"]
        assert (meta["benchmark"], meta["split"], meta["revision"]) == (name, split, fixtures.REVISION)
        text, images = module.prompt(rows[0])
        assert isinstance(text, str) and text and images and all(img.size == (8, 6) for img in images)


def test_images_stay_encoded_until_asked(paths):
    rows = get_benchmark("mathvista").load(paths["mathvista"], "testmini")
    cell = rows[0]["decoded_image"]
    assert isinstance(cell, LazyImage) and cell.data.startswith(b"\x89PNG")
    zb = get_benchmark("zerobench").load(paths["zerobench"], "zerobench")
    assert all(isinstance(c, LazyImage) for c in zb[1]["question_images_decoded"])


def test_split_names_match_exactly(paths):
    # "test" must not pick up the "testmini-*" file beside it.
    rows = get_benchmark("mathvista").load(paths["mathvista"], "test")
    assert [r["pid"] for r in rows] == ["1001"]
    assert rows[0]["_meta"]["files"] == ["data/test-00000-of-00001-4567ef01.parquet"]


def test_official_schema_types(paths):
    mv = get_benchmark("mathvista").load(paths["mathvista"], "testmini")
    by_pid = {r["pid"]: r for r in mv}
    assert by_pid["479"]["precision"] == 2.0 and by_pid["5"]["precision"] is None
    assert by_pid["5"]["choices"] == ["97", "102", "107", "122"] and by_pid["2"]["choices"] is None
    assert by_pid["5"]["metadata"]["skills"] == ["geometry reasoning", "algebraic reasoning"]
    mmmu = get_benchmark("mmmu").load(paths["mmmu"], "validation")
    assert all(isinstance(r["options"], str) for r in mmmu)
    assert all(r["image_7"] is None for r in mmmu)


def test_revision_argument_and_fingerprint(tmp_path):
    root = fixtures.write_zerobench(tmp_path)
    zb = get_benchmark("zerobench")
    assert zb.load(root, "zerobench", revision="abc123")[0]["_meta"]["revision"] == "abc123"
    (root / "REVISION").unlink()
    rev = zb.load(root, "zerobench")[0]["_meta"]["revision"]
    assert rev.startswith("local-") and rev == zb.load(root, "zerobench")[0]["_meta"]["revision"]


def test_unknown_split_and_missing_path(paths):
    with pytest.raises(BenchmarkError, match=r"mathvision: split 'val', row None: unknown split; valid: test, testmini"):
        get_benchmark("mathvision").load(paths["mathvision"], "val")
    with pytest.raises(BenchmarkError, match="wemath: split 'testmini'.*does not exist"):
        get_benchmark("wemath").load("/no/such/folder", "testmini")
    with pytest.raises(BenchmarkError, match="no parquet/arrow/jsonl file"):
        get_benchmark("mmmu").load(paths["mmmu"], "test")


def test_hub_id_without_network_fails_fast_and_clearly(monkeypatch):
    import rlsd_harness.benchmarks._common as common

    monkeypatch.setattr(common, "_hub_unreachable", lambda: "cannot connect to the hub")
    with pytest.raises(BenchmarkError, match=r"zerobench: split 'zerobench'.*'jonathan-roberts1/zerobench'.*local folder"):
        get_benchmark("zerobench").load("jonathan-roberts1/zerobench", "zerobench")


def _rewrite(path, column, transform):
    table = pq.read_table(path)
    values = [transform(v) for v in table.column(column).to_pylist()]
    idx = table.schema.get_field_index(column)
    table = table.set_column(idx, table.schema.field(idx), pa.array(values, type=table.schema.field(idx).type))
    pq.write_table(table, path)


def test_bad_rows_name_benchmark_split_and_row(tmp_path):
    root = fixtures.write_mathvista(tmp_path / "a")
    data = root / "data" / "testmini-00000-of-00001-0123abcd.parquet"
    _rewrite(data, "answer", lambda v: None if v == "1000" else v)
    with pytest.raises(BenchmarkError, match=r"mathvista: split 'testmini', row '2': missing field 'answer'"):
        get_benchmark("mathvista").load(root, "testmini")

    root = fixtures.write_mathvision(tmp_path / "b")
    data = root / "data" / "test-00000-of-00001.parquet"
    _rewrite(data, "decoded_image", lambda v: {"bytes": b"not an image", "path": v["path"]})
    rows = get_benchmark("mathvision").load(root, "test")  # lazy: loading does not decode
    with pytest.raises(BenchmarkError, match=r"mathvision: split 'test', row '15': undecodable image"):
        get_benchmark("mathvision").prompt(rows[0])

    root = fixtures.write_mmmu(tmp_path / "c")
    data = root / "Math" / "validation-00000-of-00001.parquet"
    _rewrite(data, "options", lambda v: "['unclosed")
    with pytest.raises(BenchmarkError, match=r"mmmu: split 'validation', row 'validation_Math_15': unreadable options"):
        get_benchmark("mmmu").load(root, "validation")


def test_missing_image_file_for_a_path_cell(tmp_path):
    root = fixtures.write_wemath(tmp_path)
    shutil.rmtree(root / "images")
    # At load, before any generation, naming the row and the file it looked for.
    with pytest.raises(BenchmarkError, match=r"wemath: split 'testmini', row '2steps_1': image 'image_path' "
                       r"missing: no file at .*images/2steps_1-1\.png.*\(8 more row\(s\) too\)"):
        get_benchmark("wemath").load(root, "testmini")


def test_registry():
    assert list(benchmarks.EVAL_BENCHMARKS) == ["mmmu", "mathvista", "mathvision", "zerobench", "wemath"]
    for name, module in benchmarks.EVAL_BENCHMARKS.items():
        assert module.NAME == name
        for attr in ("load", "prompt", "score", "metrics"):
            assert callable(getattr(module, attr))
    with pytest.raises(KeyError, match="valid: mmmu, mathvista, mathvision, zerobench, wemath"):
        get_benchmark("mmmu_pro")
    assert "nope" not in benchmarks.EVAL_BENCHMARKS


def test_package_import_is_light():
    code = "import sys, rlsd_harness.benchmarks; print(sorted(m for m in ('torch', 'datasets', 'sympy', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
