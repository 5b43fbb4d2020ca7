"""Supervised warm-up of a freshly built tiny VLM on the embedded task, so that RL starts with signal.

The mix teaches two things: to answer the plain question (reaching 20-60 % greedy pass@1; on the colour
task the 1 M model plateaus at 29-37 % because it binds the colour word to the picture late), and to read a
privileged context (the teacher template
with the reference answer or solution), so that a self-teacher is measurably better than the student.
The result is cached under a hash of (base model, recipe); `rlsd-warmup` builds and reports it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from rlsd_harness.dist import cpu_identity
from rlsd_harness.models import (
    _recipe_dir,
    build_tiny,
    cache_tmp,
    load_model,
    load_processor,
    publish_cache_entry,
    save_model,
)
from rlsd_harness.prompts import REFERENCE_TEMPLATE, SIBLING_TEMPLATE, SOLUTION_TEMPLATE
from rlsd_harness.rollout.hf import encode_prompts, stable_seed, user_messages


def privileged_prompt(item, rng: random.Random) -> str:
    """One of the three teacher contexts the objectives use, so that the self-teacher of every method can read
    its own: the reference answer (RLSD), the reference solution (OPSD), a successful sibling (SDPO)."""
    kind = rng.random()
    if kind < 0.4:
        return REFERENCE_TEMPLATE.format(question=item.question, hint=item.answer)
    if kind < 0.7:
        return REFERENCE_TEMPLATE.format(question=item.question, hint=item.solution)
    return SIBLING_TEMPLATE.format(question=item.question, solution=SOLUTION_TEMPLATE.format(attempt=item.solution))


def _sft_batch(processor, items: list, rng: random.Random, hint_share: float):
    convs = []
    for it in items:
        text = privileged_prompt(it, rng) if rng.random() < hint_share else it.question
        convs.append(user_messages(text, len(it.images)))
    prompt, vision = encode_prompts(processor, convs, [it.images for it in items])
    tok = processor.tokenizer
    targets = [tok(it.solution + "<|im_end|>", add_special_tokens=False)["input_ids"] for it in items]
    width = max(map(len, targets))
    ids = torch.full((len(items), width), tok.pad_token_id)
    mask = torch.zeros(len(items), width)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = 1
    return prompt, vision, ids, mask


def run_warmup(model_dir: Path, steps: int, batch_size: int, lr: float, hint_share: float, level: int, seed: int,
               out: Path, log=print) -> dict[str, Any]:
    from rlsd_harness.benchmarks import embedded
    from rlsd_harness.training.trainer import forward_head

    torch.manual_seed(seed)
    processor = load_processor(model_dir)
    model = load_model(model_dir).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    rng = random.Random(seed)
    t0 = time.perf_counter()
    loss_v = float("nan")
    for step in range(1, steps + 1):
        items = embedded.generate("train", batch_size, seed=stable_seed("warmup", seed, step), level=level)
        prompt, vision, ids, mask = _sft_batch(processor, items, rng, hint_share)
        logp = forward_head(model, prompt, vision, ids, mask, 1.0, model.config.image_token_id).logp
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_v = loss.item()
        if step % 50 == 0:
            log(f"warm-up step {step}/{steps} loss {loss_v:.3f} ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0
    tmp = cache_tmp(out)
    save_model(model, processor, tmp)
    for name in ("recipe.json",):
        (tmp / name).write_text((model_dir / name).read_text())
    report = {"steps": steps, "batch_size": batch_size, "lr": lr, "hint_share": hint_share, "level": level,
              "final_loss": loss_v, "train_seconds": seconds, "threads": torch.get_num_threads(),
              "cpu": cpu_identity()}
    (tmp / "warmup.json").write_text(json.dumps(report, indent=1))
    publish_cache_entry(tmp, out)
    return report


def warmed_up(model_cfg: Any, level: int, log=print) -> Path:
    """The folder of the warmed-up policy for a model config (built and cached on first use)."""
    base = build_tiny(model_cfg.arch, model_cfg.size, model_cfg.seed, model_cfg.vocab_size, model_cfg.get("head_vocab"))
    w = model_cfg.warmup
    recipe = {"base": base.name, "steps": w.steps, "batch": w.batch_size, "lr": w.lr, "hint": w.hint_share,
              "level": level, "seed": model_cfg.seed, "v": 3}
    out = _recipe_dir("warmup", recipe)
    if not (out / "warmup.json").exists():
        log(f"warming up {base.name} -> {out} ({w.steps} steps of {w.batch_size})")
        run_warmup(base, w.steps, w.batch_size, w.lr, w.hint_share, level, model_cfg.seed, out, log)
    return out


def policy_path(model_cfg: Any, data_cfg: Any, log=print) -> Path:
    """Where the run's initial policy comes from: a local checkpoint, or the warmed-up tiny model."""
    from omegaconf import OmegaConf

    from rlsd_harness.config import ConfigError

    path = None if OmegaConf.is_missing(model_cfg, "path") else model_cfg.get("path")
    if path:
        if not (Path(path) / "config.json").exists():
            raise FileNotFoundError(f"model.path={path} is not a model folder (no config.json); nothing is downloaded")
        return Path(path)
    if model_cfg.get("size") is None:
        raise ConfigError(f"this model ({model_cfg.arch}) is loaded from a local folder: set model.path=<folder>")
    if model_cfg.get("warmup"):
        return warmed_up(model_cfg, data_cfg.get("level", 2), log)
    return build_tiny(model_cfg.arch, model_cfg.size, model_cfg.seed, model_cfg.vocab_size, model_cfg.get("head_vocab"))
