"""Slips a user makes with `rlsd-evaluate`, each answered by one line with its fix, and all of them at once
(a user once needed four runs to learn four fixes): missing sources, a split the folder lacks, images the
folder lacks, unknown names and variants, unreadable weights; and `--help` names the keys a real run sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlsd_harness.cli import evaluate
from rlsd_harness.evaluation.runner import read_records
from tests import benchmark_fixtures as fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return fixtures.write_all(tmp_path_factory.mktemp("slip-fixtures"))


@pytest.fixture(scope="module")
def mathvision_testmini_only(sources, tmp_path_factory) -> Path:
    """The official MATH-V repository's layout ships testmini only: no file for the default split `test`."""
    root = tmp_path_factory.mktemp("mathvision-mini") / "mathvision"
    shutil.copytree(sources["mathvision"], root)
    for f in (root / "data").glob("test-*"):
        f.unlink()
    return root


@pytest.fixture(scope="module")
def mathvista_without_images(tmp_path_factory) -> Path:
    """The official MathVista repository's `data/testmini.json` ({pid: row}): its images are not in the repository."""
    root = tmp_path_factory.mktemp("mathvista-official") / "mathvista"
    (root / "data").mkdir(parents=True)
    rows = {r["pid"]: dict(r, image=f"images/{r['pid']}.jpg") for r in fixtures.MATHVISTA_ROWS}
    (root / "data" / "testmini.json").write_text(json.dumps(rows))
    return root


def evaluate_err(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(list(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    return err


def test_every_problem_is_reported_at_once_with_its_fix(tiny_dir, sources, mathvision_testmini_only,
                                                        mathvista_without_images, tmp_path, capsys):
    out = tmp_path / "out"
    err = evaluate_err(
        capsys, f"checkpoint={tiny_dir}", f"out={out}", "benchmarks=[mmmu,mathvista,mathvision,zerobench:fancy,mmlu]",
        f"eval.sources.mathvista={mathvista_without_images}", f"eval.sources.mathvision={mathvision_testmini_only}",
        f"eval.sources.zerobench={sources['zerobench']}",
    )
    lines = err.strip().splitlines()
    assert lines[0] == "error: 5 problems; fix them all, then rerun:", err
    problems = [ln.strip() for ln in lines[1:]]
    assert len(problems) == 5, err
    expected = [
        "mmmu: no data source; pass eval.sources.mmmu=",
        "mathvista: split 'testmini': image 'decoded_image' missing: no file at",
        "mathvision: split 'test', row None: no parquet/arrow/jsonl file for this split under",
        "zerobench: unknown prompt variant 'fancy'; valid: official, vlmevalkit, lmms_eval",
        "unknown benchmark 'mmlu'; valid: mmmu, mathvista, mathvision, zerobench, wemath, embedded",
    ]
    for line, start in zip(problems, expected):
        assert line.startswith(start), (line, start)
    # each with its fix, in the command line's own spelling
    assert problems[1].endswith("pass allow_missing_images=[mathvista] to rlsd-evaluate to prompt those rows "
                                "without their image (recorded in config.json)")
    assert "(5 more row(s) too)" in problems[1]
    assert problems[2].endswith("(it has 'testmini'); pass eval.splits.mathvision=testmini")
    assert problems[3].endswith("set eval.variants.zerobench=<variant> or name it as zerobench:<variant>")
    assert not out.exists()  # nothing written


def test_allow_missing_images_is_reachable_from_the_command_line(tiny_dir, mathvista_without_images, tmp_path,
                                                                 capsys):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="6 of 6 rows have no image and are prompted text-only"):
        evaluate.main([f"checkpoint={tiny_dir}", f"out={out}", "benchmarks=[mathvista]", "limit=2",
                       "allow_missing_images=[mathvista]", f"eval.sources.mathvista={mathvista_without_images}",
                       "eval.benchmark_max_new_tokens=4", "eval.progress=false", "eval.decoding=greedy"])
    assert len(read_records(out / "mathvista.jsonl")) == 2
    # the results say their rows were prompted without images: a rerun without the flag is another config
    assert json.loads((out / "config.json").read_text())["benchmarks"]["mathvista"]["missing_images"] == 6
    capsys.readouterr()
    err = evaluate_err(capsys, f"checkpoint={tiny_dir}", f"out={out}", "benchmarks=[mathvista]",
                       "allow_missing_images=[mathvsta]", f"eval.sources.mathvista={mathvista_without_images}")
    assert "allow_missing_images names 'mathvsta'; valid: true, false or a list of mmmu, mathvista" in err


@pytest.mark.parametrize("damage", ["empty", "truncated", "overwritten"])
def test_unreadable_weights_are_one_line_naming_the_file(damage, tiny_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "overwritten": b"\0" * 64}[damage])
    out = tmp_path / "out"
    err = evaluate_err(capsys, f"checkpoint={folder}", f"out={out}", "benchmarks=[embedded]", "limit=1")
    assert err.count("\n") == 1 and err.startswith("error: checkpoint="), err
    assert f"{weights} is not a readable safetensors file (empty, truncated or corrupt" in err
    assert not out.exists()


def test_help_lists_the_keys_a_real_evaluation_needs(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    for key in ("eval.sources.<name>=", "eval.splits.<name>=", "eval.variants.<name>=", "eval.decoding=greedy|paper|sample",
                "eval.k=", "eval.benchmark_max_new_tokens=", "eval.mathvista_judge=", "allow_missing_images=",
                "mathvision: splits test | testmini", "limit=", "rollout=vllm"):
        assert key in printed, key
