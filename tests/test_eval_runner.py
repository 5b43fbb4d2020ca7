"""The benchmark runner (`rlsd-evaluate`) on the five benchmarks' fixtures and the embedded
task, with the random-init tiny model: files and fields, resumption, mean@k, the table, config checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from rlsd_harness.benchmarks import EVAL_BENCHMARK_NAMES, metadata
from rlsd_harness.cli import evaluate
from rlsd_harness.config import ConfigError, compose_config
from rlsd_harness.evaluation.runner import (
    BENCHMARKS,
    read_records,
    resolve_checkpoint,
    run_benchmarks,
)
from rlsd_harness.rollout.hf import HFRolloutEngine
from tests import benchmark_fixtures as fixtures

ALL = list(BENCHMARKS)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return fixtures.write_all(tmp_path_factory.mktemp("bench-fixtures"))


def config(sources: dict[str, Path], *extra: str):
    return compose_config([*(f"eval.sources.{n}={p}" for n, p in sources.items()), "eval.benchmark_max_new_tokens=4",
                           "eval.max_new_tokens=4", "eval.progress=false", "eval.batch=4", "eval.decoding=greedy", *extra])


@pytest.fixture
def count_prompts(monkeypatch) -> list[int]:
    """Prompts handed to the rollout engine, one entry per generate call."""
    calls: list[int] = []
    original = HFRolloutEngine.generate

    def counting(self, prompts, params, seeds):
        calls.append(len(prompts))
        return original(self, prompts, params, seeds)

    monkeypatch.setattr(HFRolloutEngine, "generate", counting)
    return calls


def run(tiny, tiny_dir, cfg, out, names, limit=2, overwrite=False):
    model, processor = tiny
    return run_benchmarks(tiny_dir, names, cfg, out, limit=limit, overwrite=overwrite, model=model,
                          processor=processor, log=lambda msg: None)


def test_all_benchmarks_write_records_metrics_and_table(tiny, tiny_dir, sources, tmp_path):
    out = tmp_path / "eval"
    table = run(tiny, tiny_dir, config(sources), out, ALL)
    # limit=2 keeps 2 units whole: We-Math's first two composite problems (3 + 4 rows), ZeroBench-Sub's
    # subquestions of main questions 1 and 2 (2 + 1); one row each elsewhere
    rows = {name: 2 for name in ALL} | {"wemath": 7, "zerobench": 3}
    for name in ALL:
        records = [json.loads(ln) for ln in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(records) == rows[name]  # greedy: one sample per item
        for r in records:
            assert {"id", "sample", "variant", "response", "parsed", "correct"} <= set(r)
            assert isinstance(r["response"], str) and isinstance(r["correct"], bool) and r["sample"] == 0
        assert records[0]["variant"] == ("plain" if name == "embedded" else "official")
        m = json.loads((out / f"{name}.metrics.json").read_text())
        assert m["samples"] == 1 and m["items"] == rows[name] and m["headline"] == metadata(name).headline
        assert 0.0 <= m["mean@k"] <= 1.0 and m["mean@k"] == m["metrics"][m["headline"]]
    # MathVista says which extractor produced its numbers, per run and per record.
    mv = json.loads((out / "mathvista.metrics.json").read_text())
    assert mv["extractor"] == "rules"
    assert all(json.loads(ln)["extractor"] == "rules" for ln in (out / "mathvista.jsonl").read_text().splitlines())
    # WeMath ids keep the sub-step key (several rows share one problem "ID").
    wemath_ids = [json.loads(ln)["id"] for ln in (out / "wemath.jsonl").read_text().splitlines()]
    assert wemath_ids[:3] == ["2steps_1/2steps_1", "2steps_1/2steps_2", "2steps_1/2steps_multi"]
    # The table: every benchmark, then the average of the paper's five.
    assert list(table["benchmark"]) == [*ALL, "average"]
    assert table.iloc[-1]["mean@k"] == pytest.approx(table[table.benchmark.isin(EVAL_BENCHMARK_NAMES)]["mean@k"].mean())
    csv = pd.read_csv(out / "table.csv")
    assert list(csv["benchmark"]) == [*ALL, "average"]
    md = (out / "table.md").read_text()
    assert all(re.search(rf"\| {name} +\|", md) for name in ALL)
    config_json = json.loads((out / "config.json").read_text())
    assert set(config_json["benchmarks"]) == set(ALL)
    assert config_json["benchmarks"]["mmmu"]["revision"] == fixtures.REVISION


def test_resumption_skips_done_items_and_repeats_an_uninterrupted_run(tiny, tiny_dir, sources, tmp_path, count_prompts):
    cfg = config(sources)
    out = tmp_path / "resumed"
    run(tiny, tiny_dir, cfg, out, ["mmmu", "embedded"], limit=2)
    assert sum(count_prompts) == 4
    count_prompts.clear()
    run(tiny, tiny_dir, cfg, out, ["mmmu", "embedded"], limit=2)
    assert count_prompts == []  # nothing left to generate
    run(tiny, tiny_dir, cfg, out, ["mmmu", "embedded"], limit=5)
    assert sum(count_prompts) == 6  # only the 3 new items of each
    count_prompts.clear()
    # A fresh run of the 5 items gives the same records: same seeds, and MMMU's random fallback draws
    # from its generator in dataset order although the resumed run scored items 3-5 in a later process.
    fresh = tmp_path / "fresh"
    run(tiny, tiny_dir, cfg, fresh, ["mmmu", "embedded"], limit=5)
    for name in ("mmmu", "embedded"):
        assert read_records(out / f"{name}.jsonl") == read_records(fresh / f"{name}.jsonl")
    fallbacks = [r[0] for r in read_records(out / "mmmu.jsonl").values() if r[0].get("random_fallback")]
    assert len(fallbacks) >= 2  # the replay above is exercised (a random model rarely names a letter)


def test_paper_decoding_keeps_k_samples_per_item(tiny, tiny_dir, sources, tmp_path):
    out = tmp_path / "paper"
    table = run(tiny, tiny_dir, config(sources, "eval.decoding=paper"), out, ["zerobench", "embedded"], limit=2)
    for name in ("zerobench", "embedded"):
        records = read_records(out / f"{name}.jsonl")
        assert len(records) == {"zerobench": 3, "embedded": 2}[name]  # ZeroBench-Sub: main questions 1 (2) and 2 (1)
        assert all([r["sample"] for r in recs] == [0, 1, 2, 3] for recs in records.values())
        m = json.loads((out / f"{name}.metrics.json").read_text())
        assert m["samples"] == 4 and len(m["per_sample"]) == 4 and len(m["per_sample_headline"]) == 4
        assert m["mean@4"] == m["mean@k"] == pytest.approx(sum(m["per_sample_headline"]) / 4)
        # mean@k is the mean over all item x sample records of `correct`
        flags = [r["correct"] for recs in records.values() for r in recs]
        assert m["mean@k"] == pytest.approx(sum(flags) / len(flags))
    # samples differ (T 0.7): not four copies of one greedy answer
    emb = read_records(out / "embedded.jsonl")
    assert any(len({r["response"] for r in recs}) > 1 for recs in emb.values())
    zb = json.loads((out / "zerobench.metrics.json").read_text())["metrics"]
    assert zb["k"] == 4 and zb["samples_per_question"] == 4 and {"pass@k", "k/k"} <= set(zb)
    assert set(table["k"].dropna()) == {4}


def test_a_different_config_is_refused_unless_overwrite(tiny, tiny_dir, sources, tmp_path, count_prompts):
    out = tmp_path / "guarded"
    run(tiny, tiny_dir, config(sources), out, ["embedded"], limit=1)
    before = (out / "embedded.jsonl").read_text()
    with pytest.raises(FileExistsError, match="max_new_tokens: 4 -> 6"):
        run(tiny, tiny_dir, config(sources, "eval.max_new_tokens=6"), out, ["embedded"], limit=1)
    with pytest.raises(FileExistsError, match="decoding: 'greedy' -> 'paper'"):
        run(tiny, tiny_dir, config(sources, "eval.decoding=paper"), out, ["embedded"], limit=1)
    assert (out / "embedded.jsonl").read_text() == before  # untouched by the refused runs
    count_prompts.clear()
    run(tiny, tiny_dir, config(sources, "eval.max_new_tokens=6"), out, ["embedded"], limit=1, overwrite=True)
    assert count_prompts == [1]  # regenerated from scratch
    assert json.loads((out / "config.json").read_text())["benchmarks"]["embedded"]["max_new_tokens"] == 6
    # Adding another benchmark to the same folder is not a conflict.
    run(tiny, tiny_dir, config(sources, "eval.max_new_tokens=6"), out, ["wemath"], limit=1)
    assert {"embedded", "wemath"} <= set(json.loads((out / "config.json").read_text())["benchmarks"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a runner folder"):
        run(tiny, tiny_dir, config(sources), foreign, ["embedded"], limit=1)


def test_bad_benchmark_name_lists_the_valid_ones(tiny_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([f"checkpoint={tiny_dir}", "benchmarks=[mmmu,mmlu]"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    # reported beside mmmu's missing source, each on its own line
    assert "\n  unknown benchmark 'mmlu'; valid: mmmu, mathvista, mathvision, zerobench, wemath, embedded (" in err
    assert "\n  mmmu: no data source; pass eval.sources.mmmu=" in err


def test_missing_source_and_bad_variant_fail_before_generation(tiny, tiny_dir, sources, tmp_path, count_prompts):
    with pytest.raises(ValueError, match=r"mathvision: no data source; pass eval.sources.mathvision="):
        run(tiny, tiny_dir, compose_config(["eval.progress=false"]), tmp_path / "a", ["mathvision"])
    with pytest.raises(ValueError, match="unknown prompt variant 'fancy'; valid: official, vlmevalkit"):
        run(tiny, tiny_dir, config(sources, "eval.variants.mathvista=fancy"), tmp_path / "b", ["mathvista"])
    assert count_prompts == [] and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_defaults_to_the_embedded_benchmark_and_its_variants(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    evaluate.main([f"checkpoint={tiny_dir}", "limit=2", f"out={out}", "eval.max_new_tokens=4", "eval.progress=false"])
    printed = capsys.readouterr().out
    assert all(re.search(rf"\| {key} +\|", printed) for key in ("embedded", "embedded-hint", "embedded-blank")) and str(out) in printed
    for key, variant in (("embedded", "plain"), ("embedded-hint", "hint"), ("embedded-blank", "blank")):
        records = read_records(out / f"{key}.jsonl")
        assert len(records) == 2 and all(r[0]["variant"] == variant for r in records.values())
    # the same items under each variant
    assert read_records(out / "embedded.jsonl").keys() == read_records(out / "embedded-hint.jsonl").keys()
    assert not any((out / f"{n}.jsonl").exists() for n in EVAL_BENCHMARK_NAMES)
    assert "average" not in printed  # only the paper's five are averaged


def test_a_named_variant_is_its_own_row(tiny, tiny_dir, sources, tmp_path):
    out = tmp_path / "variants"
    table = run(tiny, tiny_dir, config(sources), out, ["zerobench", "zerobench:vlmevalkit"], limit=1)
    assert list(table["benchmark"]) == ["zerobench", "zerobench-vlmevalkit", "average"]
    assert list(table["variant"][:2]) == ["official", "vlmevalkit"]
    assert table.iloc[-1]["metric"] == "mean of 1 of 5"  # the configured variant only
    with pytest.raises(ValueError, match="unknown prompt variant 'nope'"):
        run(tiny, tiny_dir, config(sources), out, ["zerobench:nope"], limit=1)


def test_checkpoint_folders_resolve(tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "final").symlink_to(tiny_dir)
    assert resolve_checkpoint(tiny_dir) == tiny_dir
    assert resolve_checkpoint(run_dir) == run_dir / "final"
    assert evaluate.default_out(run_dir / "final", "paper") == Path("results/eval/run-final-paper")
    step = tmp_path / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    (step / "state.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="training checkpoint"):
        resolve_checkpoint(step)
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_checkpoint(tmp_path / "nothing")


def test_runner_args_are_split_from_config_overrides():
    args, overrides = evaluate.parse_args(["checkpoint=/m", "benchmarks=[mmmu, wemath]", "limit=3", "overwrite=true",
                                           "eval.decoding=paper", "eval.sources.mmmu=/data/mmmu"])
    assert args == {"checkpoint": "/m", "study": None, "benchmarks": ["mmmu", "wemath"], "limit": 3, "out": None,
                    "overwrite": True, "allow_missing_images": False, "compare_with": None}
    assert evaluate.parse_args(["study=/s"])[0]["study"] == "/s"
    with pytest.raises(ConfigError, match="out= is for checkpoint="):
        evaluate.parse_args(["study=/s", "out=/o"])
    assert evaluate.parse_args(["checkpoint=/m", "allow_missing_images=[mathvista, wemath]"])[0][
        "allow_missing_images"] == ["mathvista", "wemath"]
    assert evaluate.parse_args(["checkpoint=/m", "allow_missing_images=true"])[0]["allow_missing_images"] is True
    assert overrides == ["eval.decoding=paper", "eval.sources.mmmu=/data/mmmu"]
    assert evaluate.parse_args(["checkpoint=/m"])[0]["benchmarks"] == ["embedded", "embedded:hint", "embedded:blank"]
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        evaluate.parse_args(["checkpoint=/m", "limit=0"])
    with pytest.raises(ConfigError, match=r"give exactly one of checkpoint=<model or run folder> and study="):
        evaluate.parse_args(["limit=2"])


def test_a_line_cut_short_by_a_crash_is_dropped(tmp_path):
    path = tmp_path / "x.jsonl"
    good = [{"id": "a", "sample": 1, "correct": True}, {"id": "a", "sample": 0, "correct": False}]
    text = "".join(json.dumps(r) + "\n" for r in good) + '{"id": "b", "sam'
    path.write_text(text)
    assert read_records(path) == {"a": [good[1], good[0]]}
    assert path.read_text() == text  # reading never writes; the runner repairs the file before it appends


def test_a_run_resumed_after_a_cut_line_equals_an_uninterrupted_run(tiny, tiny_dir, sources, tmp_path):
    """The runner appends after a line a kill cut short only once it has cut that line off
    (io.drop_cut_last_line): its new lines do not run on from the cut one."""
    cfg = config(sources)
    out, fresh = tmp_path / "cut", tmp_path / "fresh"
    run(tiny, tiny_dir, cfg, out, ["embedded"], limit=2)
    records = out / "embedded.jsonl"
    text = records.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    records.write_text(text[:len(text) - 1 - len(last) // 2])  # the last line cut in half, as a kill leaves it
    run(tiny, tiny_dir, cfg, out, ["embedded"], limit=3)
    run(tiny, tiny_dir, cfg, fresh, ["embedded"], limit=3)
    assert records.read_text() == (fresh / "embedded.jsonl").read_text()


def test_mathvista_judge_self_is_recorded(tiny, tiny_dir, sources, tmp_path):
    out = tmp_path / "judge"
    run(tiny, tiny_dir, config(sources, "eval.mathvista_judge=self"), out, ["mathvista"], limit=2)
    m = json.loads((out / "mathvista.metrics.json").read_text())
    assert m["extractor"] == "judge:self"
    extractors = {r[0]["extractor"] for r in read_records(out / "mathvista.jsonl").values()}
    assert extractors <= {"judge", "rules"} and "judge" in extractors  # a random model's answer needs the judge
