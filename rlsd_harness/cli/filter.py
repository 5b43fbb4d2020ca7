"""`rlsd-filter data=local data.path=<file or folder> [data.schema=...] [checkpoint=<model>] [k=4] [keep_if=...]`:
the difficulty filter that built the paper's training set (MMFineReason-123K kept the items a reference model
fails in all 4 of 4 samples). Samples the model k times per item with the training's rollout engine, sampling
(rollout.temperature, top_p, top_k, max_new_tokens) and verifier (data.verifier); keeps the items whose record
satisfies keep_if; writes the kept rows in the layout they came in (same file names and formats, the images
they point to copied beside them) and a report of pass rates (report.md, report.json: a histogram of passes).

Resumable: each item's rewards and responses are appended to <out>/records.jsonl after every batch, and a rerun
samples only the items not there yet (the samples are seeded per item, so the result is the same). A rerun with
another keep_if (or a smaller limit) re-selects from the records without sampling; one with another model,
data, k, sampling, seed or verifier is refused unless overwrite=true. data=embedded filters the first `limit`
items of the embedded task's training stream into embedded.jsonl + png images (a data=local file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rlsd_harness.cli import flag, run_main, split_args
from rlsd_harness.config import ConfigError
from rlsd_harness.config.typed import RunConfig

OWN = {
    "checkpoint": "model folder, or a run folder (its final/); default: the config's initial policy (what "
                  "rlsd-train would start from)",
    "k": "samples per item (default 4)",
    "keep_if": "which items to keep: comparisons of pass_rate (mean reward), passes, fails, joined by 'and' "
               "(default pass_rate<=0: failed k of k)",
    "limit": "the first N items only (default: every row; data=embedded: 64)",
    "out": "output folder (default results/filter/<data>-<model>-k<k>)",
    "batch": "prompts per generate call; records are appended after each (default 8)",
    "overwrite": "true: discard records of a different model/data/sampling in out",
    "progress": "false: no progress bar",
}
EMBEDDED_DEFAULT_LIMIT = 64



def _int_arg(own: dict[str, str], key: str, default: int | None) -> int | None:
    value = own.get(key)
    if value is None or value.lower() in ("null", "none", ""):
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{key}={value!r}: valid: a positive integer")
    return n


def _identity(cfg: RunConfig, model_dir: Path, k: int) -> dict[str, Any]:
    """What the records depend on: a rerun with any of it changed would mix samples of different settings."""
    data = cfg.data
    source = str(Path(str(data.path)).expanduser().resolve()) if data.name == "local" else f"embedded:level{data.level}"
    return {"data": source, "schema": data.schema if data.name == "local" else None,
            "fields": {k_: v for k_, v in (data.fields or {}).items() if v is not None}
            if data.name == "local" else None,
            "checkpoint": str(model_dir.resolve()), "k": k, "seed": cfg.seed, "verifier": data.verifier,
            "engine": cfg.rollout.engine,
            "sampling": {key: getattr(cfg.rollout, key) for key in ("temperature", "top_p", "top_k", "max_new_tokens")}}


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from rlsd_harness.config import compose_config, schema
    from rlsd_harness.data import build_data
    from rlsd_harness.evaluation import difficulty
    from rlsd_harness.evaluation.runner import make_engine, resolve_checkpoint
    from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams
    from rlsd_harness.training.preflight import check_config
    from rlsd_harness.training.warmup import policy_path
    from rlsd_harness.verifier import build_verifier

    def body() -> None:
        own, overrides = split_args(argv, "rlsd-filter", __doc__, OWN)
        k = _int_arg(own, "k", 4)
        batch = _int_arg(own, "batch", 8)
        limit = _int_arg(own, "limit", None)
        try:
            rule = difficulty.KeepRule.parse(own.get("keep_if", difficulty.DEFAULT_RULE))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        overwrite = flag(own.get("overwrite"), "overwrite")
        progress = flag(own.get("progress"), "progress", default=True)
        composed = compose_config(overrides)
        check_config(composed, only=("seed", "data", "rollout"))
        if composed.data.name == "local" and OmegaConf.is_missing(composed.data, "path"):
            raise ConfigError("data=local needs data.path=<file or folder> (the dataset to filter)")
        cfg = schema.typed(composed)
        try:
            verifier = build_verifier(cfg.data.verifier)
        except KeyError as e:
            raise ConfigError(e.args[0]) from None
        data = build_data(cfg.data, cfg.seed)  # checks every row (and image path) before anything is written
        if cfg.data.name == "embedded":
            items: Any = data.prompts(1, limit or EMBEDDED_DEFAULT_LIMIT)
        else:
            items = data
        n = min(limit, len(items)) if limit else len(items)
        model_dir = resolve_checkpoint(own["checkpoint"]) if own.get("checkpoint") else policy_path(cfg.model, cfg.data)
        params = SamplingParams(n=k, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens)
        identity = _identity(cfg, model_dir, k)
        name = Path(identity["data"]).stem if cfg.data.name == "local" else "embedded"
        out = Path(own.get("out") or Path("results") / "filter" / f"{name}-{model_dir.name}-k{k}")
        meta_path, records_path = out / "filter.json", out / "records.jsonl"
        if meta_path.is_file():
            before = json.loads(meta_path.read_text())
            changed = sorted(key for key in identity if before.get(key) != identity[key])
            if changed and not overwrite:
                raise ConfigError(f"{out} holds records of another filter run (changed: "
                                  + ", ".join(f"{c} {before.get(c)!r} -> {identity[c]!r}" for c in changed)
                                  + "); choose another out= or pass overwrite=true to discard them")
            if changed:
                records_path.unlink(missing_ok=True)
        elif out.exists() and any(out.iterdir()) and not overwrite:
            raise ConfigError(f"out={out} exists and is not an rlsd-filter folder; choose another out= or pass "
                              f"overwrite=true")
        out.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(identity, indent=1) + "\n")
        records = difficulty.read_records(records_path)
        todo = [i for i in range(n) if i not in records]
        if todo:
            from tqdm.auto import tqdm

            engine, _ = make_engine(cfg, model_dir)
            if isinstance(engine, HFRolloutEngine):
                engine.max_batch = batch * k
            bar = tqdm(total=n, initial=n - len(todo), desc="rlsd-filter", unit="item", disable=not progress,
                       dynamic_ncols=True, file=sys.stderr)
            try:
                difficulty.sample_items(engine, items, todo, verifier, params, cfg.seed, batch, records_path,
                                        on_batch=bar.update)
            finally:
                bar.close()
            records = difficulty.read_records(records_path)
        records = {i: r for i, r in records.items() if i < n}
        rep = difficulty.report(records, k, rule, identity)
        kept = sorted(i for i, r in records.items() if rule(r))
        if cfg.data.name == "embedded":
            files = difficulty.write_embedded(items, kept, out)
        else:
            files = difficulty.write_local(data, str(cfg.data.path), kept, out, cfg.data.image_root)
        rep["files"] = [str(f) for f in files]
        (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
        text = difficulty.report_markdown(rep)
        (out / "report.md").write_text(text)
        print(text, end="")
        print(f"kept {rep['kept']} of {rep['items']} items in {', '.join(map(str, files))}; report in {out / 'report.md'}")
        if cfg.data.name == "local" and cfg.data.image_root:
            print(f"train on it with data.path=<one of those files> data.image_root={out}")

    run_main(body)


if __name__ == "__main__":
    main()
