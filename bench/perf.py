"""`python -m bench.perf [--steps N] [--warmup W] [--out perf.json] [key=value ...]`: step-time benchmark.

Not a test: it measures, on the warmed-up tiny policy (`policy_path(cfg.model, cfg.data)`),
  * our GRPO step (`rlsd_harness.training.trainer.Trainer`, DeepSpeed ZeRO-0, the HF rollout engine) per phase,
  * TRL's `GRPOTrainer` at the same settings: same model folder (same initial weights), same processor,
    prompts x samples, forced completion length (min_new_tokens = max_new_tokens on both sides), temperature,
    top-p/top-k, lr / AdamW / grad clip, beta = 0, one process, no vLLM, one optimizer step per rollout batch,
    the same prompts in the same order, and a reward equal to ours (exact integer match of the last \\boxed{}),
  * our RLSD step against our GRPO step.
Goals: TRL / ours (GRPO step) >= 2.0 and RLSD / GRPO (ours, step) <= 1.15. `--rollout-decode generate` runs our
rollouts through per-row Hugging Face `generate` instead of the prompt-once decode loop (the same samples), to
measure what that loop saves.
The three are interleaved (TRL, ours GRPO, ours RLSD, TRL, ours RLSD, ours GRPO, ...) in one process: our steps
run inside a TRL callback between two TRL optimizer steps, so the same machine load falls on all three. The first
`--warmup` steps of each are dropped; the table shows medians of the rest.

Extra `key=value` arguments are hydra overrides of rlsd_harness/config/train.yaml (e.g. `rollout.max_new_tokens=64`).
GRPO's teacher probe (a diagnostic forward, off the compute budget) is switched off: TRL has nothing like it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

DECODE_MODES = ("shared", "generate")  # rlsd_harness.rollout.hf.DECODE_MODES, not imported: torch must load after the idle-cores probe
GOALS = {"TRL / ours (GRPO step)": (">=", 2.0), "RLSD / GRPO (ours, step)": ("<=", 1.15),
         "RLSD / GRPO (ours, median of paired)": ("<=", 1.15)}
PHASE_ORDER = ("rollout", "reward", "logprobs", "teacher", "ref", "update", "sync", "probe", "other")
ALWAYS_SHOWN = ("rollout", "reward", "logprobs", "teacher", "update", "other")


def _cpu_sample() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, all CPU seconds, CPU seconds of this process)."""
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)  # iowait is reported on Linux only
    own = psutil.Process().cpu_times()
    return sum(machine) - idle, sum(machine), own.user + own.system


def _other_cores(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Cores kept busy by other processes between two `_cpu_sample`s (nan where the interval is empty)."""
    if b[1] <= a[1]:
        return float("nan")
    wall = (b[1] - a[1]) / (psutil.cpu_count() or 1)
    return max(0.0, ((b[0] - a[0]) - (b[2] - a[2])) / wall)


def _busy_cores(seconds: float = 1.0) -> float:
    a = _cpu_sample()
    time.sleep(seconds)
    return _other_cores(a, _cpu_sample())


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="measured steps per side, after the warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per side, discarded (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="forced completion length on both sides (default: rollout.max_new_tokens of the config)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default 0 = auto: all cores when the machine is idle, fewer when other "
                   "processes are busy; oversubscribed OpenMP threads slow steps 10x or more)")
    p.add_argument("--rollout-decode", choices=DECODE_MODES, default="shared",
                   help="our rollout: shared = each prompt prefilled once, its samples decoded over copies of its KV "
                   "cache (default); generate = every row through Hugging Face generate (the same samples)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL: only our GRPO vs RLSD")
    p.add_argument("--no-rlsd", action="store_true", help="skip the RLSD / GRPO ratio")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the benchmark, cProfile N more GRPO steps of ours and print the top calls")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)} (hydra overrides are key=value)")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args, rest


# ---------------------------------------------------------------------------------------------- our side
class Ours:
    """One of our Trainers, timed per step (wall clock of `Trainer.step`) and per ledger phase."""

    def __init__(self, label: str, cfg: Any, path: Path, data, min_new_tokens: int, decode: str = "shared") -> None:
        from rlsd_harness.models import load_model, load_processor
        from rlsd_harness.training.trainer import Trainer

        self.label = label
        self.trainer = Trainer(cfg, load_model(path), load_processor(path), data, log=lambda m: None)
        self.trainer.sampling.min_new_tokens = min_new_tokens  # forced length: EOS is masked until then
        self.trainer.rollout.decode = decode
        self.steps: list[dict[str, float]] = []

    def step(self) -> None:
        t0 = time.perf_counter()
        m = self.trainer.step()
        wall = time.perf_counter() - t0
        rec = {k[len("ledger/step/time/"):]: v for k, v in m.items()
               if k.startswith("ledger/step/time/") and k != "ledger/step/time/step"}
        rec["other"] = wall - sum(rec.values())  # metrics, batch assembly, advantage computation outside phases
        rec["step"] = wall
        rec["tokens"] = m["ledger/step/tokens/generated"]
        rec["flops"] = m["ledger/step/flops/total"]  # analytic, the ledger's: what the budget charges
        rec["mean_reward"] = m["rollout/reward"]
        self.steps.append(rec)


# ---------------------------------------------------------------------------------------------- TRL side
def _trl_dataset(data, steps: int, n_prompts: int):
    """Prompts of our steps 1..steps, in order (TRL reads them unshuffled): step k sees our step k's prompts."""
    from datasets import Dataset

    rows = []
    for s in range(1, steps + 1):
        for p in data.prompts(s, n_prompts):
            if len(p.images) != 1:
                raise ValueError("the TRL side feeds one image per prompt (an `image` column)")
            rows.append({"prompt": [{"role": "user", "content": p.question}], "image": p.images[0],
                         "answer": str(p.answer)})
    return Dataset.from_list(rows)


def _exact_reward(verifier):
    def exact_boxed(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [verifier(t, a).reward for t, a in zip(texts, answer)]

    return exact_boxed


def build_trl(cfg: Any, path: Path, data, total_steps: int, max_new: int, out_dir: Path, callbacks: list,
              use_cpu: bool = True, bf16: bool = False):
    """TRL's GRPOTrainer at our settings (on CUDA with `use_cpu=False`; `bf16`: HF Trainer's bf16 autocast)."""
    from trl import GRPOConfig, GRPOTrainer

    from rlsd_harness.models import load_model, load_processor
    from rlsd_harness.verifier import build_verifier

    tcfg, optim, ro, algo = cfg.train, cfg.optim, cfg.rollout, cfg.algorithm
    params = dict(algo.params)
    args = GRPOConfig(
        output_dir=str(out_dir), use_vllm=False, use_cpu=use_cpu, bf16=bf16, fp16=False, seed=cfg.seed,
        per_device_train_batch_size=tcfg.prompts_per_step * tcfg.group_size, num_generations=tcfg.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,  # one optimizer step per batch
        max_completion_length=max_new, generation_kwargs={"min_new_tokens": max_new},
        temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
        beta=0.0, loss_type="dapo", epsilon=params.get("clip_low", 0.2), epsilon_high=params.get("clip_high", 0.28),
        scale_rewards="group", mask_truncated_completions=False,
        learning_rate=algo.lr or optim.lr, adam_beta1=optim.betas[0], adam_beta2=optim.betas[1],
        adam_epsilon=optim.eps, weight_decay=optim.weight_decay, max_grad_norm=optim.grad_clip,
        optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0,
        max_steps=total_steps, shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, log_completions=False,
    )
    trainer = GRPOTrainer(
        model=load_model(path), reward_funcs=[_exact_reward(build_verifier(cfg.data.verifier))], args=args,
        train_dataset=_trl_dataset(data, total_steps, tcfg.prompts_per_step), processing_class=load_processor(path),
        callbacks=callbacks,
    )
    return trainer


class _PhaseTimer:
    """Wraps bound methods of a TRL trainer instance to time them (rollout = `_generate`, reward =
    `_calculate_rewards`, prep = the rest of `_generate_and_score_completions`)."""

    def __init__(self, trainer) -> None:
        self.acc: dict[str, float] = {}
        self.tokens = 0.0
        for attr, name in (("_generate", "rollout"), ("_calculate_rewards", "reward"),
                           ("_generate_and_score_completions", "_gen_and_score")):
            self._wrap(trainer, attr, name)

    def _wrap(self, trainer, attr: str, name: str) -> None:
        fn = getattr(trainer, attr)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                out = fn(*a, **kw)
            finally:
                self.acc[name] = self.acc.get(name, 0.0) + time.perf_counter() - t0
            if name == "_gen_and_score":
                self.tokens += float(out["completion_mask"].sum())
            return out

        setattr(trainer, attr, timed)

    def take(self) -> tuple[dict[str, float], float]:
        acc, tok = self.acc, self.tokens
        self.acc, self.tokens = {}, 0.0
        return acc, tok


def _make_callback(state: dict):
    """On each TRL optimizer step end: book TRL's step time, then run our steps (outside TRL's clock)."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def on_train_begin(self, args, st, control, **kw):
            state["t_resume"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            t_end = time.perf_counter()
            wall = t_end - state["t_resume"]
            acc, tokens = state["timer"].take()
            gen_score = acc.pop("_gen_and_score", 0.0)
            rec = {"rollout": acc.get("rollout", 0.0), "reward": acc.get("reward", 0.0)}
            rec["other"] = gen_score - rec["rollout"] - rec["reward"]  # advantages, gathers, metrics
            rec["update"] = wall - gen_score  # forward log-probs + loss + backward + optimizer (+ last step's logging)
            rec["step"] = wall
            rec["tokens"] = tokens
            state["trl_steps"].append(rec)
            state["run_ours"](st.global_step)
            state["t_resume"] = time.perf_counter()

    return Interleave()


# ---------------------------------------------------------------------------------------------- report
def summarise(steps: list[dict[str, float]], warmup: int) -> dict[str, Any]:
    kept = steps[warmup:]
    keys = [k for k in PHASE_ORDER if any(k in s for s in kept)]
    out = {"phases": {k: _median([s.get(k, 0.0) for s in kept]) for k in keys},
           "step": _median([s["step"] for s in kept]),
           "step_all": [round(s["step"], 4) for s in kept],
           "tokens_per_step": _median([s["tokens"] for s in kept]),
           **({"flops_per_step": _median([s["flops"] for s in kept])} if all("flops" in s for s in kept) else {}),
           "measured_steps": len(kept)}
    roll = [s["tokens"] / s["rollout"] for s in kept if s.get("rollout")]
    out["rollout_tokens_per_s"] = _median(roll)
    return out


def _table(cols: dict[str, dict[str, Any]]) -> str:
    names = list(cols)
    phases = [p for p in PHASE_ORDER if p in ALWAYS_SHOWN or any(p in c["phases"] for c in cols.values())]
    w0, w = 24, 14
    lines = [f"{'median seconds':<{w0}}" + "".join(f"{n:>{w}}" for n in names)]
    lines.append("-" * len(lines[0]))
    for p in phases:
        cells = [c["phases"].get(p) for c in cols.values()]
        lines.append(f"{p:<{w0}}" + "".join(f"{'-' if v is None else f'{v:.3f}':>{w}}" for v in cells))
    lines.append("-" * len(lines[0]))
    lines.append(f"{'step (wall)':<{w0}}" + "".join(f"{c['step']:>{w}.3f}" for c in cols.values()))
    lines.append(f"{'rollout tokens/s':<{w0}}" + "".join(f"{c['rollout_tokens_per_s']:>{w}.0f}" for c in cols.values()))
    lines.append(f"{'tokens generated/step':<{w0}}" + "".join(f"{c['tokens_per_step']:>{w}.0f}" for c in cols.values()))
    lines.append(f"{'measured steps':<{w0}}" + "".join(f"{c['measured_steps']:>{w}d}" for c in cols.values()))
    return "\n".join(lines)


def _profile(ours: Ours, n: int) -> str:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        ours.trainer.step()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(r"harness|trainer|rollout|generate|engine\.py.*(backward|step)", 25)
    stats.sort_stats("tottime").print_stats(25)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, overrides = _parse(argv)
    busy_before = _busy_cores()  # before this process does any work
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tempfile
    import warnings

    import torch

    from rlsd_harness import dist
    from rlsd_harness.config import compose_config
    from rlsd_harness.data import build_data
    from rlsd_harness.training.preflight import read_config
    from rlsd_harness.training.warmup import policy_path

    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    cpus = os.cpu_count() or 1
    if args.threads:
        threads, why = args.threads, "--threads"
    elif busy_before == busy_before and busy_before >= 0.5:  # not nan, and someone else is computing
        threads = max(1, min(torch.get_num_threads(), cpus - round(busy_before)))
        why = f"auto: {busy_before:.1f} of {cpus} cores busy with other work before the start"
    else:
        threads, why = torch.get_num_threads(), f"auto: machine idle ({busy_before:.1f} of {cpus} cores busy)"
    torch.set_num_threads(threads)
    base = ["train.prompts_per_step=8", "train.group_size=8", "train.micro_batch_size=64", "train.mini_batches=1",
            "train.ppo_epochs=1", "train.eval_every=0", "train.save_every=0", "train.progress=false",
            "dynamics.teacher_probe=false"]
    if args.max_new_tokens:
        base.append(f"rollout.max_new_tokens={args.max_new_tokens}")
    # validated and typed, as rlsd-train hands them to the Trainer
    cfg_grpo = read_config(compose_config(["algorithm=grpo", *base, *overrides]))
    cfg_rlsd = read_config(compose_config(["algorithm=rlsd", *base, *overrides]))
    max_new = int(cfg_grpo.rollout.max_new_tokens)
    path = policy_path(cfg_grpo.model, cfg_grpo.data, log=lambda m: print(m, file=sys.stderr))
    data = build_data(cfg_grpo.data, cfg_grpo.seed)
    total = args.warmup + args.steps
    P, G = int(cfg_grpo.train.prompts_per_step), int(cfg_grpo.train.group_size)

    state: dict[str, Any] = {"trl_steps": []}
    trl_trainer, tmp = None, None
    if not args.no_trl:
        # TRL first: our Trainer sets RANK/LOCAL_RANK and starts a 1-rank gloo group, and accelerate, seeing
        # LOCAL_RANK, would then run TRL as MULTI_CPU (a DDP wrapper with find_unused_parameters, and its own
        # thread count). Built before, TRL is a plain single process as in its own CPU recipe.
        tmp = tempfile.TemporaryDirectory(prefix="harness-perf-")
        trl_trainer = build_trl(cfg_grpo, path, data, total, max_new, Path(tmp.name), [_make_callback(state)])
        from transformers.trainer_callback import PrinterCallback

        trl_trainer.remove_callback(PrinterCallback)  # TRL's per-step log dicts would flood the output
        state["timer"] = _PhaseTimer(trl_trainer)
    grpo = Ours("ours GRPO", cfg_grpo, path, data, max_new, args.rollout_decode)
    rlsd = None if args.no_rlsd else Ours("ours RLSD", cfg_rlsd, path, data, max_new, args.rollout_decode)

    def run_ours(k: int) -> None:  # alternate the order of our two trainers from step to step
        pair = [grpo] if rlsd is None else ([grpo, rlsd] if k % 2 else [rlsd, grpo])
        for o in pair:
            o.step()

    state["run_ours"] = run_ours
    torch.set_num_threads(threads)  # whatever set-up did to it
    cpu_a = _cpu_sample()
    trl_note = None
    if trl_trainer is None:
        for k in range(1, total + 1):
            run_ours(k)
    else:
        import trl

        trl_trainer.train()
        tmp.cleanup()
        trl_note = (f"TRL {trl.__version__} GRPOTrainer on the same {cfg_grpo.model.arch} folder and processor "
                    f"(image column + conversational prompts); accelerate "
                    f"{trl_trainer.accelerator.distributed_type.value}, optimizer {trl_trainer.args.optim.value}")
    busy_during = _other_cores(cpu_a, _cpu_sample())
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    cols: dict[str, dict[str, Any]] = {"ours GRPO": summarise(grpo.steps, args.warmup)}
    if state["trl_steps"]:
        cols["TRL GRPO"] = summarise(state["trl_steps"], args.warmup)
    if rlsd is not None:
        cols["ours RLSD"] = summarise(rlsd.steps, args.warmup)
    ratios: dict[str, float] = {}
    if "TRL GRPO" in cols:
        ratios["TRL / ours (GRPO step)"] = cols["TRL GRPO"]["step"] / cols["ours GRPO"]["step"]
        ratios["TRL / ours (rollout)"] = cols["TRL GRPO"]["phases"]["rollout"] / cols["ours GRPO"]["phases"]["rollout"]
        ratios["TRL / ours (update)"] = cols["TRL GRPO"]["phases"]["update"] / cols["ours GRPO"]["phases"]["update"]
    if rlsd is not None:
        paired = [r["step"] / g["step"] for g, r in zip(grpo.steps[args.warmup:], rlsd.steps[args.warmup:])]
        ratios["RLSD / GRPO (ours, step)"] = cols["ours RLSD"]["step"] / cols["ours GRPO"]["step"]
        ratios["RLSD / GRPO (ours, median of paired)"] = _median(paired)
        # the floor a faster kernel cannot cross: the teacher's forward is real work the budget charges
        ratios["RLSD / GRPO (ledger FLOPs)"] = cols["ours RLSD"]["flops_per_step"] / cols["ours GRPO"]["flops_per_step"]

    settings = {
        "model": str(path), "arch": str(cfg_grpo.model.arch), "prompts": P, "samples": G,
        "completion_tokens": f"{max_new} forced (min_new_tokens = max_new_tokens = {max_new})",
        "temperature": float(cfg_grpo.rollout.temperature), "top_p": float(cfg_grpo.rollout.top_p),
        "top_k": int(cfg_grpo.rollout.top_k), "lr": float(cfg_grpo.algorithm.lr or cfg_grpo.optim.lr),
        "beta": 0.0, "reward": f"{cfg_grpo.data.verifier} (last \\boxed{{}}, integer match)",
        "threads": torch.get_num_threads(), "threads_choice": why, "cpus": cpus,
        "busy_cores_before": busy_before, "busy_cores_other_during": busy_during,
        "loadavg_before": load_before, "loadavg_after": load_after, "rollout_decode": args.rollout_decode,
        "warmup_steps": args.warmup, "measured_steps": args.steps, "overrides": overrides,
        "trl": trl_note, "ours": "rlsd_harness.training.trainer.Trainer, DeepSpeed ZeRO-0, torch AdamW, teacher probe off",
    }
    print()
    print(f"bench.perf: {P} prompts x {G} samples, {max_new} forced new tokens, T={settings['temperature']}, "
          f"beta 0, 1 process, torch threads {settings['threads']} ({why}); medians of {args.steps} steps after "
          f"{args.warmup} warm-up")
    print(f"other processes kept {busy_during:.1f} of {cpus} cores busy during the measurement")
    if load_before is not None:
        fmt = lambda la: " / ".join(f"{x:.2f}" for x in la)  # noqa: E731
        print(f"load average (1 / 5 / 15 min): {fmt(load_before)} before, {fmt(load_after)} after")
    print(f"our rollout: decode={args.rollout_decode}")
    print(f"model: {path} ({settings['arch']}, warmed-up tiny policy)")
    if trl_note:
        print(trl_note)
    print()
    print(_table(cols))
    print("ours: ledger phases of Trainer.step; other = wall - phases (batch assembly, advantages, metrics).")
    if trl_note:
        print("TRL: rollout = _generate (chat template, processor on every row's image, generate), reward = "
              "_calculate_rewards,\n     other = rest of _generate_and_score_completions, update = rest of the "
              "optimizer step\n     (log-prob forward, loss, backward, clip, AdamW, logging, next batch).")
    print()
    for k, v in ratios.items():
        goal = f"  (goal {GOALS[k][0]} {GOALS[k][1]})" if k in GOALS else ""
        print(f"{k:<40}{v:>8.3f}{goal}")
    print("\nper-step wall seconds (kept): " + "; ".join(f"{n}: {c['step_all']}" for n, c in cols.items()))
    result = {"settings": settings, "results": cols, "ratios": ratios, "seconds_total": time.perf_counter() - t_start}
    print(f"total benchmark time {result['seconds_total']:.0f} s")

    if args.profile:
        print(f"\ncProfile of {args.profile} more steps of ours GRPO (cumulative: where; tottime: which call):")
        print(_profile(grpo, args.profile))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    dist.shutdown()
    return result


if __name__ == "__main__":
    main()
