"""Bad input is answered before anything is written: one line (or a short block) naming the key, the value,
who set it and the valid values, exit status 2, and no run folder, output folder or checkpoint on disk.

The command-line cases go through `rlsd_harness.cli.train.main` (the `rlsd-train` console script) with a
small valid base config, so that a case the checks let through would actually train (and fail the test on
its exit status), while a refused case never builds a model: each takes well under a second.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlsd_harness.cli import evaluate as evaluate_cli
from rlsd_harness.cli import train as train_cli
from rlsd_harness.config import CONFIG_DIR, ConfigError, compose_config, expand_experiment, group_choices

REPO = Path(__file__).resolve().parents[1]

# Valid and tiny: 2 prompts x 2 responses, 4 new tokens, no warm-up, no evaluation or checkpoints.
BASE = ["model.warmup=null", "train.steps=1", "train.prompts_per_step=2", "train.group_size=2",
        "train.micro_batch_size=4", "train.eval_every=0", "train.save_every=0", "train.progress=false",
        "rollout.max_new_tokens=4"]


def train_refuses(tmp_path: Path, capsys, *args: str) -> str:
    """Run rlsd-train; assert exit status 2, one short message, and nothing written under tmp_path/runs."""
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main([*BASE, f"run.dir={runs}", *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) <= 6, err
    assert not runs.exists(), f"{runs} was written: {sorted(p.name for p in runs.rglob('*'))}"
    return err


# (arguments, text the message must contain: the key and the value as the user wrote it, and the valid range)
CONFIG_CASES = {
    "float for a count": (["train.steps=2.5"], ["train.steps=2.5", "set on the command line", "integer >= 1"]),
    "word for a count": (["train.steps=two"], ["train.steps='two'", "integer >= 1"]),
    "negative steps": (["train.steps=-3"], ["train.steps=-3", "integer >= 1"]),
    "bool for a count": (["train.steps=true"], ["train.steps=true", "integer"]),
    "negative warm-up": (["optim.warmup_steps=-1"], ["optim.warmup_steps=-1", "integer >= 0"]),
    "negative eval.n": (["eval.n=-5"], ["eval.n=-5", "integer >= 1"]),
    "zero eval.n": (["eval.n=0"], ["eval.n=0", "integer >= 1"]),
    "negative save_every": (["train.save_every=-1"], ["train.save_every=-1", "integer >= 0"]),
    "negative eval_every": (["train.eval_every=-1"], ["train.eval_every=-1", "integer >= 0"]),
    "no ppo epoch": (["train.ppo_epochs=0"], ["train.ppo_epochs=0", "integer >= 1"]),
    "group of one, GRPO": (["train.group_size=1", "train.micro_batch_size=2"], ["train.group_size=1", "grpo", ">= 2"]),
    "group of one, SDPO": (["algorithm=sdpo", "train.group_size=1", "train.micro_batch_size=2"],
                           ["train.group_size=1", "sdpo", ">= 2"]),
    "zero micro-batch": (["train.micro_batch_size=0"], ["train.micro_batch_size=0", "integer >= 1"]),
    "zero mini-batches": (["train.mini_batches=0"], ["train.mini_batches=0", "integer >= 1"]),
    "zero prompts": (["train.prompts_per_step=0"], ["train.prompts_per_step=0", "integer >= 1"]),
    "geometry": (["train.micro_batch_size=3"], ["4 rows per rank", "train.micro_batch_size=3", "1, 2, 4"]),
    "mini-batches do not divide": (["train.mini_batches=3"], ["train.mini_batches=3", "4 rows per rank"]),
    "one beta": (["optim.betas=[0.9]"], ["optim.betas=[0.9]", "a list of 2 numbers"]),
    "beta of one": (["optim.betas=[0.9,1.0]"], ["optim.betas=[0.9, 1.0]", "< 1"]),
    "zero lr": (["optim.lr=0"], ["optim.lr=0", "> 0"]),
    "top_p above one": (["rollout.top_p=1.5"], ["rollout.top_p=1.5", "<= 1"]),
    "zero temperature": (["rollout.temperature=0"], ["rollout.temperature=0", "> 0"]),
    "unknown budget kind": (["train.budget.kind=joules", "train.budget.value=5"],
                            ["train.budget.kind='joules'", "'flops', 'tokens', 'steps', 'seconds'"]),
    "budget without value": (["train.budget.kind=flops"], ["train.budget.kind='flops'", "train.budget.value"]),
    "budget value without kind": (["train.budget.value=5"], ["train.budget.value=5", "flops"]),
    "negative budget": (["train.budget.kind=steps", "train.budget.value=-1"], ["train.budget.value=-1", "> 0"]),
    "unknown model arch": (["model.arch=nope"], ["model.arch='nope'", "'qwen2_5_vl', 'qwen3_vl'"]),
    "unknown model size": (["model.size=huge"], ["model.size='huge'", "'tiny', 'small'"]),
    "objective range": (["algorithm=rlsd", "algorithm.params.eps_w=1.5"], ["algorithm.params.eps_w=1.5", "(0, 1)"]),
    "objective type": (["algorithm=rlsd", "algorithm.params.eps_w=abc"], ["algorithm.params.eps_w='abc'", "a number"]),
    "nested objective range": (["algorithm=grpo_opsd", "algorithm.params.grpo.clip_dual=0.5"],
                               ["algorithm.params.grpo.clip_dual=0.5", "> 1"]),
    "unknown objective key": (["+algorithm.params.bogus=1"], ["algorithm.params.bogus", "clip_low"]),
    "unknown key added": (["+train.foo=1"], ["train.foo", "valid keys under train", "group_size"]),
    "teacher type": (["algorithm=sdpo", "algorithm.teacher.sync_every=x"], ["algorithm.teacher.sync_every='x'", "integer"]),
    "teacher range": (["algorithm=sdpo", "algorithm.teacher.ema_rate=2"], ["algorithm.teacher.ema_rate=2", "(0, 1]"]),
    "objective needs a teacher": (["algorithm=rlsd", "algorithm.teacher.weights=none"],
                                  ["algorithm.teacher.weights='none'", "frozen, sync, ema, live"]),
    "unknown verifier": (["data.verifier=nope"], ["data.verifier='nope'", "'exact', 'math'"]),
    "unknown decoding": (["eval.decoding=fast"], ["eval.decoding='fast'", "'greedy', 'paper'"]),
    "unknown zero stage": (["deepspeed.zero_stage=5"], ["deepspeed.zero_stage=5", "0, 1, 2, 3"]),
    "unknown level": (["data.level=7"], ["data.level=7", "1, 2, 3"]),
    "unknown tracker": (["run.trackers=[tensorbored]"], ["run.trackers=['tensorbored']", "'tensorbored' is not one",
                                                         "'tensorboard'"]),
    "run name escapes": (["run.name=../elsewhere"], ["run.name='../elsewhere'", "path separators"]),
    "model folder required": (["model=qwen3-vl-8b"], ["model.path", "model/qwen3-vl-8b.yaml", "set model.path=<folder>"]),
    "data file required": (["data=local"], ["data.path", "data/local.yaml", "set data.path=<file>"]),
    "held-out file required": (["data=local", "data.path=x.jsonl", "train.eval_every=5"],
                               ["data.test_path=null", "train.eval_every=5", "set data.test_path=<file>"]),
    # Rules the Trainer, the held-out evaluator, and four objectives' __post_init__ also
    # checked until the schema became their one check: each is refused here, before anything is built.
    "mini-batches do not divide, token budget": (["train.token_budget=64", "train.mini_batches=3"],
                                                 ["train.mini_batches=3", "does not divide the 4 rows per rank"]),
    "unknown rollout engine": (["rollout.engine=sglang"], ["rollout.engine='sglang'", "'hf', 'vllm'"]),
    "greedy with k samples": (["eval.decoding=greedy", "eval.k=4"],
                              ["eval.k=4", "eval.decoding='greedy'", "valid: eval.k=1 (or null)"]),
    "zero eval.k": (["eval.k=0"], ["eval.k=0", "integer >= 1 (or null)"]),
    "eval temperature zero": (["eval.decoding=sample", "eval.sampling.temperature=0"],
                              ["eval.sampling.temperature=0", "> 0"]),
    "eval top_p above one": (["eval.sampling.top_p=1.5"], ["eval.sampling.top_p=1.5", "<= 1"]),
    "eval negative top_k": (["eval.sampling.top_k=-1"], ["eval.sampling.top_k=-1", "integer >= 0"]),
    "unknown eval split": (["eval.split=dev"], ["eval.split='dev'", "'validation', 'test' (or null)"]),
    "unknown budget split": (["eval.budget_split=dev"], ["eval.budget_split='dev'", "'validation', 'test'"]),
    "budget point above one": (["eval.budget_points=[0.5,2]"], ["eval.budget_points=[0.5, 2]", "each > 0 and <= 1"]),
    "zero budget_n": (["eval.budget_n=0"], ["eval.budget_n=0", "integer >= 1"]),
    "unknown mathvista judge": (["eval.mathvista_judge=gpt"], ["eval.mathvista_judge='gpt'", "'self' (or null)"]),
    "unknown on_short": (["train.dynamic_sampling.on_short=drop"],
                         ["train.dynamic_sampling.on_short='drop'", "'fill', 'error'"]),
    "no refill round": (["train.dynamic_sampling.max_rounds=0"], ["train.dynamic_sampling.max_rounds=0", ">= 1"]),
    "unknown loss_agg_mode": (["algorithm.params.loss_agg_mode=seq-mean-token-sum-norm"],
                              ["algorithm.params.loss_agg_mode='seq-mean-token-sum-norm'",
                               "valid: token-mean, seq-mean-token-mean, seq-mean-token-sum, "
                               "seq-mean-token-sum-over-max-len"]),
    "unknown nested loss_agg_mode": (["algorithm=grpo_opsd", "algorithm.params.opsd.loss_agg_mode=sum"],
                                     ["algorithm.params.opsd.loss_agg_mode='sum'", "valid: token-mean"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_refused_before_anything_is_written(case, tmp_path, capsys, cache_dir):
    args, expected = CONFIG_CASES[case]
    err = train_refuses(tmp_path, capsys, *args)
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"


def test_every_problem_is_listed_at_once(tmp_path, capsys, cache_dir):
    err = train_refuses(tmp_path, capsys, "train.steps=two", "optim.lr=-1", "eval.n=0")
    assert err.startswith("error: 3 config errors:")
    assert all(s in err for s in ("train.steps='two'", "optim.lr=-1", "eval.n=0"))


def test_the_message_says_who_set_the_value(tmp_path):
    from rlsd_harness.config import source_of
    from rlsd_harness.training import preflight

    cfg = compose_config(expand_experiment(["experiment=smoke", "algorithm=rlsd", "train.steps=7"]))
    assert source_of(cfg, "train.steps") == "set on the command line"
    assert source_of(cfg, "eval.n") == "set by experiment smoke (eval.n=32)"
    assert source_of(cfg, "algorithm.params.eps_w") == "set in rlsd_harness/config/algorithm/rlsd.yaml"
    assert source_of(cfg, "optim.betas") == "set in rlsd_harness/config/train.yaml"
    bad = compose_config(expand_experiment(["experiment=smoke", "algorithm=rlsd", "algorithm.params.lam=2"]))
    with pytest.raises(ConfigError, match=r"algorithm.params.lam=2 \(set on the command line\): lam must be in \[0, 1\]"):
        preflight.check_config(bad)


def test_valid_configs_pass(tmp_path):
    """The shipped configurations, and group size 1 for an objective that does not compare a group's responses."""
    from rlsd_harness.training import preflight

    for algorithm in group_choices("algorithm"):
        preflight.check_config(compose_config([f"algorithm={algorithm}"]))
    for name in group_choices("experiment"):
        exp = OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml")
        for method in exp.methods[-1:]:
            extra = ["data.path=x.jsonl", "model.path=/m"] if name == "paper_main_table" else []
            preflight.check_config(compose_config(expand_experiment([f"experiment={name}", f"algorithm={method}", *extra])))
    preflight.check_config(compose_config(["algorithm=opsd", "train.group_size=1", "train.micro_batch_size=8"]))
    preflight.check_config(compose_config(["train.budget.kind=tokens", "train.budget.value=1000"]))


def test_geometry_counts_the_ranks(monkeypatch):
    from rlsd_harness.training import preflight

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"train.prompts_per_step=8 .* does not split over the 3 ranks"):
        preflight.check_config(compose_config([]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"eval.n=1 .*sharded over the 2 ranks"):
        preflight.check_config(compose_config(["eval.n=1", "train.micro_batch_size=32"]))


def test_the_typed_model_is_generated_from_the_key_declarations():
    """Each key's type, bounds, fixed choices and meaning become a field of one pydantic model, the check the
    schema's per-key messages come from."""
    import pydantic

    from rlsd_harness.config.schema import BY_PATH, keys_model
    from rlsd_harness.trees import flatten

    model = keys_model()
    assert {f.alias for f in model.model_fields.values()} == set(BY_PATH)
    steps = model.model_json_schema(by_alias=True)["properties"]["train.steps"]
    assert (steps["minimum"], steps["description"]) == (1, BY_PATH["train.steps"].doc)
    flat = flatten(OmegaConf.to_container(compose_config(["algorithm=rlsd"]), resolve=True))
    typed = model.model_validate({k: v for k, v in flat.items() if k in BY_PATH})
    assert (typed.train__steps, typed.eval__decoding, typed.optim__betas) == (30, "paper", [0.9, 0.999])
    for bad in ({"deepspeed.zero_stage": True}, {"deepspeed.zero_stage": 1.0}, {"train.steps": 2.5},
                {"optim.lr": float("inf")}, {"eval.split": "dev"}, {"optim.betas": [0.9]}):
        with pytest.raises(pydantic.ValidationError):  # strict: true is not 1, 1.0 not the integer choice 1
            model.model_validate(bad)


def test_every_yaml_key_is_declared():
    """A key added to a yaml file needs a line in the schema (type, range, meaning) and in docs/config.md."""
    from rlsd_harness.config.schema import BY_PATH

    sections = ("algorithm.params", "algorithm.teacher") + tuple(k.path for k in BY_PATH.values() if k.open)
    undeclared = []
    for path in [CONFIG_DIR / "train.yaml", *sorted(CONFIG_DIR.glob("*/*.yaml"))]:
        if path.parent.name == "experiment":
            continue
        node = OmegaConf.load(path)
        prefix = "" if path.name == "train.yaml" else path.parent.name + "."

        def walk(n, p, path=path):
            for k in n:
                if k == "defaults" and not p:
                    continue
                key, v = f"{p}{k}", n._get_node(k)
                if OmegaConf.is_dict(v) and not key.startswith(sections):
                    walk(v, key + ".", path)  # its keys are declared one by one
                elif key not in BY_PATH and not key.startswith(sections):
                    undeclared.append(f"{path.relative_to(CONFIG_DIR)}: {key}")

        walk(node, prefix)
    assert not undeclared, "keys without a schema entry (rlsd_harness/config/schema.py KEYS):\n" + "\n".join(undeclared)


def test_config_reference_is_current(monkeypatch):
    from rlsd_harness import verifier
    from rlsd_harness.training import preflight

    monkeypatch.delitem(verifier.VERIFIERS, "parity", raising=False)  # the tests' own verifier
    assert (REPO / "docs" / "config.md").read_text() == preflight.reference_markdown(), (
        "docs/config.md is stale: python -m rlsd_harness.training.preflight > docs/config.md")


def test_typed_config_is_current():
    """rlsd_harness/config/typed.py, the typed objects every consumer reads, is generated from the schema."""
    from rlsd_harness.config import schema

    assert (REPO / "rlsd_harness" / "config" / "typed.py").read_text() == schema.typed_source(), (
        "rlsd_harness/config/typed.py is stale: make config-docs (python -m rlsd_harness.config.schema > "
        "rlsd_harness/config/typed.py)")


@pytest.mark.parametrize("group", ["algorithm", "model", "data", "rollout", "deepspeed"])
def test_every_group_file_reads_typed(group):
    """Each file of each group composes into a RunConfig whose fields hold the composed values, keys its group
    file leaves out being None (data.path without data=local)."""
    import dataclasses

    from rlsd_harness.config import group_choices, schema

    def same(node: object, value: object, key: str) -> None:
        if dataclasses.is_dataclass(node):
            assert isinstance(value, dict), key
            for k, v in value.items():
                same(getattr(node, k), v, f"{key}.{k}")
            left_out = {f.name for f in dataclasses.fields(node)} - set(value) - {"composed"}
            assert all(getattr(node, k) is None for k in left_out), (key, left_out)
        else:
            assert node == value and type(node) is type(value), key

    for choice in group_choices(group):
        composed = compose_config([f"{group}={choice}"])
        typed = schema.typed(composed)
        same(typed, OmegaConf.to_container(composed, resolve=True), f"{group}={choice}")
        assert typed.composed is composed


def test_a_key_the_schema_does_not_declare_or_a_missing_one_is_refused_by_the_typed_config():
    from rlsd_harness.config import schema

    composed = compose_config([])
    OmegaConf.set_struct(composed, False)
    composed.train.stepz = 3
    with pytest.raises(ConfigError, match=r"config key train\.stepz is not declared .* `make config-docs`"):
        schema.typed(composed)
    composed = compose_config([])
    OmegaConf.set_struct(composed, False)
    del composed.model["lora"]  # a user's own model file without the lora block
    with pytest.raises(ConfigError, match=r"config key model\.lora has no value: every shipped group file sets it"):
        schema.typed(composed)


def test_debug_shows_the_traceback(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("HARNESS_DEBUG", "1")
    with pytest.raises(ConfigError, match="train.steps='two'"):
        train_cli.main([*BASE, f"run.dir={tmp_path / 'runs'}", "train.steps=two"])
    assert not (tmp_path / "runs").exists()


def test_a_failed_overwrite_leaves_the_old_run(tmp_path, capsys, cache_dir):
    old = tmp_path / "runs" / "keep"
    old.mkdir(parents=True)
    (old / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main([*BASE, f"run.dir={tmp_path / 'runs'}", "run.name=keep", "run.overwrite=true", "train.steps=two"])
    assert exit_info.value.code == 2
    assert "train.steps='two'" in capsys.readouterr().err
    assert sorted(p.name for p in old.iterdir()) == ["metrics.jsonl"] and (old / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_compare_refuses_a_bad_override_before_its_first_run(tmp_path, capsys, cache_dir):
    from rlsd_harness.cli.compare import main as compare_main

    out = tmp_path / "smoke"
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["experiment=smoke", f"out={out}", *BASE, "train.steps=two"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "train.steps='two' (set on the command line)" in err, err
    assert not out.exists()


def test_dry_run_checks_the_geometry_of_the_planned_cluster(capsys):
    from rlsd_harness.cli.compare import main as compare_main

    with pytest.raises(SystemExit) as exit_info:
        compare_main(["experiment=paper_main_table", "dry_run=true", "train.micro_batch_size=3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "train.prompts_per_step=256 / 32 ranks" in err, err
    assert "train.micro_batch_size=3 (set on the command line)" in err


# ----------------------------------------------------------------------------- data files


@pytest.fixture
def data_dir(tmp_path) -> Path:
    from PIL import Image

    d = tmp_path / "data"
    d.mkdir()
    Image.new("RGB", (32, 32), "red").save(d / "a.png")
    return d


def _rows(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"question": "How many?", "answer": "3", "images": ["a.png"]}

DATA_CASES = {
    "empty file": (lambda d: (d / "t.jsonl").write_bytes(b""), ["t.jsonl"]),
    "not UTF-8": (lambda d: (d / "t.jsonl").write_bytes(b'{"question": "caf\xe9", "answer": "1", "images": ["a.png"]}\n'),
                  ["t.jsonl", "UTF-8"]),
    "broken JSON": (lambda d: (d / "t.jsonl").write_text(json.dumps(GOOD) + '\n{"question": "q", \n'), ["t.jsonl", "line 2"]),
    "list answer": (lambda d: _rows(d / "t.jsonl", {**GOOD, "answer": ["1", "2"]}), ["t.jsonl", "['1', '2']"]),
    "no answer": (lambda d: _rows(d / "t.jsonl", {"question": "q", "images": ["a.png"]}), ["t.jsonl", "answer"]),
    "missing image": (lambda d: _rows(d / "t.jsonl", {**GOOD, "images": ["nope.png"]}), ["t.jsonl", "nope.png"]),
    "wrong suffix": (lambda d: (d / "t.csv").write_text("question,answer\n"), ["t.csv", ".jsonl"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file_is_named_before_anything_is_written(case, data_dir, tmp_path, capsys, cache_dir):
    make, expected = DATA_CASES[case]
    make(data_dir)
    path = next(p for p in data_dir.iterdir() if p.name.startswith("t."))
    err = train_refuses(tmp_path, capsys, "data=local", f"data.path={path}", "data.verifier=exact")
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"


def test_missing_held_out_file_is_named_as_test_path(data_dir, tmp_path, capsys, cache_dir):
    train = _rows(data_dir / "train.jsonl", GOOD)
    err = train_refuses(tmp_path, capsys, "data=local", f"data.path={train}", f"data.test_path={data_dir}/gone.jsonl",
                        "train.eval_every=1")
    assert "data.test_path" in err and "gone.jsonl" in err and "data.path " not in err


def test_one_image_given_as_a_string_is_one_image(data_dir):
    from rlsd_harness.data import LocalData

    (example,) = LocalData(str(_rows(data_dir / "t.jsonl", {**GOOD, "images": "a.png"}))).prompts(1, 1)
    assert len(example.images) == 1 and example.images[0].size == (32, 32)


# ----------------------------------------------------------------------------- model folders


@pytest.fixture
def damaged(tiny_dir, tmp_path):
    """A copy of the tiny model folder and a function that rewrites its weights."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)

    def rewrite(change) -> Path:
        weights = load_file(folder / "model.safetensors")
        change(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        return folder

    return rewrite


def _drop_one(w: dict) -> None:
    del w[sorted(w)[3]]


def _nan_one(w: dict) -> None:
    name = sorted(w)[3]
    w[name] = w[name].clone()
    w[name].view(-1)[0] = float("nan")


@pytest.mark.parametrize("change,expected", [(_drop_one, "missing keys"), (_nan_one, "NaN")])
def test_training_refuses_incomplete_or_nan_weights(change, expected, damaged, tmp_path, capsys):
    folder = damaged(change)
    err = train_refuses(tmp_path, capsys, f"model.path={folder}")
    assert expected in err and f"model.path={folder}" in err


@pytest.mark.parametrize("change,expected", [(_drop_one, "missing keys"), (_nan_one, "NaN")])
def test_evaluate_refuses_incomplete_or_nan_weights(change, expected, damaged, tmp_path, capsys):
    folder = damaged(change)
    out = tmp_path / "eval-out"
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main([f"checkpoint={folder}", f"out={out}", "benchmarks=[embedded]", "limit=2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and expected in err and str(folder) in err, err
    assert not out.exists()


def test_evaluate_checks_its_config_keys(tiny_dir, tmp_path, capsys):
    out = tmp_path / "eval-out"
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main([f"checkpoint={tiny_dir}", f"out={out}", "eval.batch=0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "eval.batch=0" in err and ">= 1" in err, err
    assert not out.exists()


def test_load_model_refuses_missing_keys(damaged):
    from rlsd_harness.models import WeightsError, load_model

    with pytest.raises(WeightsError, match="missing keys"):
        load_model(damaged(_drop_one))


# ----------------------------------------------------------------------------- verifiers


def test_math_verifier_is_bounded_on_adversarial_answers():
    from rlsd_harness.verifier import MathVerifier

    verify = MathVerifier()
    adversarial = {
        "nested fractions": "\\frac{1}{" * 60 + "2" + "}" * 60,  # 8.5 s with math-verify's own 5 s limits
        "power tower": "9^{9^{9^{9}}}",
        "huge exponent": "7^{123456789}",
        "factorial": "(10^{8})!",
        "deep parentheses": "(" * 300 + "1" + ")" * 300,
        "slow expansion": "(x+1)^{200}-(x-1)^{200}",  # passes the screen; stopped by the deadline
    }
    for name, answer in adversarial.items():
        t0 = time.perf_counter()
        verdict = verify(f"so \\boxed{{{answer}}}", "5")
        seconds = time.perf_counter() - t0
        assert verdict.reward == 0.0 and seconds < 1.0, (name, seconds)
    assert verify("\\boxed{\\frac{1}{2}}", "0.5").reward == 1.0  # ordinary answers still compare symbolically
    assert verify("\\boxed{e^{-x^{2}}}", "e^{-x^2}").reward == 1.0


def test_math_verifier_off_the_main_thread_is_bounded_by_its_screen():
    from rlsd_harness.verifier import MathVerifier

    verify, seconds = MathVerifier(), {}

    def work() -> None:
        for answer in ("\\frac{1}{" * 60 + "2" + "}" * 60, "7^{123456789}", "9^{9^{9}}"):
            t0 = time.perf_counter()
            verify(f"\\boxed{{{answer}}}", "5")
            seconds[answer[:12]] = time.perf_counter() - t0

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and max(seconds.values()) < 1.0, seconds


@pytest.mark.parametrize("name", ["exact", "math"])
def test_huge_integers_compare_exactly(name):
    from rlsd_harness.verifier import VERIFIERS

    verify = VERIFIERS[name]()
    big = "7" * 5000  # beyond CPython's 4,300-digit int-conversion limit
    assert verify(f"\\boxed{{{big}}}", big).reward == 1.0
    assert verify(f"\\boxed{{{big[:-1]}8}}", big).reward == 0.0
    assert verify(f"\\boxed{{+00{big}}}", big).reward == 1.0
    assert verify("\\boxed{-0}", "0").reward == 1.0


def test_exact_verifier_is_bounded_on_a_huge_response():
    from rlsd_harness.verifier import ExactVerifier

    response = "\\boxed{" * 200_000 + "x" * 5_000_000
    t0 = time.perf_counter()
    assert ExactVerifier()(response, "1").reward == 0.0
    assert time.perf_counter() - t0 < 1.0


def test_nan_check_reads_every_tensor(tmp_path):
    """The NaN scan is not fooled by a finite first tensor (it streams all of them)."""
    from safetensors.torch import save_file

    from rlsd_harness.models import _iter_tensors

    save_file({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}, tmp_path / "w.safetensors")
    assert [n for n, t in _iter_tensors(tmp_path / "w.safetensors") if not torch.isfinite(t).all()] == ["b"]


def test_every_documented_decoding_passes_the_schema():
    from rlsd_harness.config import compose_config
    from rlsd_harness.evaluation.heldout import DECODINGS
    from rlsd_harness.training.preflight import check_config

    assert "sample" in DECODINGS
    for name in DECODINGS:
        extra = ["eval.k=1"] if name == "greedy" else []
        check_config(compose_config([f"eval.decoding={name}", *extra]))
