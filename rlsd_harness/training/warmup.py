"""Supervised warm-up of a freshly built tiny VLM on the embedded task, so that RL starts with signal.

The mix teaches two things: to answer the plain question (reaching 20-60 % greedy pass@1; on the colour
task the 1 M model plateaus at 29-37 % because it binds the colour word to the picture late), and to read a
privileged context (the teacher template
with the reference answer or solution), so that a self-teacher is measurably better than the student.
The result is cached under a hash of (base model, recipe); `rlsd-warmup` builds and reports it.

The warm-up is chaotic in float rounding: the same recipe gives a different base on a CPU whose kernels differ
(AMD EPYC with AVX-512 against Intel Xeon), so the bases of the configs the committed studies use ship with the
package (rlsd_harness/bases/, listed with their recipe and sha256 in its manifest.json). `warmed_up` returns
the shipped folder, after checking every file's sha256, whenever the recipe matches one, on any CPU and
without building anything; any other recipe is warmed up here and cached.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlsd_harness.dist import cpu_identity
from rlsd_harness.models import (
    WeightsError,
    _recipe_dir,
    build_tiny,
    cache_tmp,
    load_model,
    load_processor,
    publish_cache_entry,
    recipe_digest,
    save_model,
    tiny_recipe,
)
from rlsd_harness.prompts import REFERENCE_TEMPLATE, SIBLING_TEMPLATE, SOLUTION_TEMPLATE
from rlsd_harness.rollout.hf import encode_prompts, stable_seed, user_messages

if TYPE_CHECKING:
    from rlsd_harness.config.typed import DataSection, ModelSection


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
    progress = Progress(steps, "warm-up", log)
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
        progress.update(step, loss=f"{loss_v:.3f}")
    progress.close()
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


def warmup_recipe(model_cfg: ModelSection, level: int) -> dict[str, Any]:
    """What a warm-up is built from. It names the tiny base by its recipe's digest (no build, no file
    contents), so the recipe, and the cache entry or shipped base it names, is the same on every CPU."""
    w = model_cfg.warmup
    base = recipe_digest(tiny_recipe(model_cfg.arch, model_cfg.size, model_cfg.seed, model_cfg.vocab_size,
                                     model_cfg.head_vocab))
    return {"base": base, "steps": w.steps, "batch": w.batch_size, "lr": w.lr, "hint": w.hint_share,
            "level": level, "seed": model_cfg.seed, "v": 3}


def warmed_up(model_cfg: ModelSection, level: int, log=print, shipped: bool = True) -> Path:
    """The folder of the warmed-up policy for a model config: the shipped base when the recipe matches one
    (`shipped=False` ignores it, to rebuild it on this machine), else the cached build, warmed up on first use."""
    recipe = warmup_recipe(model_cfg, level)
    if shipped:
        found = shipped_base(recipe)
        if found is not None:
            return found
    out = _recipe_dir("warmup", recipe)
    if not (out / "warmup.json").exists():
        base = build_tiny(model_cfg.arch, model_cfg.size, model_cfg.seed, model_cfg.vocab_size, model_cfg.head_vocab)
        w = model_cfg.warmup
        log(f"warming up {base.name} -> {out} ({w.steps} steps of {w.batch_size}; recipe {out.name} is not one of "
            f"the shipped bases, so it is built here once and cached)")
        run_warmup(base, w.steps, w.batch_size, w.lr, w.hint_share, level, model_cfg.seed, out, log)
    return out


# The shipped bases: package data, so an installed wheel carries them too (pyproject's package-data).
BASES_DIR = Path(__file__).resolve().parent.parent / "bases"
MANIFEST = "manifest.json"


def weights_sha256(folder: Path) -> str:
    """sha256 of a model folder's weights (its *.safetensors files in name order, concatenated): the digest
    studies record as their base (picks.json and meta.json `base`)."""
    digest = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(bases: Path | None = None) -> dict[str, Any]:
    path = (bases or BASES_DIR) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"bases": {}}


def shipped_base(recipe: dict[str, Any], bases: Path | None = None) -> Path | None:
    """The shipped folder of a warm-up recipe, or None when none ships. Every file the manifest lists must
    exist with its sha256: a corrupt or edited one is refused (WeightsError), never silently replaced by a
    build that would give another base on another CPU."""
    bases = bases or BASES_DIR
    entry = read_manifest(bases)["bases"].get(recipe_digest(recipe))
    if entry is None:
        return None
    folder = bases / entry["folder"]
    for name, want in sorted(entry["files"].items()):
        path = folder / name
        got = file_sha256(path) if path.is_file() else None
        if got != want:
            raise WeightsError(f"shipped base {path}: " + (f"sha256 {got} is not the manifest's {want}" if got else
                               "missing") + f" ({bases / MANIFEST}); restore it from the repository "
                               f"(git checkout -- {path}) or reinstall the package")
    return folder


def ship(folder: Path, recipe: dict[str, Any], name: str, bases: Path | None = None, note: str = "") -> dict[str, Any]:
    """Copy a built warm-up `folder` into the shipped bases as `name` and list it in the manifest (what
    `rlsd-warmup ship=true` does). A recipe that already ships with other weights is refused: the committed
    studies record the shipped base's sha256, and replacing it would make them refuse their own picks."""
    bases = bases or BASES_DIR
    if not name.isidentifier():  # setuptools packages the folder as a (namespace) package: a Python name
        raise ValueError(f"shipped base name {name!r} is not a Python identifier; valid: letters, digits, _")
    manifest = read_manifest(bases)
    digest, sha = recipe_digest(recipe), weights_sha256(folder)
    old = manifest["bases"].get(digest)
    if old is not None and old["weights_sha256"] != sha:
        raise WeightsError(f"recipe {digest} already ships as {bases / old['folder']} with weights sha256 "
                           f"{old['weights_sha256']}; this build's is {sha} (another CPU's floats?). Committed "
                           f"studies record the shipped one: remove its manifest entry first to replace it")
    files = sorted(p.name for p in Path(folder).iterdir() if p.is_file())
    dest = bases / name
    tmp = dest.with_name(f"{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        shutil.copy2(Path(folder) / f, tmp / f)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    report = json.loads((dest / "warmup.json").read_text()) if (dest / "warmup.json").exists() else {}
    entry = {"folder": name, "recipe": recipe, "weights_sha256": sha, "built_on": report.get("cpu"),
             "note": note, "files": {f: file_sha256(dest / f) for f in files}}
    manifest["bases"][digest] = entry
    manifest.setdefault("about", "Warmed-up base policies shipped with the package, keyed by the digest of "
                        "their warm-up recipe (rlsd_harness/training/warmup.py: warmup_recipe); every file's sha256.")
    (bases / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return entry


class Progress:
    """A long loop's progress: a tqdm bar on a terminal; elsewhere (a log file, CI, a study's worker) one
    line every `every` seconds and at the end, with the same elapsed time, ETA and rate as the bar."""

    def __init__(self, total: int, desc: str, log=print, every: float = 10.0, stream=None, unit: str = "step") -> None:
        from tqdm.auto import tqdm

        self.tqdm, self.total, self.desc, self.log, self.every, self.unit = tqdm, total, desc, log, every, unit
        stream = stream or sys.stderr
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True) if stream.isatty() else None
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or n == self.total:
            self.last = now
            text = ", ".join(f"{k} {v}" for k, v in postfix.items())
            self.log(self.tqdm.format_meter(
                n, self.total, now - self.t0, prefix=self.desc, unit=self.unit,
                bar_format="{desc} " + self.unit + " {n_fmt}/{total_fmt}, {elapsed} elapsed, ETA {remaining} ({rate_fmt})")
                + (f", {text}" if text else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def warmup_level(data_cfg: DataSection) -> int:
    """The embedded task's level the tiny model warms up on: the data's own (data=embedded), else the embedded
    task's default level (data/embedded.yaml's, 1), whose base ships, so data=local starts at once (level 2 has
    no shipped base)."""
    from rlsd_harness.config import group_file

    return data_cfg.level if data_cfg.level is not None else int(group_file("data", "embedded").level)


def policy_path(model_cfg: ModelSection, data_cfg: DataSection, log=print) -> Path:
    """Where the run's initial policy comes from: a local checkpoint, or the warmed-up tiny model."""
    from rlsd_harness.config import ConfigError

    path = model_cfg.path
    if path:
        if not (Path(path) / "config.json").exists():
            raise FileNotFoundError(f"model.path={path} is not a model folder (no config.json); nothing is downloaded")
        return Path(path)
    if model_cfg.size is None:
        raise ConfigError(f"this model ({model_cfg.arch}) is loaded from a local folder: set model.path=<folder>")
    if model_cfg.warmup:
        return warmed_up(model_cfg, warmup_level(data_cfg), log)
    return build_tiny(model_cfg.arch, model_cfg.size, model_cfg.seed, model_cfg.vocab_size, model_cfg.head_vocab)
