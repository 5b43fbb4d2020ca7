"""Metric names and where metrics go.

Every training metric has one name in one namespace, the same for every objective, so a cross-method plot
never silently misses a method: `rollout/` (what was sampled and how it was rewarded), `actor/` (the
policy update, including each objective's own quantities), `teacher/`, `eval/` (held-out evaluation) and
`ledger/` (compute: `ledger/cum/...` since the start, `ledger/step/...` in this step). `step` (optimizer
steps) and `rollout_step` (rollout batches) index the lines. GLOSSARY says what each key means;
docs/metrics.md is generated from it (`python -m rlsd_harness.training.metrics`).

Sinks: metrics.jsonl is always written; `run.trackers` adds tensorboard, wandb (in the mode the user set up), mlflow
or trackio, each imported only when asked for.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Protocol

from rlsd_harness.training.durable import kill_point
from rlsd_harness.trees import flatten

ROLLOUT = ("reward", "reward_std_in_group", "mixed_groups", "response_length", "truncated", "leakage")
TEACHER = {"teacher_kl": "kl", "teacher_updates": "updates"}
INDEX = ("step", "rollout_step")

GLOSSARY: dict[str, str] = {
    "step": "optimizer steps done",
    "rollout_step": "rollout batches done (one line of metrics.jsonl each)",
    "rollout/reward": "mean verifier reward of the step's sampled responses",
    "rollout/reward_std_in_group": "standard deviation of the rewards within a group, averaged over groups",
    "rollout/mixed_groups": "fraction of groups whose responses got different rewards (the only ones with a GRPO signal)",
    "rollout/response_length": "mean response length in tokens",
    "rollout/truncated": "fraction of responses that reached rollout.max_new_tokens",
    "rollout/leakage": "fraction of responses that mention privileged information or state the answer before any step",
    # train.dynamic_sampling.enabled only (training/dynamic_sampling.py); counts over all ranks; every dropped and
    # extra rollout is in ledger/step/tokens/generated and flops/rollout
    "rollout/groups_dropped": "dynamic sampling: groups sampled this step whose rewards were all equal (dropped)",
    "rollout/extra_rollouts": "dynamic sampling: responses sampled this step beyond the first rollout (refill rounds)",
    "rollout/refill_rounds": "dynamic sampling: refill rounds this step (at most train.dynamic_sampling.max_rounds)",
    "rollout/groups_short": "dynamic sampling: groups the batch still lacked after the last round, filled with "
                            "dropped groups (on_short=fill)",
    "rollout/groups_surplus": "dynamic sampling: groups with unequal rewards sampled beyond what the batch needed "
                              "(discarded; a full rank's share of a synced ZeRO-3 round)",
    "actor/loss": "the objective's loss (token-weighted over micro-batches)",
    "actor/entropy": "policy entropy on the sampled responses (nats per token)",
    "actor/lr": "learning rate after the step",
    "actor/rollout_logp_gap": "mean |log p_trainer - log p_rollout| on the sampled tokens (engine mismatch)",
    "actor/rank_imbalance_before": "max/mean tokens per rank before rank balancing",
    "actor/rank_imbalance_after": "max/mean tokens per rank after rank balancing",
    "actor/advantage_mean": "mean token advantage on the loss mask",
    "actor/pg_clipfrac": "fraction of tokens whose PPO ratio was clipped",
    "actor/pg_clipfrac_dual": "fraction of tokens hit by the dual clip (negative advantages)",
    "actor/ratio_mean": "mean importance ratio pi/pi_old",
    "actor/is_ratio_mean": "mean importance ratio of a distillation objective's off-policy correction",
    "actor/rollout_is_weight_mean": "mean truncated importance weight against the rollout engine's log-probs",
    "actor/kl_ref": "k3 KL to the reference policy",
    "actor/zero_std_groups": "fraction of groups whose rewards are all equal (zero advantage)",
    "actor/lambda": "RLSD's mixing weight of the evidence term at this step",
    "actor/delta_mean": "RLSD: mean teacher-minus-student log-prob on the sampled tokens (this and the three below: only at steps with λ > 0, where the teacher is run)",
    "actor/delta_std": "RLSD: standard deviation of that gap",
    "actor/w_clip_low_frac": "RLSD: fraction of tokens whose evidence weight hit 1 - eps_w",
    "actor/w_clip_high_frac": "RLSD: fraction of tokens whose evidence weight hit 1 + eps_w",
    "actor/distill_per_token": "distillation loss per response token",
    "actor/rows_with_teacher": "fraction of rows with a teacher context (SDPO: a successful sibling exists)",
    "actor/grpo_loss": "GRPO+OPSD: the GRPO part of the loss",
    "actor/opsd_loss": "GRPO+OPSD: the OPSD part of the loss",
    "teacher/kl": "log p_student - log p_teacher on the sampled tokens, averaged over tokens with a teacher",
    "teacher/updates": "teacher weight updates so far (sync or EMA)",
    "eval/seconds": "wall seconds of all the step's held-out evaluations",
}
# Held-out evaluation (training/evals.py): eval/<name>/<measure>, <name> the split (validation, test) or a
# benchmark key of train.eval_benchmarks.
EVAL_GLOSSARY = {
    "mean@k": "accuracy over k sampled responses per item: the mean over items of the fraction correct",
    "pass@1": "greedy pass@1: one greedy response per item (eval.greedy, or eval.decoding=greedy)",
    "pass@<k>": "unbiased pass@k (Chen et al. 2021) from the k samples, when k > 1",
    "n": "items evaluated", "k": "samples per item",
    "file": "the per-item records, relative to the run folder: evals/<name>-step<rollout_step>.jsonl",
    "budget_point": "the budget fraction of a budget-point evaluation (absent for routine ones)",
}
LEDGER_GLOSSARY = {
    "flops/total": "analytic FLOPs of every role (2N per forward token, 4N per backward token, plus attention)",
    "flops/rollout": "FLOPs of generation", "flops/policy_fwd": "FLOPs of the policy's training forwards",
    "flops/policy_bwd": "FLOPs of the policy's backwards", "flops/teacher": "FLOPs of the teacher's forwards",
    "flops/ref": "FLOPs of the reference policy's forwards", "flops/logprobs": "FLOPs of old-policy log-prob forwards",
    "tokens/generated": "response tokens sampled", "tokens/fwd_policy": "tokens through the policy's training forwards",
    "tokens/bwd_policy": "tokens through the policy's backwards", "tokens/fwd_teacher": "tokens through the teacher",
    "tokens/fwd_ref": "tokens through the reference policy", "tokens/fwd_logprobs": "tokens through old-policy forwards",
    "flops/probe": "FLOPs of GRPO's frozen probe teacher, which measures teacher/kl (kept off flops/total)",
    "tokens/fwd_probe": "tokens through GRPO's probe teacher", "prompts": "prompts used",
}
PHASES = ("step", "rollout", "reward", "logprobs", "teacher", "ref", "update", "sync", "probe", "other")


def glossary_entry(key: str) -> str | None:
    """What `key` means, or None when it is not a documented metric."""
    if key in GLOSSARY:
        return GLOSSARY[key]
    for scope, word in (("ledger/cum/", "since the start"), ("ledger/step/", "in this step")):
        if key.startswith(scope):
            rest = key[len(scope):]
            if rest.startswith("time/") and rest[5:] in PHASES:
                return f"wall seconds of phase {rest[5:]} {word}"
            if rest in LEDGER_GLOSSARY:
                return f"{LEDGER_GLOSSARY[rest]}, {word}"
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "eval" and parts[1]:
        measure = "pass@<k>" if re.fullmatch(r"pass@([2-9]|\d\d+)", parts[2]) else parts[2]
        if measure in EVAL_GLOSSARY:
            return f"{EVAL_GLOSSARY[measure]} ({parts[1]})"
    return None


def namespaced(metrics: dict[str, Any]) -> dict[str, Any]:
    """The trainer's flat names -> their namespace. Ledger keys arrive as cum/... and step/..."""
    out = {}
    for key, value in metrics.items():
        if key in INDEX or key.startswith(("eval/", "rollout/", "actor/", "teacher/", "ledger/")):
            out[key] = value
        elif key.startswith(("cum/", "step/")):
            out[f"ledger/{key}"] = value
        elif key in ROLLOUT:
            out[f"rollout/{key}"] = value
        elif key in TEACHER:
            out[f"teacher/{TEACHER[key]}"] = value
        else:
            out[f"actor/{key}"] = value
    return out


class Sink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """metrics.jsonl: one line per rollout step, written whole (a kill mid-write cuts at most the last line)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, metrics: dict[str, float], step: int) -> None:
        line = json.dumps(metrics) + "\n"
        with self.path.open("a") as f:
            kill_point("metrics", lambda: (f.write(line[: len(line) // 2]), f.flush()))
            f.write(line)

    def close(self) -> None:
        pass


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(float(v)) and k not in INDEX}


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """wandb's mode is the user's: WANDB_MODE, else what `wandb online` / `wandb offline` / `wandb login` set
    up (wandb reads both itself); this code forces none."""

    def __init__(self, run_dir: Path, name: str, config: dict):
        import wandb

        self.run = wandb.init(dir=str(run_dir), name=name, config=config, reinit=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import mlflow

        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:250] for k, v in flatten(config, keep_empty=False).items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in _scalars(metrics).items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioSink:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import trackio

        self.trackio = trackio
        trackio.init(project=run_dir.parent.name, name=name, config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(_scalars(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# The package each tracker imports (tensorboard: torch.utils.tensorboard needs the tensorboard package).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_trackers(trackers: list[str]) -> None:
    """Each tracker of `run.trackers` is known and its package installed; checked before the run folder
    exists, so that installing it and running the same command again needs no run.overwrite=true."""
    import importlib.util

    from rlsd_harness.config import ConfigError

    for name in trackers:
        if name not in TRACKERS:
            raise ConfigError(f"unknown run.trackers entry {name!r}; valid: {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            raise ConfigError(f"run.trackers=[{name}] needs the {TRACKER_PACKAGES[name]} package, which is not "
                              f"installed: pip install {TRACKER_PACKAGES[name]} (or drop {name} from run.trackers)")




def open_sinks(run_dir: Path, trackers: list[str], config: dict) -> list[Sink]:
    """metrics.jsonl, then each tracker asked for (a missing package is named with its install command)."""
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl")]
    for name in trackers:
        if name not in TRACKERS:
            raise ValueError(f"unknown run.trackers entry {name!r}; valid: {', '.join(TRACKERS)}")
        try:
            if name == "tensorboard":
                sinks.append(TensorBoardSink(run_dir / "tensorboard"))
            elif name == "wandb":
                sinks.append(WandbSink(run_dir, run_dir.name, config))
            elif name == "mlflow":
                sinks.append(MlflowSink(run_dir, run_dir.name, config))
            else:
                sinks.append(TrackioSink(run_dir, run_dir.name, config))
        except ImportError as e:
            raise ModuleNotFoundError(f"run.trackers=[{name}] needs the {name} package: pip install {name}") from e
    return sinks


def glossary_markdown() -> str:
    lines = ["# Metrics", "", "Every key of a run's metrics.jsonl (and of its tracker logs). Generated from",
             "`rlsd_harness/training/metrics.py`: `python -m rlsd_harness.training.metrics > docs/metrics.md`.", "",
             "| key | meaning |", "| --- | --- |"]
    lines += [f"| `{k}` | {v} |" for k, v in GLOSSARY.items()]
    lines += [f"| `ledger/cum/{k}`, `ledger/step/{k}` | {v} (since the start / in this step) |"
              for k, v in LEDGER_GLOSSARY.items()]
    lines += [f"| `ledger/cum/time/{p}`, `ledger/step/time/{p}` | wall seconds of phase {p} |" for p in PHASES]
    lines += [f"| `eval/<name>/{m}` | {v} |" for m, v in EVAL_GLOSSARY.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(glossary_markdown(), end="")
