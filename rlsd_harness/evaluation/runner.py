"""The benchmark runner for saved checkpoints (the library side of `rlsd-evaluate`):

    rlsd-evaluate checkpoint=<folder> benchmarks=[mmmu,mathvista,mathvision,zerobench,wemath,embedded]
        eval.sources.mmmu=/data/mmmu ... [eval.decoding=greedy|paper|sample] [eval.k=N] [limit=N] [out=<folder>] [overwrite=true]

generates with the project's rollout engine (each benchmark's prompt text in one user turn of our chat
template, its images first), scores with each benchmark module's `score`, and writes into `out`:

    config.json               what the results depend on (checkpoint, decoding, and per benchmark its data,
                              revision, prompt variant, token budget and score options)
    <key>.jsonl               one line per (item, sample): id, sample, variant, response, parsed, correct
                              (+ the scorer's extras, e.g. MathVista's extractor)
    <key>.metrics.json        the module's `metrics` (averaged over the k samples), the headline mean@k
                              and its per-sample values
    table.md, table.csv       one row per benchmark (+ the average of the paper's five)

A benchmark is named alone (its prompt variant from eval.variants) or as `name:variant` (key
`name-variant`), e.g. `mathvista:vlmevalkit` or `embedded:hint`. Items already in a jsonl are skipped on a
rerun, so an interrupted run continues where it stopped and a larger `limit=` extends a quick look.
`limit=N` takes the first N units of each benchmark in dataset order: a unit is one item or, where a
benchmark's metrics span several rows (`Metadata.unit`), all of them: We-Math's composite problem (every
row sharing its `ID`: its steps and its multi-step question, wherever they sit in the file) and
ZeroBench-Sub's main question (its subquestions). Metrics are then computed over complete problems only.
A rerun whose config differs from the folder's config.json is an error unless overwrite=true (which
discards the affected results). With no `benchmarks=`, the embedded benchmark runs with the plain
prompt, the privileged hint and a blank image (the probes that show whether the policy reads the picture
and the teacher's context).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsd_harness.benchmarks import (
    ALL_BENCHMARK_NAMES,
    EVAL_BENCHMARK_NAMES,
    Metadata,
    Scorer,
    benchmark_module,
    get_benchmark,
    metadata,
)
from rlsd_harness.benchmarks._common import MissingImagesError, SplitNotFoundError
from rlsd_harness.config import schema
from rlsd_harness.config.typed import EvalSection, RunConfig
from rlsd_harness.evaluation.heldout import DECODINGS, Decoding, _variant, decoding_from_config
from rlsd_harness.io import atomic_write_text, drop_cut_last_line, read_jsonl
from rlsd_harness.rollout.hf import HFRolloutEngine, SamplingParams
from rlsd_harness.rollout.scored import generate_and_score
from rlsd_harness.trees import flatten

# ----------------------------------------------------------------------------- the benchmark runner

BENCHMARKS = ALL_BENCHMARK_NAMES
# With no benchmarks=: held-out accuracy on the embedded task, with the privileged hint, and with a blank image.
DEFAULT_BENCHMARKS = ("embedded", "embedded:hint", "embedded:blank")


@dataclass
class Prompt:
    """What the rollout engine reads: the text of one user turn and its images."""

    question: str
    images: list


@dataclass
class Suite:
    """One benchmark ready to run: its items in dataset order and how to prompt, score and aggregate them."""

    name: str  # the benchmark
    meta: Metadata  # what its module declares: headline metric, scorer, how samples aggregate
    key: str  # its results' name in the out folder: the name, or name-variant when the variant was asked for
    items: list  # benchmark rows, or embedded items
    ids: list[str]
    identity: dict  # what the per-item results depend on, besides the model and the decoding
    prompt: Callable[[Any], Prompt]
    new_scorer: Callable[[], Scorer]  # a fresh scorer per sample index (a scorer may carry state)
    metrics: Callable[[list, list], dict]
    max_new_tokens: int


def resolve_checkpoint(path: str | Path) -> Path:
    """The model folder to load: the folder itself (config.json), or a run folder's / checkpoint's policy."""
    path = Path(path)
    for candidate in (path, path / "final", path / "policy"):
        if (candidate / "config.json").exists():
            return candidate
    if (path / "model.safetensors").exists() and (path / "state.json").exists():
        raise FileNotFoundError(f"{path} is a training checkpoint (weights and optimizer state only); "
                                f"evaluate the run's final/ folder or a model folder with a config.json")
    raise FileNotFoundError(f"no model at {path}: expected a config.json there or in its final/ folder")


def _weights_fingerprint(model_dir: Path) -> str:
    """Names, sizes and modification times of the weight files: cheap, and changes when the weights do."""
    digest = hashlib.sha1()
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        st = f.stat()
        digest.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A config node or tuple as plain JSON data, so that stored and fresh identities compare equal."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return json.loads(json.dumps(value, default=str))


def limit_items(items: list, meta: Metadata, limit: int | None) -> list:
    """The items a run with `limit=N` evaluates: the first N units in dataset order, each whole. A unit is one
    item, or, where the benchmark declares one (`Metadata.unit`: We-Math's composite problem), every item of
    it wherever it sits in the file; the items keep their dataset order."""
    if limit is None:
        return list(items)
    if meta.unit is None:
        return list(items[:limit])
    kept: set[str] = set()
    out = []
    for item in items:
        unit = meta.unit(item)
        if unit not in kept:
            if len(kept) == limit:
                continue
            kept.add(unit)
        out.append(item)
    return out


def _benchmark_suite(name: str, key: str, variant: str | None, ecfg: EvalSection, limit: int | None,
                     judge: Callable[[str], str] | None, allow_missing_images: bool = False) -> Suite:
    module = get_benchmark(name)
    source = getattr(ecfg.sources, name)
    if not source:
        raise ValueError(f"{name}: no data source; pass eval.sources.{name}=<local folder> (or a hub id when online)")
    split, variant = getattr(ecfg.splits, name), variant or getattr(ecfg.variants, name)
    try:
        rows = module.load(str(source), split, getattr(ecfg.revisions, name), allow_missing_images=allow_missing_images)
    except SplitNotFoundError as e:
        fix = (f"pass eval.splits.{name}={e.present[0]}" if e.present else
               f"pass eval.sources.{name}=<the folder that holds the {split} files>")
        raise ValueError(f"{e}; {fix}") from None
    except MissingImagesError as e:
        raise ValueError(f"{name}: split {split!r}: {e.detail}; put the image files where the data file says, or "
                         f"pass allow_missing_images=[{name}] to rlsd-evaluate to prompt those rows without "
                         "their image (recorded in config.json)") from None
    if not rows:
        raise ValueError(f"{name}: split {split!r} of {source} has no rows")
    try:
        module.prompt(rows[0], variant)  # an unknown variant fails here, before any generation
    except ValueError as e:
        if variant not in module.VARIANTS:
            raise ValueError(f"{e}; set eval.variants.{name}=<variant> or name it as {name}:<variant>") from None
        raise
    rows = limit_items(rows, module.METADATA, limit)
    score_options = dict(_plain(getattr(ecfg.score_options, name)) or {})
    metric_options = dict(_plain(getattr(ecfg.metric_options, name)) or {})
    identity = {"source": str(source), "split": split, "revision": rows[0]["_meta"]["revision"],
                "variant": variant, "max_new_tokens": ecfg.benchmark_max_new_tokens,
                "score_options": score_options}
    if rows[0]["_meta"].get("missing_images"):  # only with allow_missing_images: those rows are prompted text-only
        identity["missing_images"] = rows[0]["_meta"]["missing_images"]

    def prompt(row: dict) -> Prompt:
        text, images = module.prompt(row, variant)
        return Prompt(text, list(images))

    meta = module.METADATA
    if meta.judged:
        identity["extractor"] = f"judge:{ecfg.mathvista_judge}" if judge is not None else "rules"
    return Suite(
        name=name, meta=meta, key=key, items=rows, ids=[meta.row_id(r) for r in rows], identity=identity,
        prompt=prompt, new_scorer=lambda: meta.new_scorer(score_options, judge),
        metrics=lambda rs, results: module.metrics(rs, results, **metric_options),
        max_new_tokens=ecfg.benchmark_max_new_tokens,
    )


def _training_task_suite(name: str, key: str, variant: str | None, cfg: RunConfig, limit: int | None) -> Suite:
    """The test split of the run's own task (cfg.data), under one of evaluate_items' prompt variants."""
    from rlsd_harness.data import build_data

    module = benchmark_module(name)
    meta = module.METADATA
    variant = variant or getattr(cfg.eval.variants, name)
    # The variant is applied to the whole test set before `limit`, so that "shuffled" pairs the same
    # items whatever the limit.
    items = _variant(build_data(cfg.data, cfg.seed).test_set(cfg.eval.n), variant)
    items = limit_items(items, meta, limit)
    # the data keys that are set (test_size acts like a limit)
    data = {k: v for k, v in _plain(dataclasses.asdict(cfg.data)).items() if k != "test_size" and v is not None}
    identity = {"data": data, "variant": variant, "max_new_tokens": cfg.eval.max_new_tokens}
    return Suite(
        name=name, meta=meta, key=key, items=items, ids=[meta.row_id(it) for it in items], identity=identity,
        prompt=lambda it: Prompt(it.question, list(it.images)), new_scorer=lambda: meta.new_scorer({}, None),
        metrics=module.metrics, max_new_tokens=cfg.eval.max_new_tokens,
    )


def parse_benchmark(spec: str) -> tuple[str, str | None, str]:
    """`name` or `name:variant` -> (name, variant or None, key); an unknown name lists the valid ones."""
    name, _, variant = spec.partition(":")
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)} (optionally as name:variant)")
    return name, variant or None, f"{name}-{variant}" if variant else name


def build_suite(spec: str, cfg: RunConfig, limit: int | None = None, judge: Callable[[str], str] | None = None,
                allow_missing_images: bool = False) -> Suite:
    """The suite of one benchmark (`name` or `name:variant`) under the typed config `cfg`, its first `limit`
    units (see `limit_items`). `allow_missing_images`: rows whose image file is missing are prompted without it
    (else an error naming the row)."""
    name, variant, key = parse_benchmark(spec)
    if metadata(name).training_task:
        suite = _training_task_suite(name, key, variant, cfg, limit)
    else:
        suite = _benchmark_suite(name, key, variant, cfg.eval, limit, judge, allow_missing_images)
    seen: set[str] = set()
    for i in suite.ids:
        if i in seen:
            raise ValueError(f"{name}: item id {i!r} occurs twice; results are keyed by id")
        seen.add(i)
    return suite


# ----------------------------------------------------------------------------- the output folder


def _differences(old: dict, new: dict) -> list[str]:
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _result_files(out: Path, name: str) -> list[Path]:
    return [out / f"{name}.jsonl", out / f"{name}.metrics.json", *_shard_files(out, name)]


def prepare_out(out: Path, common: dict, suites: dict[str, dict], overwrite: bool) -> None:
    """Create or check `out` for `suites` ({key: identity}): results of a different config are never mixed
    in nor silently replaced."""
    config_file = out / "config.json"
    if not config_file.exists():
        foreign = [p.name for p in out.iterdir()] if out.is_dir() else []
        if foreign and not overwrite:
            raise FileExistsError(f"out folder {out} is not empty and has no config.json (not a runner folder: "
                                  f"{', '.join(sorted(foreign)[:5])}); choose another out= or pass overwrite=true")
        out.mkdir(parents=True, exist_ok=True)
        stored: dict = {**common, "benchmarks": {}}
    else:
        stored = json.loads(config_file.read_text())
        diffs = _differences({k: v for k, v in stored.items() if k != "benchmarks"}, common)
        if diffs:
            if not overwrite:
                raise FileExistsError(f"out folder {out} holds results of a different config ({'; '.join(diffs)}); "
                                      "choose another out= or pass overwrite=true to discard them")
            for key in stored.get("benchmarks", {}):  # every result there was produced under the old config
                for f in _result_files(out, key):
                    f.unlink(missing_ok=True)
            stored = {**common, "benchmarks": {}}
    for key, identity in suites.items():
        old = stored["benchmarks"].get(key)
        has_results = any(f.exists() for f in _result_files(out, key))
        if old is None and has_results and not overwrite:
            raise FileExistsError(f"{out / (key + '.jsonl')} exists but config.json does not describe it; "
                                  "pass overwrite=true to discard it")
        if old is not None and old != identity and not overwrite:
            raise FileExistsError(f"out folder {out} holds {key} results of a different config "
                                  f"({'; '.join(_differences(old, identity))}); choose another out= or pass "
                                  "overwrite=true to discard them")
        if overwrite:
            for f in _result_files(out, key):
                f.unlink(missing_ok=True)
        stored["benchmarks"][key] = identity
    config_file.write_text(json.dumps(stored, indent=1))


def read_records(path: Path) -> dict[str, list[dict]]:
    """{item id: its sample records in sample order}; {} for a missing file. A last line cut short by a crash
    is dropped (rlsd_harness.io's policy); reading never writes, the appenders repair the file first."""
    out: dict[str, list[dict]] = {}
    for r in read_jsonl(path, missing_ok=True):
        out.setdefault(str(r["id"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["sample"]) for k, v in out.items()}


def unit_scores(path: Path, name: str) -> tuple[dict[str, float], set[int]]:
    """{unit: score} of benchmark `name`'s records in `path` (its `Metadata.unit_scores`: whose mean is the
    headline's mean@k), and the sample counts its items have (one value when every item has its k)."""
    records = read_records(path)
    flags = [[bool(r["correct"]) for r in recs] for recs in records.values()]
    return metadata(name).unit_scores(list(records), flags), {len(f) for f in flags}


# ----------------------------------------------------------------------------- generation and scoring


def _judge_with(engine: HFRolloutEngine, max_new_tokens: int = 64) -> Callable[[str], str]:
    """MathVista's extraction judge played by the evaluated model itself (greedy, text only)."""
    params = SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens)
    return lambda text: engine.generate([Prompt(text, [])], params, [0]).texts[0]


def _seed_uid(suite: Suite, item_id: str) -> str:
    # The training task's items keep evaluate_items' seeds (sampled runs draw what training-time evaluation
    # draws), and every prompt variant of an item draws the same seeds (paired comparisons).
    return item_id if suite.meta.training_task else f"{suite.name}/{item_id}"


def shard_path(out: Path, key: str, rank: int) -> Path:
    """Where rank `rank` of a sharded run appends its records of benchmark `key` (merged by rank 0)."""
    return out / f"{key}.rank{rank}.jsonl"


def _shard_files(out: Path, key: str) -> list[Path]:
    return sorted(out.glob(f"{key}.rank*.jsonl"), key=lambda f: f.name)


def _shard_records(out: Path, key: str, merged: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Records in the shard files of `key` (any rank, any earlier world size) of items not in `merged`: a rank
    killed after its shard was merged, before the shard was removed, leaves copies that are not counted twice."""
    records: dict[str, list[dict]] = {}
    for f in _shard_files(out, key):
        for item_id, recs in read_records(f).items():
            if item_id not in merged:
                records.setdefault(item_id, []).extend(recs)
    return {i: sorted(recs, key=lambda r: r["sample"]) for i, recs in records.items()}


def run_suite(suite: Suite, engine: Any, decoding: Decoding, seed: int, out: Path, batch: int,
              progress: bool = True, rank: int = 0, world: int = 1) -> dict[str, list[dict]]:
    """Generate and score the items of `suite` not yet in `out/<key>.jsonl`; returns the records known here.

    One process (`world` 1, no shard files left by a sharded run) appends to `<key>.jsonl` itself and returns
    all the suite's records. A sharded run (`world` > 1, or shards left to finish) evaluates only items
    i % world == rank, skips those already in `<key>.jsonl` or any shard file, and appends to its own shard
    `<key>.rank<rank>.jsonl`; rank 0 then merges them with `merge_shards`."""
    from tqdm.auto import tqdm

    k = decoding.k
    params = decoding.params(suite.max_new_tokens)
    merged_path = out / f"{suite.key}.jsonl"
    done = read_records(merged_path)
    sharded = world > 1 or bool(_shard_files(out, suite.key))
    if sharded:
        done.update(_shard_records(out, suite.key, done))
    for item_id, recs in done.items():
        if len(recs) != k:
            raise ValueError(f"{merged_path}: item {item_id} has {len(recs)} samples, the decoding asks for {k}")
    path = shard_path(out, suite.key, rank) if sharded else merged_path
    drop_cut_last_line(path)  # this process appends below: its lines must not run on from a cut one
    mine = [i for i in range(len(suite.ids)) if i % world == rank]
    scorers = [suite.new_scorer() for _ in range(k)]
    variant = suite.identity["variant"]
    bar = tqdm(total=len(mine), initial=sum(suite.ids[i] in done for i in mine), desc=suite.key,
               disable=not progress or rank != 0, dynamic_ncols=True)

    def generate(queue: list[int]) -> None:
        """Generate and score the items `queue` (indices into the suite), appending each batch's records."""
        for scored in generate_and_score(engine, [suite.items[i] for i in queue],
                                         [_seed_uid(suite, suite.ids[i]) for i in queue], params, scorers,
                                         seed=seed, batch=batch, prompt=suite.prompt):
            lines = []
            for s in scored:
                item_id = suite.ids[queue[s.index]]
                recs = [{"id": item_id, "sample": j, "variant": variant, "response": text, **result}
                        for j, (text, result) in enumerate(zip(s.texts, s.results))]
                done[item_id] = recs
                lines += [json.dumps(r, default=str) for r in recs]
            with path.open("a", encoding="utf-8") as f:  # after each batch: an interruption loses one batch at most
                f.write("".join(ln + "\n" for ln in lines))
            bar.update(len(scored))

    queue: list[int] = []  # items to generate, in dataset order
    try:
        for i in mine:
            item_id = suite.ids[i]
            if item_id not in done:
                queue.append(i)
            elif suite.meta.stateful_scoring and not sharded:
                # Score in dataset order so that a stateful scorer (MMMU's random fallback) draws exactly
                # as in an uninterrupted run: pending items first, then replay this done item. (A sharded
                # run's ranks each see part of the items: rank 0 scores them again in order when merging.)
                generate(queue)
                queue = []
                for j, rec in enumerate(done[item_id]):
                    scorers[j](rec["response"], suite.items[i])
        generate(queue)
    finally:
        bar.close()
    return done


def merge_shards(suite: Suite, decoding: Decoding, out: Path) -> dict[str, list[dict]]:
    """Rank 0, once every rank has run its share: append the shard records of `suite` to `<key>.jsonl` in dataset
    order (after the records it already holds, as one process appends them), remove the shards, and return all
    the suite's records. A stateful scorer (MMMU's random fallback) scores every response again in dataset order,
    replaying the records already merged, so the records equal one process's byte for byte."""
    merged_path = out / f"{suite.key}.jsonl"
    drop_cut_last_line(merged_path)  # its text is kept below, and the new records follow it
    merged = read_records(merged_path)
    shards = _shard_records(out, suite.key, merged)
    missing = [i for i in suite.ids if i not in merged and i not in shards]
    if missing:
        raise RuntimeError(f"{suite.key}: {len(missing)} item(s) ({', '.join(missing[:3])}) are in no shard file "
                           f"of {out}: a rank stopped before its share was done; run the same command again")
    scorers = [suite.new_scorer() for _ in range(decoding.k)] if suite.meta.stateful_scoring else []
    new: list[dict] = []
    for item_id, item in zip(suite.ids, suite.items):
        if item_id in merged:
            for scorer, rec in zip(scorers, merged[item_id]):
                scorer(rec["response"], item)  # replayed: the generator draws as in one uninterrupted process
        elif item_id in shards:
            recs = shards[item_id]
            if scorers:
                recs = [{"id": r["id"], "sample": r["sample"], "variant": r["variant"], "response": r["response"],
                         **scorer(r["response"], item)} for scorer, r in zip(scorers, recs)]
            merged[item_id] = recs
            new += recs
    if new:
        text = merged_path.read_text(encoding="utf-8") if merged_path.exists() else ""
        # atomic: a kill leaves the old file and the shards, or the new file
        atomic_write_text(merged_path, text + "".join(json.dumps(r, default=str) + "\n" for r in new), "utf-8")
    for f in _shard_files(out, suite.key):
        f.unlink()
    return merged


def _mean(values: list) -> Any:
    """Average k per-sample metric values: numbers element-wise (None skipped), equal values kept."""
    if all(v == values[0] for v in values):  # counts like "total" stay integers
        return values[0]
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(key for v in values for key in v))
        return {key: _mean([v.get(key) for v in values]) for key in keys}
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and len(numbers) == sum(v is not None for v in values):
        return sum(numbers) / len(numbers)
    return values


def summarise(suite: Suite, records: dict[str, list[dict]], decoding: Decoding) -> dict:
    """The metrics json of one benchmark: the module's metrics averaged over samples, and mean@k."""
    k = decoding.k
    per_item = [records[i] for i in suite.ids]
    results = [[recs[j] for recs in per_item] for j in range(k)]
    per_sample = [suite.metrics(suite.items, res) for res in results]
    key = suite.meta.headline
    values = [m.get(key) for m in per_sample]
    numbers = [v for v in values if v is not None]
    mean = sum(numbers) / len(numbers) if numbers else None
    std = (math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1)) if len(numbers) > 1 else None)
    if suite.meta.samples_together:
        merged = suite.metrics([it for it in suite.items for _ in range(k)], [r for recs in per_item for r in recs])
    else:
        merged = _mean(per_sample)
    summary = {"benchmark": suite.name, "key": suite.key, **suite.identity, "decoding": decoding.name, "samples": k,
               "items": len(suite.items), "headline": key, f"mean@{k}": mean, "mean@k": mean, "std@k": std,
               "per_sample_headline": values, "metrics": merged}
    if k > 1:
        summary["per_sample"] = per_sample
    return summary


# ----------------------------------------------------------------------------- the table


def markdown(df) -> str:
    """A GitHub markdown table, numbers to two decimals, missing values blank."""
    return df.to_markdown(index=False, floatfmt=".2f", missingval="") + "\n"


def write_table(out: Path):
    """One row per benchmark (or benchmark-variant) with results in `out` (scores x 100), in the order of
    BENCHMARKS, plus the unweighted average of the paper's five (their configured variants) when at least
    one is there; written as table.md and table.csv."""
    import pandas as pd

    described = json.loads((out / "config.json").read_text())["benchmarks"] if (out / "config.json").exists() else {}
    keys = sorted((key for key in described if (out / f"{key}.metrics.json").exists()),
                  key=lambda key: (BENCHMARKS.index(key.split("-", 1)[0]), key))
    rows = []
    for key in keys:
        m = json.loads((out / f"{key}.metrics.json").read_text())
        pct = lambda v: None if v is None else 100 * v  # noqa: E731
        k = m["samples"]
        also = ", ".join(f"{label.format(k=k)} {100 * m['metrics'][name]:.2f}"
                         for name, label in metadata(m["benchmark"]).secondary if m["metrics"].get(name) is not None)
        rows.append({"benchmark": key, "split": m.get("split", "test"), "variant": m["variant"],
                     "items": m["items"], "k": k, "metric": m["headline"], "mean@k": pct(m["mean@k"]),
                     "std@k": pct(m["std@k"]), "also": also, "extractor": m.get("extractor", "")})
    paper = [r["mean@k"] for r in rows if r["benchmark"] in EVAL_BENCHMARK_NAMES and r["mean@k"] is not None]
    if paper:
        rows.append({"benchmark": "average", "split": "", "variant": "", "items": None, "k": None,
                     "metric": f"mean of {len(paper)} of {len(EVAL_BENCHMARK_NAMES)}",
                     "mean@k": sum(paper) / len(paper), "std@k": None, "also": "", "extractor": ""})
    df = pd.DataFrame(rows, columns=["benchmark", "split", "variant", "items", "k", "metric", "mean@k", "std@k",
                                     "also", "extractor"]).astype({"items": "Int64", "k": "Int64"})
    df.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown(df))
    return df


# ----------------------------------------------------------------------------- entry points


class EvaluationProblems(ValueError):
    """Every problem found before an evaluation starts, one line each with its fix (`problems`)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        head = (f"{len(problems)} problems; fix them all, then rerun:\n  " if len(problems) > 1 else "")
        super().__init__(head + "\n  ".join(problems))


def _missing_images_allowed(allow: bool | Iterable[str], name: str) -> bool:
    return allow if isinstance(allow, bool) else name in set(allow)


def validate(checkpoint: str | Path, names: list[str], cfg: Any, limit: int | None = None,
             judge: Callable[[str], str] | None = None, allow_missing_images: bool | Iterable[str] = False,
             check_model: bool = True) -> tuple[Path | None, Decoding | None, dict[str, Suite], RunConfig]:
    """Check everything an evaluation needs before anything is loaded or written: the benchmark names, the
    decoding, the judge, the checkpoint (its weights too when `check_model`) and every benchmark's data, prompt
    variant and split. Raises `EvaluationProblems` listing every problem at once, each with its fix; returns
    (model folder, decoding, {key: suite}, the typed config)."""
    from rlsd_harness.models import check_weights

    problems: list[str] = []
    if not names:
        problems.append(f"no benchmarks given; valid: {', '.join(BENCHMARKS)}")
    if not isinstance(allow_missing_images, bool):
        unknown = sorted(set(allow_missing_images) - set(EVAL_BENCHMARK_NAMES))
        if unknown:
            problems.append(f"allow_missing_images names {', '.join(map(repr, unknown))}; valid: true, false or a "
                            f"list of {', '.join(EVAL_BENCHMARK_NAMES)}")
    # the keys the runner reads (seed, eval.*) against the config schema: the decoding, eval.k, eval.sampling,
    # eval.mathvista_judge ...; only a valid eval section is read
    config_problems = schema.problems(cfg, {"decoding": list(DECODINGS)}, only=("seed", "eval"))
    problems += config_problems
    run_cfg = schema.typed(cfg)
    decoding = None if config_problems else decoding_from_config(run_cfg.eval)
    model_dir = None
    try:
        model_dir = resolve_checkpoint(checkpoint)
        if check_model:  # weights that would load incompletely (random init), are unreadable or hold NaN
            check_weights(model_dir, "checkpoint")
    except (FileNotFoundError, ValueError) as e:
        problems.append(str(e))
    suites: dict[str, Suite] = {}
    for spec in dict.fromkeys(names):
        try:
            name = parse_benchmark(spec)[0]
            suite = build_suite(spec, run_cfg, limit, judge, _missing_images_allowed(allow_missing_images, name))
            suites[suite.key] = suite
        except KeyError as e:  # str(KeyError) quotes its message
            problems.append(e.args[0] if e.args else str(e))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise EvaluationProblems(problems)
    return model_dir, decoding, suites, run_cfg


def launched_world(environ: Any = None) -> int:
    """The number of processes a launcher started for this command: WORLD_SIZE where RANK is set (torchrun, the
    `deepspeed` launcher), the step's task count inside an srun step (SLURM_STEP_NUM_TASKS; the batch script
    itself is one process whatever --ntasks says), else 1. `rlsd_harness.dist.init_distributed` joins them."""
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return int(env.get("WORLD_SIZE", 1))
    return int(env.get("SLURM_STEP_NUM_TASKS", 1))


def process_group() -> tuple[int, int]:
    """(rank, world size): a process group over the launched ranks (gloo on CPU, NCCL on GPUs), or (0, 1)."""
    world = launched_world()
    if world == 1:
        return 0, 1
    from rlsd_harness.dist import init_distributed

    rank, joined = init_distributed()
    if joined != world:
        raise RuntimeError(f"the launcher started {world} ranks but the process group has {joined}: this version "
                           "of rlsd_harness.dist does not read this launcher's variables; set RANK, WORLD_SIZE, "
                           "LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    return rank, world


def _agree(error: BaseException | None) -> None:
    """Every rank learns whether any rank failed (so that none waits forever in a later collective); a rank
    that did not fail itself raises the first rank's message."""
    from rlsd_harness.dist import all_gather_object

    messages = all_gather_object(None if error is None else f"{type(error).__name__}\t{error}")
    if error is not None:
        raise error
    failed = [m for m in messages if m is not None]
    if failed:
        kind, _, message = failed[0].partition("\t")
        raise (FileExistsError if kind == "FileExistsError" else RuntimeError)(f"(on another rank) {message}")


def make_engine(cfg: RunConfig, model_dir: Path, model=None, processor=None, decoding: Decoding | None = None,
                log: Callable[[str], None] = print) -> tuple[Any, Any]:
    """(rollout engine, the HF model or None): vLLM when `rollout.engine` is vllm, vLLM is importable and no model
    was handed in; the HF engine over `model` (loaded from `model_dir` when None) otherwise."""
    import importlib.util

    from rlsd_harness.models import load_model, load_processor

    k = decoding.k if decoding is not None else 1
    if cfg.rollout.engine == "vllm":
        if model is None and importlib.util.find_spec("vllm") is not None:
            from rlsd_harness.rollout.vllm import VLLMRolloutEngine

            engine = VLLMRolloutEngine(str(model_dir), processor or load_processor(model_dir),
                                       cfg.rollout.gpu_memory_utilization, cfg.rollout.max_model_len,
                                       cfg.rollout.sleep_level, cfg.seed)
            return engine, None
        log("rollout=vllm: " + ("a loaded model was handed in" if model is not None else "vLLM is not installed here")
            + "; generating with the HF engine")
    if model is None:
        import torch

        from rlsd_harness.dist import device

        model, processor = load_model(model_dir).eval(), load_processor(model_dir)
        if torch.cuda.is_available():  # each rank on its own GPU (LOCAL_RANK)
            model.to(device())
    return HFRolloutEngine(model, processor, max_batch=cfg.eval.batch * k), model


def run_benchmarks(checkpoint: str | Path, names: list[str], cfg: Any, out: str | Path, limit: int | None = None,
                   overwrite: bool = False, model=None, processor=None, log: Callable[[str], None] | None = None,
                   allow_missing_images: bool | Iterable[str] = False):
    """Evaluate `checkpoint` on `names` under config `cfg` into `out`; returns the table (a DataFrame; None on
    ranks other than 0). `model`/`processor` may be passed in already loaded (they must be the checkpoint's).
    Every problem with the names, the config, the checkpoint and the data is reported at once
    (`EvaluationProblems`) before anything is loaded or written. `allow_missing_images`: true, or the benchmarks
    whose rows without their image file are prompted text-only.

    Started by a launcher (`launched_world` > 1), the ranks share each benchmark's items (item i goes to rank
    i % world), each appending to its own shard file, and rank 0 merges the shards into `<key>.jsonl` in dataset
    order and writes the metrics and the table: the same files, byte for byte, as one process writes (the
    sampling seeds are per item; MMMU's stateful scorer is replayed in dataset order on rank 0)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    judge_slot: list[Callable[[str], str]] = []
    judge = (lambda text: judge_slot[0](text)) if cfg.eval.mathvista_judge == "self" else None
    import torch

    owns_group = not torch.distributed.is_initialized()  # a caller's group (rlsd-evaluate study=) outlives this call
    rank, world = process_group()
    # Every rank reads the same arguments and data; the weights, the one costly check, are read by rank 0 alone.
    try:
        model_dir, decoding, suites, cfg = validate(checkpoint, names, cfg, limit, judge, allow_missing_images,
                                               check_model=model is None and rank == 0)
    except Exception as e:  # noqa: BLE001 - handed to the other ranks, then raised here
        if world == 1:
            raise
        _agree(e)
    if world > 1:
        _agree(None)
    out = Path(out)
    common = {"checkpoint": str(model_dir.resolve()), "weights": _weights_fingerprint(model_dir),
              "decoding": decoding.name, "sampling": _plain(decoding.identity()), "seed": cfg.seed}
    try:
        engine, model = make_engine(cfg, model_dir, model, processor, decoding, log if rank == 0 else lambda m: None)
    except Exception as e:  # noqa: BLE001 - handed to the other ranks, then raised here
        if world == 1:
            raise
        _agree(e)
    if not isinstance(engine, HFRolloutEngine):
        common["engine"] = "vllm"  # (HF results keep the folders written before this key existed comparable)
    error = None
    if rank == 0:
        try:
            prepare_out(out, common, {n: s.identity for n, s in suites.items()}, overwrite)
        except Exception as e:  # noqa: BLE001 - handed to the other ranks, then raised here
            error = e
    if world > 1:
        _agree(error)
    elif error is not None:
        raise error
    judge_slot.append(_judge_with(engine))
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        for key, suite in suites.items():
            error = None
            try:
                records = run_suite(suite, engine, decoding, cfg.seed, out, cfg.eval.batch,
                                    cfg.eval.progress and rank == 0, rank, world)
            except Exception as e:  # noqa: BLE001
                if world == 1:
                    raise
                error = e
            if world > 1:
                _agree(error)  # every rank's share is on disk before rank 0 merges
            if rank == 0:
                try:
                    if world > 1 or _shard_files(out, key):
                        records = merge_shards(suite, decoding, out)
                    summary = summarise(suite, records, decoding)
                    (out / f"{key}.metrics.json").write_text(json.dumps(summary, indent=1, default=str))
                    log(f"{key}: {summary['headline']} mean@{summary['samples']} = {summary['mean@k']} "
                        f"over {summary['items']} items" + (f" ({world} ranks)" if world > 1 else ""))
                except Exception as e:  # noqa: BLE001
                    if world == 1:
                        raise
                    error = e
            if world > 1:
                _agree(error if rank == 0 else None)  # the other ranks stop too if the merge failed
    finally:
        if model is not None:
            model.train(was_training)
    if world > 1 and owns_group:
        from rlsd_harness.dist import shutdown

        shutdown()
    return write_table(out) if rank == 0 else None
