"""Held-out evaluation: mean@k / greedy pass@1 / unbiased pass@k on a stub engine with known outputs, the
per-item records and their metrics keys, budget-point scheduling, the embedded splits, the run's verifier."""

from __future__ import annotations

import json
from math import comb
from types import SimpleNamespace

import pytest
from PIL import Image

from rlsd_harness.benchmarks import embedded
from rlsd_harness.config import ConfigError, compose_config, schema
from rlsd_harness.data import EmbeddedData
from rlsd_harness.evaluation import heldout
from rlsd_harness.training.evals import RunEvaluator, Target, budget_point_due
from rlsd_harness.training.preflight import check_config
from rlsd_harness.verifier import ExactVerifier, MathVerifier
from tests.conftest import small_overrides


class StubEngine:
    """Answers item i's sample j correctly iff j < right[id]; its greedy response iff greedy_right[id].
    Records every call's sampling parameters and seeds."""

    def __init__(self, right: dict[str, int], greedy_right: dict[str, bool]) -> None:
        self.right, self.greedy_right, self.calls = right, greedy_right, []

    def generate(self, prompts, params, seeds):
        self.calls.append((params, list(seeds), [p.id for p in prompts]))
        texts = []
        for p in prompts:
            for j in range(params.n):
                ok = self.greedy_right.get(p.id, False) if params.greedy else j < self.right.get(p.id, 0)
                texts.append(f"so \\boxed{{{p.answer if ok else 'none'}}}")
        return SimpleNamespace(texts=texts)


def _items(n: int = 5, level: int = 1) -> list:
    return EmbeddedData(level=level).heldout_set("validation", n)


def _decoding(*overrides: str) -> heldout.Decoding:
    """The decoding of train.yaml's eval section with these overrides (validated, as every caller's is)."""
    cfg = compose_config(list(overrides))
    check_config(cfg, only=("seed", "eval"))
    return heldout.decoding_from_config(cfg.eval)


def _paper(k: int = 4, greedy: bool = True) -> heldout.Decoding:
    return _decoding("eval.decoding=paper", f"eval.k={k}", f"eval.greedy={str(greedy).lower()}")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("n", "c", "k", "want"), [(4, 0, 4, 0.0), (4, 1, 4, 1.0), (4, 2, 1, 0.5), (5, 2, 2, 0.7),
                                                   (10, 3, 5, 1 - comb(7, 5) / comb(10, 5))])
def test_pass_at_k_values(n, c, k, want):
    assert heldout.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=3, c=4, k=1"):
        heldout.pass_at_k(3, 4, 1)


def test_mean_at_k_greedy_and_pass_at_k_from_known_outputs():
    items = _items(5)
    right = dict(zip([it.id for it in items], [0, 1, 2, 4, 3]))
    greedy = dict(zip([it.id for it in items], [False, True, False, True, True]))
    engine = StubEngine(right, greedy)
    dec = _paper(4)
    records = heldout.sample_records(engine, items, [it.id for it in items], dec, 40,
                                     heldout.verifier_scorer(ExactVerifier()), batch=2)
    assert [r["correct"] for r in records] == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert [r["greedy"] for r in records] == [0, 1, 0, 1, 1]
    s = heldout.summarise(records)
    assert s["mean@k"] == pytest.approx((0 + 1 + 2 + 4 + 3) / 20)
    assert s["pass@1"] == pytest.approx(3 / 5)
    assert s["pass@4"] == pytest.approx(4 / 5)  # n = k samples: pass@k is "any sample correct"
    assert (s["n"], s["k"]) == (5, 4)
    sampled = [c for c in engine.calls if not c[0].greedy]
    assert all((c[0].temperature, c[0].top_p, c[0].top_k, c[0].n) == (0.7, 0.8, 20, 4) for c in sampled)
    # response j of item id has the same seed whatever the batching
    again = StubEngine(right, greedy)
    heldout.sample_records(again, items, [it.id for it in items], dec, 40, heldout.verifier_scorer(ExactVerifier()),
                           batch=5)
    seeds = lambda e: [s for c in e.calls if not c[0].greedy for s in c[1]]  # noqa: E731
    assert seeds(engine) == seeds(again) and len(set(seeds(engine))) == 20


def test_greedy_decoding_needs_no_second_generation_and_sampling_without_greedy_leaves_it_null():
    items = _items(3)
    ids = [it.id for it in items]
    engine = StubEngine(dict.fromkeys(ids, 0), {ids[0]: True, ids[1]: False, ids[2]: True})
    dec = _decoding("eval.decoding=greedy", "eval.k=null", "eval.greedy=false")
    records = heldout.sample_records(engine, items, ids, dec, 40, heldout.verifier_scorer(ExactVerifier()))
    assert len(engine.calls) == 1 and [r["greedy"] for r in records] == [1, 0, 1]
    assert heldout.summarise(records) == {"mean@k": pytest.approx(2 / 3), "pass@1": pytest.approx(2 / 3), "n": 3, "k": 1}
    records = heldout.sample_records(engine, items, ids, _paper(2, greedy=False), 40,
                                     heldout.verifier_scorer(ExactVerifier()))
    assert all(r["greedy"] is None for r in records) and "pass@1" not in heldout.summarise(records)


def test_decoding_config_errors_name_the_key_and_valid_values():
    assert _decoding("eval.decoding=paper").k == 4 and _decoding("eval.decoding=greedy").k == 1
    s = _decoding("eval.decoding=sample", "eval.k=8", "eval.sampling.top_p=0.95")
    assert (s.k, s.sampling) == (8, {"temperature": 1.0, "top_p": 0.95, "top_k": 0})
    # train.yaml's decoding (the paper's), with its greedy response: what a caller without overrides gets
    assert (_decoding().name, _decoding().k, _decoding().greedy) == ("paper", 4, True)
    # the schema is the one check of the eval section (decoding_from_config reads a validated one)
    for overrides, message in [
        (["eval.decoding=beam"], r"eval.decoding='beam' \(set on the command line\): not one of the choices; "
                                 r"valid: 'greedy', 'paper', 'sample'"),
        (["eval.decoding=greedy", "eval.k=4"], r"eval.k=4 \(set on the command line\) with eval.decoding='greedy' "
                                               r"\(set on the command line\): greedy responses are all the same"),
        (["eval.k=0"], r"eval.k=0 \(set on the command line\): out of range; valid: an integer >= 1 \(or null\)"),
        (["eval.decoding=sample", "eval.sampling.top_p=1.5"], r"eval.sampling.top_p=1.5 .*valid: a number > 0 and <= 1"),
        (["eval.decoding=sample", "eval.sampling.temperature=0"], r"eval.sampling.temperature=0 .*valid: a number > 0"),
        (["eval.sampling.top_k=-1"], r"eval.sampling.top_k=-1 .*valid: an integer >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _decoding(*overrides)


# ----------------------------------------------------------------------------- scheduling


def _cfg(*extra: str):
    return compose_config(["train.eval_every=5", "eval.n=4", "eval.budget_n=6", "eval.max_new_tokens=4", *extra])


def _schedule(cfg, per_step: dict[str, float], steps: int) -> dict[int, list[Target]]:
    """Targets per rollout step of a run that spends `per_step` of each ledger key per step."""
    from rlsd_harness.config import BUDGET_KEYS, budget_spent

    ev = RunEvaluator(schema.typed(cfg), EmbeddedData(level=1), ExactVerifier())
    out = {0: sorted(ev.targets(0), key=lambda t: t.name)}
    for s in range(1, steps + 1):
        metrics = {key: per_step.get(key, 1.0) * s for key in BUDGET_KEYS.values()}
        last = s == steps or budget_spent(schema.typed(cfg).train.budget, metrics)
        got = ev.step_targets(s, metrics, last)
        if got:
            out[s] = sorted(got, key=lambda t: t.name)
        if last:
            break
    return out


def test_budget_points_are_the_first_steps_at_or_past_each_fraction_of_the_budget():
    from rlsd_harness.config import BUDGET_KEYS

    cfg = _cfg("train.steps=40", "train.budget.kind=flops", "train.budget.value=100")
    got = _schedule(cfg, {BUDGET_KEYS["flops"]: 12.0}, 40)  # 12 per step: 0.5 at step 5 (60), 1.0 at step 9
    V, T = "validation", "test"
    assert got == {
        0: [Target(T, 6, 0.0), Target(V, 4)],
        5: [Target(T, 6, 0.5), Target(V, 4)],
        9: [Target(T, 6, 1.0), Target(V, 4)],  # the budget stops the run: the last step is routine too
    }


def test_without_a_budget_the_points_are_fractions_of_train_steps_and_a_short_run_records_what_it_spent():
    got = _schedule(_cfg("train.steps=10", "train.eval_every=4", "eval.budget_points=[0.5,1.0]"), {}, 10)
    assert {s: [(t.name, t.budget_point) for t in ts] for s, ts in got.items()} == {
        0: [("test", 0.0), ("validation", None)], 4: [("validation", None)], 5: [("test", 0.5)],
        8: [("validation", None)], 10: [("test", 1.0), ("validation", None)]}
    from rlsd_harness.config import BUDGET_KEYS

    short = _cfg("train.steps=3", "train.budget.kind=tokens", "train.budget.value=1000", "eval.budget_points=[0.5]")
    got = _schedule(short, {BUDGET_KEYS["tokens"]: 100.0}, 3)
    assert [(t.name, t.budget_point) for t in got[3]] == [("test", 0.3), ("validation", None)]  # spent 0.3


def test_routine_and_budget_point_evaluations_of_one_split_merge_with_the_budget_size():
    got = _schedule(_cfg("train.steps=10", "eval.split=test"), {}, 10)
    assert got == {0: [Target("test", 6, 0.0)], 5: [Target("test", 6, 0.5)], 10: [Target("test", 6, 1.0)]}


def test_resumed_run_does_not_repeat_a_budget_point():
    ev = RunEvaluator(schema.typed(_cfg("train.steps=10")), EmbeddedData(level=1), ExactVerifier())
    ev.resume([{"rollout_step": 0, "eval/test/budget_point": 0.0}, {"rollout_step": 6, "eval/test/budget_point": 0.5}])
    assert [t.budget_point for t in ev.targets(7, 0.7, False)] == []
    assert budget_point_due(0.7, [0.5, 1.0], set(), False) == 0.5
    assert budget_point_due(1.2, [0.5, 1.0], set(), True) == 1.0  # both first reached: the larger one


def test_eval_config_errors_are_raised_before_anything_runs():
    # by the schema, which rlsd-train runs before it builds the evaluator (RunEvaluator reads a validated config)
    for overrides, message in [
        (["eval.split=dev"], r"eval.split='dev' .*valid: 'validation', 'test' \(or null\)"),
        (["eval.budget_split=dev"], r"eval.budget_split='dev' .*valid: 'validation', 'test'$"),
        (["eval.budget_points=[0.5,2]"], r"eval.budget_points=\[0.5, 2\] .*out of range; valid: a list of numbers, "
                                         r"each > 0 and <= 1"),
        (["eval.budget_n=0"], r"eval.budget_n=0 .*valid: an integer >= 1"),
        (["eval.mathvista_judge=gpt"], r"eval.mathvista_judge='gpt' .*valid: 'self' \(or null\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_config(_cfg(*overrides))


# ----------------------------------------------------------------------------- records in the run folder


def test_records_file_and_metric_keys(tmp_path, monkeypatch):
    cfg = _cfg("train.steps=10", "eval.k=3", "eval.split=validation")
    data = EmbeddedData(level=1)
    ev = RunEvaluator(schema.typed(cfg), data, ExactVerifier())
    ev.place(tmp_path, 0, 1)
    items = data.heldout_set("test", 6)
    right = {it.id: i % 4 for i, it in enumerate(items)}  # 0, 1, 2, 3, 0, 1 of 3 samples correct
    engine = StubEngine(right, {it.id: i % 2 == 0 for i, it in enumerate(items)})
    monkeypatch.setattr(heldout, "HFRolloutEngine", lambda *a, **kw: engine)
    model = SimpleNamespace(training=True, eval=lambda: None, train=lambda mode: None)
    out = ev.run(model, None, [Target("test", 6, 0.5)], rollout_step=7)
    path = tmp_path / "evals" / "test-step000007.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["id"] for x in lines] == [it.id for it in items]
    assert all(set(x) == {"id", "correct", "greedy"} and len(x["correct"]) == 3 for x in lines)
    assert [sum(x["correct"]) for x in lines] == [0, 1, 2, 3, 0, 1]
    assert set(out) == {"eval/test/mean@k", "eval/test/pass@1", "eval/test/pass@3", "eval/test/n", "eval/test/k",
                        "eval/test/file", "eval/test/budget_point", "eval/seconds"}
    assert out["eval/test/mean@k"] == pytest.approx(7 / 18) and out["eval/test/pass@3"] == pytest.approx(4 / 6)
    assert out["eval/test/pass@1"] == pytest.approx(0.5) and out["eval/test/file"] == "evals/test-step000007.jsonl"
    assert (out["eval/test/n"], out["eval/test/k"], out["eval/test/budget_point"]) == (6, 3, 0.5)
    routine = ev.run(model, None, [Target("validation", 4)], rollout_step=5)
    assert "eval/validation/budget_point" not in routine and routine["eval/validation/n"] == 4


# ----------------------------------------------------------------------------- splits


def test_embedded_splits_are_disjoint_and_stable():
    sets = {s: {x.id for seed in (0, 1) for x in embedded.generate(s, 300, seed=seed)} for s in embedded.SPLITS}
    assert all(len(v) > 550 for v in sets.values())  # two seeds may draw a few of the same small-stratum items
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"] or sets["validation"] & sets["test"])
    # the train split is the one the warm-up and earlier runs used (hash % 5 != 0), in the same order
    assert all(int(i, 16) % 5 for i in sets["train"])
    assert [x.id for x in embedded.generate("train", 3, seed=7, level=1)] == [
        "77b5a8f629f1cffb", "94dd61f5849109f6", "98d5883ca8ecc432"]
    # a smaller held-out set is a prefix of a larger one (routine items are the budget-point items' start)
    assert [x.id for x in EmbeddedData(level=2).heldout_set("test", 20)] == \
        [x.id for x in EmbeddedData(level=2).heldout_set("test", 50)][:20]
    assert embedded.distinct_supply(1)["1 shapes"] == 864 and embedded.distinct_supply(2)["0 target + 0 other"] == 27


# ----------------------------------------------------------------------------- the run's verifier


def test_math_verifier_scores_latex_and_string_answers():
    score = heldout.verifier_scorer(MathVerifier())()
    item = SimpleNamespace(answer="0.5")
    assert score("so \\boxed{\\frac{1}{2}}", item) and not score("so \\boxed{2}", item)


def test_local_data_is_evaluated_with_the_runs_verifier(tmp_path, tiny_dir, monkeypatch):
    """data=local: a correct \\boxed{3} against the string answer "3" is correct (the embedded task's integer
    comparison of an int with the str "3" read it wrong: pass@1 was 0)."""
    from rlsd_harness.training.run import run

    img = tmp_path / "a.png"
    Image.new("RGB", (56, 56), "red").save(img)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1),
                                        "images": ["a.png"]}) + "\n" for i in range(4)))

    class Right:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def generate(self, prompts, params, seeds):
            return SimpleNamespace(texts=[f"\\boxed{{{p.answer}}}" for p in prompts for _ in range(params.n)])

    monkeypatch.setattr(heldout, "HFRolloutEngine", Right)
    cfg = compose_config(small_overrides(tmp_path, "data=local", f"data.path={rows}", f"data.test_path={rows}",
                                         "data.verifier=math", "train.steps=1", "train.eval_every=1", "eval.n=4",
                                         "eval.decoding=greedy", "eval.split=test", "run.name=local"))
    run_dir = run(cfg, log=lambda m: None)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = {k: v for line in lines for k, v in line.items() if k.startswith("eval/") and k.endswith("pass@1")}
    assert accuracy and all(v == 1.0 for v in accuracy.values()), accuracy
    records = [json.loads(x) for x in (run_dir / "evals" / "test-step000000.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in records] == [[1]] * 4


def test_benchmarks_are_evaluated_during_training_with_their_own_scorers(tmp_path, monkeypatch):
    from tests import benchmark_fixtures as fixtures

    source = fixtures.write_mathvista(tmp_path / "fixtures")
    cfg = _cfg("train.steps=10", f"eval.sources.mathvista={source}", "train.eval_benchmarks=[mathvista]",
               "eval.split=null", "eval.budget_points=[]", "eval.decoding=greedy")
    ev = RunEvaluator(schema.typed(cfg), EmbeddedData(level=1), ExactVerifier())
    ev.place(tmp_path / "run", 0, 1)
    assert ev.targets(0) == [Target("mathvista", 4)]
    seen = []

    class Thousand:  # one answer for every question: right for the measuring cup (pid 2)
        def __init__(self, *args, **kwargs) -> None:
            pass

        def generate(self, prompts, params, seeds):
            seen.extend(prompts)
            return SimpleNamespace(texts=["The answer is 1000."] * len(prompts))

    monkeypatch.setattr(heldout, "HFRolloutEngine", Thousand)
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode: None)
    out = ev.run(model, None, ev.targets(0), rollout_step=0)
    assert out["eval/mathvista/n"] == 4 and out["eval/mathvista/file"] == "evals/mathvista-step000000.jsonl"
    assert all(hasattr(p, "question") and p.images for p in seen)  # the benchmark's own prompt, with its image
    records = heldout.read_records(tmp_path / "run" / out["eval/mathvista/file"])
    assert [r["id"] for r in records] == ["5", "2", "479", "31"]
    from rlsd_harness.benchmarks import mathvista

    rows = mathvista.load(str(source), "testmini", None)[:4]
    official = [[int(bool(mathvista.score("The answer is 1000.", row)["correct"]))] for row in rows]
    # MathVista's scorer (the run's verifier, an exact \boxed{} match, would mark every one wrong)
    assert [r["correct"] for r in records] == official and official[1] == [1]
    assert out["eval/mathvista/mean@k"] == sum(c[0] for c in official) / 4 == out["eval/mathvista/pass@1"]


@pytest.mark.slow
def test_resumed_run_evaluates_as_the_uninterrupted_one(tmp_path, tiny_dir):
    """A run stopped at step 2 of a 4-step budget and resumed has the same evaluations (budget point 0.5 once,
    at step 2) and the same per-item records as one that never stopped."""
    from rlsd_harness.training.run import run

    common = ["train.eval_every=2", "train.save_every=2", "eval.n=4", "eval.budget_n=6", "eval.max_new_tokens=6",
              "eval.k=2", "train.budget.kind=steps", "train.budget.value=4", "eval.budget_points=[0.5,1.0]"]
    run(compose_config(small_overrides(tmp_path, *common, "train.steps=4", "run.name=straight")), log=lambda m: None)
    run(compose_config(small_overrides(tmp_path, *common, "train.steps=2", "run.name=split")), log=lambda m: None)
    run(compose_config(small_overrides(tmp_path, *common, "train.steps=4", "run.name=split", "run.resume=true")),
        log=lambda m: None)
    evals = lambda name: [{k: v for k, v in json.loads(x).items() if k.startswith("eval/") and k != "eval/seconds"}  # noqa: E731
                          for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    straight = evals("straight")
    assert [line.get("eval/test/budget_point") for line in straight] == [0.0, None, 0.5, None, 1.0]
    assert [line.get("eval/validation/n") for line in straight] == [4, None, 4, None, 4]
    assert evals("split") == straight
    files = sorted(p.name for p in (tmp_path / "straight" / "evals").iterdir())
    assert files == [f"{s}-step{n:06d}.jsonl" for s in ("test", "validation") for n in (0, 2, 4)]
    assert all((tmp_path / "split" / "evals" / f).read_text() == (tmp_path / "straight" / "evals" / f).read_text()
               for f in files)


def test_runner_reads_eval_k_and_the_sample_decoding(tiny, tiny_dir, tmp_path):
    from rlsd_harness.evaluation.runner import read_records, run_benchmarks

    model, processor = tiny
    overrides = ["eval.max_new_tokens=4", "eval.progress=false", "eval.decoding=sample", "eval.k=2",
                 "eval.sampling.temperature=0.9"]
    run_benchmarks(tiny_dir, ["embedded"], compose_config(overrides), tmp_path / "out", limit=2, model=model,
                   processor=processor, log=lambda m: None)
    assert [len(v) for v in read_records(tmp_path / "out" / "embedded.jsonl").values()] == [2, 2]
    stored = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (stored["decoding"], stored["sampling"]) == (
        "sample", {"greedy": False, "samples": 2, "temperature": 0.9, "top_p": 1.0, "top_k": 0})
    # a named decoding at its default k keeps the identity earlier runner folders recorded
    paper = _decoding("eval.decoding=paper", "eval.k=null")
    assert paper.identity() == heldout.DECODING["paper"]


def test_cached_base_evaluation_is_the_computed_one_and_is_keyed_by_the_weights(tiny, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    model, processor = tiny
    cfg = _cfg("eval.cache_base=true", "eval.decoding=paper", "eval.k=2")
    calls = []
    real = heldout.evaluate_model
    monkeypatch.setattr(heldout, "evaluate_model", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def evaluate(folder: str, step: int = 0) -> list[dict]:
        ev = RunEvaluator(schema.typed(cfg), EmbeddedData(level=1), ExactVerifier())
        ev.place(tmp_path / folder, 0, 1)
        ev.run(model, processor, [Target("test", 6, 0.0)], rollout_step=step)
        return heldout.read_records(tmp_path / folder / "evals" / f"test-step{step:06d}.jsonl")

    first = evaluate("a")
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "evals").glob("*.jsonl"))) == 1
    assert evaluate("b") == first and len(calls) == 1  # read from the cache, identical records
    evaluate("c", step=3)  # only the base (step 0) is cached
    assert len(calls) == 2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            next(model.parameters()).add_(1e-3)
        evaluate("d")  # other weights: evaluated, not read
        assert len(calls) == 3 and len(list((tmp_path / "cache" / "evals").glob("*.jsonl"))) == 2
    finally:
        model.load_state_dict(state)
