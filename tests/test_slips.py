"""A new user's slips on the command line: each is answered in one line, exit status 2, before anything is
written, naming the bad key or value, the nearest valid one and the valid ones. Nothing here trains."""

from __future__ import annotations

import pytest

from rlsd_harness.cli import compare as compare_cli
from rlsd_harness.cli import report as report_cli
from rlsd_harness.cli import train as train_cli


def refused(main, capsys, *args: str) -> str:
    """Run a command line; assert exit status 2 and one line on stderr without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


# (arguments of rlsd-train, text the one line must hold: the key, the nearest valid key, the valid keys)
TRAIN_SLIPS = {
    "eps_w under grpo": (["algorithm=grpo", "algorithm.params.eps_w=0.2"],
                         ["'algorithm.params.eps_w'", "for algorithm=grpo", "is a key of algorithm=rlsd",
                          "valid keys under algorithm.params: clip_dual, clip_high, clip_low"]),
    "typo under params": (["algorithm.params.clip_rati=0.2"],
                          ["'algorithm.params.clip_rati'", "nearest: algorithm.params.clip_", "kl_coef"]),
    "typo under teacher": (["algorithm=rlsd", "algorithm.teacher.wieghts=sync"],
                           ["'algorithm.teacher.wieghts'", "nearest: algorithm.teacher.weights", "sync_every"]),
    "typo under train": (["train.stpes=3"], ["'train.stpes'", "nearest: train.steps", "group_size"]),
    "typo at the top": (["sed=1"], ["'sed'", "nearest: seed"]),
    "typo of a group choice": (["algorithm=rlds"], ["'rlds'", "nearest: rlsd", "grpo_opsd"]),
    "key below a value": (["train.steps.x=1"], ["'train.steps.x'", "train.steps is 30"]),
    "mapping set to a value": (["train.budget=5"], ["train.budget is a mapping", "train.budget.kind"]),
    "plus on an existing key": (["+train.steps=4"], ["exists already", "train.steps=4"]),
    "unclosed list": (["eval.budget_points=[0.5,1"], ["cannot parse", "eval.budget_points=[0.5,1"]),
}


@pytest.mark.parametrize("case", list(TRAIN_SLIPS))
def test_train_slip_is_one_line(case, capsys, tmp_path):
    args, wanted = TRAIN_SLIPS[case]
    err = refused(train_cli.main, capsys, f"run.dir={tmp_path / 'runs'}", *args)
    for text in wanted:
        assert text in err, err
    assert "+algorithm" not in err and "To append" not in err  # hydra's advice to add the key with '+'
    assert not (tmp_path / "runs").exists()


def test_compare_experiment_keys_are_named(capsys):
    """`seeds=[0,1]` gave an 81-line traceback: the experiment's `seed=` override matched hydra's message."""
    err = refused(compare_cli.main, capsys, "seeds=[0,1]", "dry_run=true")
    assert "seeds is a key of the experiment file" in err and "embedded.yaml" in err, err
    err = refused(compare_cli.main, capsys, "experiment=smoke", "methods=[grpo,rlsd]", "dry_run=true")
    assert "methods is a key of the experiment file" in err and "smoke.yaml" in err, err


def test_compare_unknown_argument_names_the_nearest(capsys):
    err = refused(compare_cli.main, capsys, "experimnt=smoke", "dry_run=true")
    assert "'experimnt'" in err and err.endswith("nearest: experiment (config keys take their sections' keys, "
                                                 "e.g. train.steps=50)"), err
    err = refused(compare_cli.main, capsys, "experiment=smok", "dry_run=true")
    assert "unknown experiment 'smok'" in err and "nearest: smoke" in err, err


def test_report_unknown_argument_names_the_nearest(capsys):
    err = refused(report_cli.main, capsys, "foldr=results/embedded")
    assert "'foldr'" in err and "nearest: folder" in err, err


def test_list_split_by_the_shell_is_joined(capsys):
    """`eval.budget_points=[0.5, 1.0]` unquoted reaches the command as two arguments; they are one list."""
    from rlsd_harness.cli import split_args

    own, overrides = split_args(["eval.budget_points=[0.5,", "1.0]", "train.steps=2"], "rlsd-train", "", {})
    assert overrides == ["eval.budget_points=[0.5,1.0]", "train.steps=2"]
