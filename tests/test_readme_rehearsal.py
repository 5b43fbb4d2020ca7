"""The README's commands for the paper's main table, as written there (`<!-- rehearse: NAME -->` blocks).

Fast: every command is parsed by its own launcher's parser (DeepSpeed's runner, torchrun) and by the harness's
command line, and its config is composed and validated at the rehearsal's tiny size, so a flag the launcher
does not know (DeepSpeed's is `--module`, not `-m`) or a key the config lacks fails here. Slow (`-m slow`): the
whole procedure runs, 2 ranks on gloo under ZeRO-3, training, the evaluation of every budget-point policy on
the five benchmarks (fixture rows), and the table (bench/paper_rehearsal.py). The several-nodes form is parsed
and validated only: DeepSpeed's launcher reaches every host of a hostfile over ssh, even localhost, and this
machine runs no ssh server."""

from __future__ import annotations

import pytest

from bench import paper_rehearsal as rehearsal
from rlsd_harness.cli import split_args


@pytest.fixture(scope="module")
def assets(tmp_path_factory, cache_dir):
    return rehearsal.make_assets(tmp_path_factory.mktemp("rehearsal"), "fixtures")


def test_the_readme_documents_every_step_of_the_paper_table():
    blocks = rehearsal.readme_blocks()
    assert set(blocks) == {"train", "train-multinode", "evaluate", "table", "plan"}
    assert all(len(commands) == 1 for commands in blocks.values()), blocks


def _launched(words: list[str]):
    """(module, its arguments) as the launcher itself parses the README's command line."""
    if words[0] == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        args = parse_args(words[1:])
        assert args.module, "the deepspeed launcher runs a module only with --module"
        return args.user_script, args.user_args
    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(words[1:])
        assert args.module
        return args.training_script, args.training_script_args
    raise AssertionError(f"unexpected launcher {words[0]!r}")


@pytest.mark.parametrize("block", ["train", "train-multinode"])
def test_training_commands_parse_and_validate(block, assets, monkeypatch):
    from rlsd_harness.cli import train
    from rlsd_harness.training import run
    from rlsd_harness.training.preflight import check_data, check_model, read_config

    (words,) = rehearsal.readme_blocks()[block]
    cmd = rehearsal.command(block, words, assets)
    module, args = _launched(["deepspeed", *cmd[1:]])  # the launcher's path swapped back to its name
    assert module == "rlsd_harness.cli.train"

    composed = []
    monkeypatch.setattr(run, "run", lambda cfg, resume_command: composed.append(cfg))
    train.main(["--local_rank=0", *args])  # as each rank receives them
    (cfg,) = composed
    typed = read_config(cfg, world=2)
    check_model(typed)
    check_data(typed)
    assert cfg.deepspeed.zero_stage == 3 and cfg.model.arch == "qwen3_vl"
    assert list(cfg.eval.budget_points) == [0.25, 0.5, 0.75, 1.0]  # the experiment's, as the table reads them
    assert cfg.train.save_budget_policies is True  # what step 2 evaluates
    assert cfg.train.gradient_checkpointing is True  # what makes the preset fit (the plan's test)


def test_the_evaluation_command_parses_and_validates(assets):
    from rlsd_harness.cli import evaluate
    from rlsd_harness.config import compose_config
    from rlsd_harness.training.preflight import check_evaluation

    (words,) = rehearsal.readme_blocks()["evaluate"]
    assert "rollout=vllm" in words  # the README evaluates with vLLM; the rehearsal swaps in the HF engine
    cmd = rehearsal.command("evaluate", words, assets, limit=2)
    module, args = _launched(["torchrun", *cmd[1:]])
    assert module == "rlsd_harness.cli.evaluate"
    own, overrides = evaluate.parse_args(args)
    assert own["study"].endswith("paper") and len(own["benchmarks"]) == 5
    check_evaluation(compose_config(overrides))


def test_the_table_and_plan_commands_parse(assets, capsys):
    from rlsd_harness.cli import compare, report

    (words,) = rehearsal.readme_blocks()["table"]
    own, _ = split_args(rehearsal.command("table", words, assets)[1:], "rlsd-report", "", report.OWN,
                        takes_overrides=False)
    assert own["table"] == "paper"
    (words,) = rehearsal.readme_blocks()["plan"]
    assert words[0] == "rlsd-compare"
    compare.main(words[1:])
    assert "per GPU" in capsys.readouterr().out


def test_an_unknown_launcher_flag_fails_here():
    """The README's old line (`deepspeed ... -m rlsd_harness.cli.train`) is what this test guards against."""
    (words,) = rehearsal.readme_blocks()["train"]
    old = ["-m" if w == "--module" else w for w in words]
    with pytest.raises(SystemExit):
        _launched(old)


@pytest.mark.slow
def test_the_readme_procedure_runs_end_to_end(assets):
    import pandas as pd

    seconds = rehearsal.rehearse(assets, ["grpo", "rlsd"], [0], benchmarks=None, limit=4)
    study = assets.study
    for run in ("grpo-s0", "rlsd-s0"):
        fractions = sorted(p.name for p in (study / "runs" / run / "budget_policies").iterdir())
        assert fractions == ["0.00", "0.25", "0.50", "0.75", "1.00"]
        assert sorted(p.name for p in (study / "runs" / run / "benchmarks").iterdir()) == fractions
    text = (study / "paper_table.md").read_text()
    assert "| method | seeds | MMMU | MathVista | MathVision | ZeroBench | WeMath | average |" in text
    table = pd.read_csv(study / "paper_table.csv")
    assert set(table["fraction"].astype(str).str[:4]) >= {"0.0", "1.0"}
    print(f"rehearsal seconds per block: {seconds}")
