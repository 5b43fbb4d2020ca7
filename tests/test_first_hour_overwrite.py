"""After an interrupted `run.overwrite=true` the old run waits in the hidden `.<name>.overwritten/` folder: every
refusal names it and says how to restore it, and overwriting again says, in one line, that it will be deleted
(the refusal used to suggest run.overwrite=true alone, which then deleted it silently)."""

from __future__ import annotations

import pytest

from rlsd_harness.config import compose_config
from rlsd_harness.training.run import run
from rlsd_harness.training.trainer import Trainer

TINY = ["model.warmup=null", "data.verifier=parity", "train.prompts_per_step=2", "train.group_size=4",
        "train.micro_batch_size=8", "rollout.max_new_tokens=8", "train.eval_every=0", "train.save_every=1",
        "train.progress=false", "train.steps=1", "eval.budget_points=[]"]


class Killed(BaseException):
    """What a SIGKILL leaves: no `except Exception` handler runs, so nothing is moved back."""


def train(tmp_path, *extra, log=None):
    return run(compose_config([*TINY, f"run.dir={tmp_path}", "run.name=o", *extra]), log=log or (lambda m: None))


def test_an_interrupted_overwrite_names_the_kept_run_and_never_deletes_it_silently(tmp_path, tiny_dir, monkeypatch):
    run_dir = train(tmp_path)
    weights = (run_dir / "final" / "model.safetensors").read_bytes()
    kept = tmp_path / ".o.overwritten"

    def killed(self):
        raise Killed

    original = Trainer.step
    monkeypatch.setattr(Trainer, "step", killed)
    with pytest.raises(Killed):  # killed in its first step: the old run is aside, the new one has no checkpoint
        train(tmp_path, "run.overwrite=true")
    monkeypatch.setattr(Trainer, "step", original)
    assert (kept / "final" / "model.safetensors").read_bytes() == weights

    with pytest.raises(FileNotFoundError) as refused:
        train(tmp_path, "run.resume=true")
    message = str(refused.value)
    assert str(kept) in message and f"rm -r {run_dir} && mv {kept} {run_dir}" in message, message
    assert "deletes it" in message
    with pytest.raises(FileExistsError, match=r"\.o\.overwritten.*restore it with"):
        train(tmp_path)

    lines: list[str] = []
    train(tmp_path, "run.overwrite=true", log=lines.append)
    about_kept = [line for line in lines if str(kept) in line]
    assert about_kept and "deleted once this run writes its first checkpoint" in about_kept[0], lines
    assert any(line.startswith("deleted the overwritten run") for line in about_kept), lines
    assert not kept.exists()
