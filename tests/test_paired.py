"""Two checkpoints on one evaluation (`rlsd-evaluate out=A compare_with=B`): per benchmark A - B over the same items,
exact McNemar at k = 1 and the paired bootstrap for mean@k, checked against statsmodels and scipy on known data;
refusals of folders that cannot be paired; and end to end on folders written by the real runner (only the model's
responses are stand-ins)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

from rlsd_harness.analysis import paired
from rlsd_harness.cli import evaluate
from rlsd_harness.config import compose_config
from rlsd_harness.evaluation.runner import run_benchmarks
from rlsd_harness.rollout.hf import HFRolloutEngine
from tests import benchmark_fixtures as fixtures


def _folder(path: Path, correct: np.ndarray, *, decoding: str = "greedy", key: str = "mathvision",
            source: str = "/data/mathvision", ids: list[str] | None = None) -> Path:
    """An rlsd-evaluate folder for one benchmark: correct is (items, k) of 0/1."""
    path.mkdir(parents=True)
    ids = ids or [f"q{i}" for i in range(len(correct))]
    identity = {"source": source, "split": "testmini", "revision": "r1", "variant": "official", "max_new_tokens": 64,
                "score_options": {}}
    (path / "config.json").write_text(json.dumps({"checkpoint": str(path), "weights": "x", "decoding": decoding,
                                                  "sampling": {"temperature": 0.0}, "seed": 0,
                                                  "benchmarks": {key: identity}}))
    with (path / f"{key}.jsonl").open("w") as f:
        for i, row in zip(ids, correct):
            for j, c in enumerate(row):
                f.write(json.dumps({"id": i, "sample": j, "correct": bool(c)}) + "\n")
    k = correct.shape[1]
    (path / f"{key}.metrics.json").write_text(json.dumps({"benchmark": "mathvision", "key": key, "samples": k,
                                                          "mean@k": float(correct.mean())}))
    return path


def test_pass_at_1_is_the_exact_mcnemar_test_of_statsmodels(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((300, 1)) < 0.55).astype(int)
    b = np.where(rng.random((300, 1)) < 0.8, a, 1 - a)  # correlated: the pairing matters
    row = paired.compare(_folder(tmp_path / "a", a), _folder(tmp_path / "b", b)).iloc[0]
    x, y = a[:, 0], b[:, 0]
    table = [[int(((x == 1) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())],
             [int(((x == 0) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())]]
    assert row["measure"] == "pass@1" and row["items"] == 300
    assert row["p"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    assert row["diff"] == pytest.approx(100 * (x.mean() - y.mean()))
    assert row["low"] < row["diff"] < row["high"]
    assert (row["low"] > 0 or row["high"] < 0) == (row["p"] < 0.05)


def test_mean_at_k_is_scipys_paired_bootstrap_and_sign_flip_test(tmp_path):
    rng = np.random.default_rng(1)
    a = (rng.random((120, 4)) < 0.6).astype(int)
    b = (rng.random((120, 4)) < 0.5).astype(int)
    row = paired.compare(_folder(tmp_path / "a", a, decoding="paper"), _folder(tmp_path / "b", b, decoding="paper"),
                         n_resamples=2000).iloc[0]
    # compare() orders items by id (q0, q1, q10, ...): the resamples must see the same order to match exactly
    order = sorted(range(120), key=lambda i: f"q{i}")
    sa, sb = a.mean(1)[order], b.mean(1)[order]

    def diff(u, v, axis=-1):
        return np.mean(u - v, axis=axis)

    boot = sps.bootstrap((sa, sb), diff, paired=True, vectorized=True, n_resamples=2000, method="BCa",
                         rng=np.random.default_rng(0))
    perm = sps.permutation_test((sa, sb), diff, permutation_type="samples", vectorized=True, n_resamples=2000,
                                rng=np.random.default_rng(0))
    assert row["measure"] == "mean@4" and row["diff"] == pytest.approx(100 * (sa.mean() - sb.mean()))
    assert (row["low"], row["high"]) == (pytest.approx(100 * boot.confidence_interval.low),
                                         pytest.approx(100 * boot.confidence_interval.high))
    assert row["p"] == pytest.approx(perm.pvalue) and row["p"] < 0.05


@pytest.mark.parametrize("change, message", [
    ({"decoding": "paper"}, "decoded differently (decoding: 'greedy' vs 'paper')"),
    ({"ids": [f"x{i}" for i in range(20)]}, "different items (20 only in"),
    ({"key": "wemath"}, "no complete benchmark in common"),
])
def test_folders_that_cannot_be_paired_are_refused_in_one_line_before_writing(tmp_path, change, message):
    x = (np.arange(20)[:, None] % 2).astype(int)
    a = _folder(tmp_path / "a", x)
    b = _folder(tmp_path / "b", 1 - x, **change)
    with pytest.raises(paired.PairingError) as e:
        paired.write(a, b)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (a / "compare.md").exists() and not (a / "compare.csv").exists()


def test_another_data_path_with_the_same_items_pairs_and_a_new_second_folder_needs_overwrite(tmp_path):
    x = (np.arange(30)[:, None] % 3 == 0).astype(int)
    a = _folder(tmp_path / "a", x)
    b = _folder(tmp_path / "b", 1 - x, source="/elsewhere/mathvision")  # another machine's copy of the data
    c = _folder(tmp_path / "c", x)
    first = paired.write(a, b)
    assert first.iloc[0]["diff"] == pytest.approx(100 * (x.mean() - (1 - x).mean()))
    paired.write(a, b)  # the same second folder: refreshed
    with pytest.raises(FileExistsError, match="compares with .*b, not .*c; pass overwrite=true"):
        paired.write(a, c)
    assert str(b.resolve()) in (a / "compare.md").read_text()
    paired.write(a, c, overwrite=True)
    assert str(c.resolve()) in (a / "compare.md").read_text()
    with pytest.raises(paired.PairingError, match="names the folder itself"):
        paired.write(a, a)


def _stand_in(skill: float):
    """Responses drawn from the per-response seeds: a boxed answer, right with probability `skill` on the
    fixtures' multiple-choice items."""

    def generate(self, prompts, params, seeds):
        texts = []
        for s in seeds:
            rng = random.Random(s * 7919 + int(skill * 1000))
            a = "A" if rng.random() < skill else rng.choice(["A", "B", "C", "D", "1", "2", "12"])
            texts.append(f"The answer is \\boxed{{{a}}}.\n<Answer>: {a}")
        return SimpleNamespace(texts=texts)  # the runner reads only the texts

    return generate


def test_end_to_end_on_runner_folders_through_the_cli(tiny, tiny_dir, tmp_path, monkeypatch, capsys):
    sources = fixtures.write_all(tmp_path / "fixtures")
    names = ["mathvista", "mathvision", "wemath"]
    folders = {}
    for label, decoding, skill in (("a", "paper", 0.9), ("b", "paper", 0.2), ("g", "greedy", 0.9)):
        monkeypatch.setattr(HFRolloutEngine, "generate", _stand_in(skill))
        cfg = compose_config([*(f"eval.sources.{n}={sources[n]}" for n in names), f"eval.decoding={decoding}",
                              "eval.k=2" if decoding == "paper" else "eval.k=1", "eval.progress=false", "seed=0"])
        model, processor = tiny
        folders[label] = tmp_path / label
        run_benchmarks(tiny_dir, names, cfg, folders[label], limit=16, model=model, processor=processor,
                       log=lambda msg: None)
    evaluate.main([f"out={folders['a']}", f"compare_with={folders['b']}"])
    printed = capsys.readouterr().out
    table = __import__("pandas").read_csv(folders["a"] / "compare.csv")
    assert set(table["benchmark"]) == set(names) and "| A - B |" in printed
    for r in table.itertuples():
        head = {f: json.loads((folders[f] / f"{r.benchmark}.metrics.json").read_text()) for f in "ab"}
        if r.benchmark != "wemath":  # an item accuracy: the mean of the unit scores is the headline mean@k
            assert r.diff == pytest.approx(100 * (head["a"]["mean@k"] - head["b"]["mean@k"]), abs=1e-9)
        assert r.measure == "mean@2" and r.low <= r.diff <= r.high and 0 <= r.p <= r.p_holm <= 1
    with pytest.raises(SystemExit) as e:  # greedy against sampled: a one-line user error, exit status 2
        evaluate.main([f"out={folders['g']}", f"compare_with={folders['a']}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "decoded differently" in err and len(err.strip().splitlines()) == 1
    assert not (folders["g"] / "compare.md").exists()
