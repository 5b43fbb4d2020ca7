"""The difficulty filter (`rlsd-filter`): sample a model k times per item of a dataset, keep the items it fails.

MMFineReason-123K, the paper's training set, kept the items a reference model answered wrongly in all 4 of 4
samples; this builds the same kind of set for any model and data. The samples come from the training's rollout
engine with `rollout.*`'s sampling and are scored by the training's verifier (`data.verifier`), so "fails" means
what a reward of 0 means in training. Each item's k samples are seeded by (seed, item index, item id, sample) and
do not depend on batching, so an interrupted run resumes (per-item records are appended to records.jsonl after
every batch; a rerun skips the items already there) and repeats exactly what an uninterrupted run samples.

The kept items are written in the layout they came in: a .jsonl/.json/.parquet/.arrow file (each file of a folder)
keeps its rows verbatim, minus the dropped ones, under the same relative name in `out`, and the image files the
kept rows point to by relative path are copied beside it, so `data=local data.path=<out>/<file>` trains on it.
The embedded task (data=embedded) is written as a jsonl in the default schema with its images as png files.
A save_to_disk folder, a hub dataset or an in-memory dataset is written as one parquet of the columns read.
"""

from __future__ import annotations

import json
import math
import operator
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlsd_harness.io import atomic_path, atomic_write_text, drop_cut_last_line, read_jsonl

RULE_FIELDS = ("pass_rate", "passes", "fails")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
_CLAUSE = re.compile(r"^\s*(\w+)\s*(<=|>=|==|!=|<|>)\s*([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)\s*$")
DEFAULT_RULE = "pass_rate<=0"  # failed k of k: MMFineReason's rule


@dataclass(frozen=True)
class KeepRule:
    """`pass_rate<=0`, `passes<2`, `pass_rate<0.5 and passes>=1`: comparisons of an item's pass_rate (mean
    reward), passes or fails (samples with reward 1 / 0), all of which must hold."""

    text: str
    clauses: tuple[tuple[str, str, float], ...]

    @classmethod
    def parse(cls, text: str) -> KeepRule:
        clauses = []
        for part in re.split(r"\s+and\s+", text.strip()):
            m = _CLAUSE.match(part)
            if not m or m.group(1) not in RULE_FIELDS:
                raise ValueError(f"keep_if={text!r}: {part.strip()!r} is not <field><op><number>; valid fields "
                                 f"{', '.join(RULE_FIELDS)}, ops {' '.join(_OPS)}, clauses joined by 'and' "
                                 f"(e.g. {DEFAULT_RULE}, passes<2, pass_rate<0.5 and passes>=1)")
            clauses.append((m.group(1), m.group(2), float(m.group(3))))
        return cls(text.strip(), tuple(clauses))

    def __call__(self, record: dict[str, Any]) -> bool:
        return all(_OPS[op](float(record[field]), value) for field, op, value in self.clauses)


def item_record(index: int, item_id: str, rewards: Sequence[float], responses: Sequence[str]) -> dict[str, Any]:
    """What records.jsonl keeps of one item: its k rewards, pass counts and the responses."""
    k = len(rewards)
    passes = sum(1 for r in rewards if r >= 1.0)
    return {"index": index, "id": item_id, "k": k, "rewards": [float(r) for r in rewards],
            "pass_rate": sum(rewards) / k, "passes": passes, "fails": sum(1 for r in rewards if r <= 0.0),
            "responses": list(responses)}


def read_records(path: Path) -> dict[int, dict[str, Any]]:
    """Records by item index; {} for a missing file. A last line cut by a kill is dropped (rlsd_harness.io's
    policy: the item is sampled again); reading never writes, `sample_items` repairs the file before it appends."""
    return {int(rec["index"]): rec for rec in read_jsonl(path, missing_ok=True)}


def histogram(records: Iterable[dict[str, Any]], k: int) -> list[int]:
    """Items by number of passing samples, 0 .. k."""
    counts = [0] * (k + 1)
    for r in records:
        counts[int(r["passes"])] += 1
    return counts


def report(records: dict[int, dict[str, Any]], k: int, rule: KeepRule, identity: dict[str, Any]) -> dict[str, Any]:
    kept = sorted(i for i, r in records.items() if rule(r))
    n = len(records)
    hist = histogram(records.values(), k)
    return {
        **identity, "items": n, "keep_if": rule.text, "kept": len(kept),
        "kept_fraction": len(kept) / n if n else math.nan,
        "mean_pass_rate": sum(r["pass_rate"] for r in records.values()) / n if n else math.nan,
        "passes_histogram": {str(p): c for p, c in enumerate(hist)},
        "kept_ids": [records[i]["id"] for i in kept],
    }


def report_markdown(rep: dict[str, Any]) -> str:
    k, n = rep["k"], rep["items"]
    lines = [f"# rlsd-filter: {rep['data']}", "",
             f"Model `{rep['checkpoint']}`, k = {k} samples per item (temperature {rep['sampling']['temperature']}, "
             f"top-p {rep['sampling']['top_p']}, top-k {rep['sampling']['top_k']}, max {rep['sampling']['max_new_tokens']} "
             f"new tokens, seed {rep['seed']}), verifier `{rep['verifier']}`.", "",
             f"- items sampled: {n}",
             f"- mean pass rate: {rep['mean_pass_rate']:.3f}",
             f"- kept (`{rep['keep_if']}`): {rep['kept']} ({rep['kept_fraction']:.1%})", "",
             f"| passes (of {k}) | items | share | |", "|---:|---:|---:|:---|"]
    width = 40
    for p, c in rep["passes_histogram"].items():
        share = c / n if n else 0.0
        lines.append(f"| {p} | {c} | {share:.1%} | {'#' * round(share * width)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- writing the kept rows


def _copy_image(cell: Any, base: Path | None, dest_dir: Path) -> None:
    """Copy a relative image path of a kept row from where it was read (`base`) to the same path under dest_dir."""
    path = cell.get("path") if isinstance(cell, dict) and not cell.get("bytes") else cell
    if not isinstance(path, str) or not path or Path(path).is_absolute() or base is None:
        return  # encoded bytes travel in the row; an absolute path stays valid
    target = dest_dir / path
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / path, target)


def _write_rows(src: Path, rows: list[int], dest: Path) -> None:
    """The given rows (0-based, in file order) of data file `src`, in its format, to `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:  # a kill leaves the old file or the new one, never a part
        if src.suffix == ".jsonl":
            lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
            tmp.write_text("".join(lines[i] + "\n" for i in rows), encoding="utf-8")
        elif src.suffix == ".json":
            data = json.loads(src.read_text(encoding="utf-8"))
            keep = set(rows)
            if isinstance(data, dict):  # {id: row} (MathVista): same keys, same order
                out: Any = {key: v for i, (key, v) in enumerate(data.items()) if i in keep}
            else:
                out = [data[i] for i in rows]
            tmp.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        elif src.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(pq.read_table(src).take(rows), tmp)
        elif src.suffix == ".arrow":
            import pyarrow as pa

            with pa.memory_map(str(src)) as source:
                table = pa.ipc.open_stream(source).read_all().take(rows)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        else:
            raise ValueError(f"{src}: no writer for {src.suffix!r} files")


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return None


def write_local(data: Any, source: str, kept: Sequence[int], out: Path, image_root: str | None = None) -> list[Path]:
    """The kept rows (dataset indices) of a `LocalData` in its layout under `out`; returns the files written.
    Files keep their path relative to `image_root` when it is set (MATH-V's data/ and images/ side by side: train
    on the result with data.image_root=<out>), else relative to the source folder; the images a kept row names by
    relative path are copied to the same relative place. (Reads LocalData's parts: which file each row came from
    and where its relative image paths start.)"""
    src_root = Path(source).expanduser()
    root = Path(image_root).expanduser() if image_root else (src_root if src_root.is_dir() else src_root.parent)
    by_part: dict[int, list[int]] = {}
    for index in sorted(kept):
        k, i = data._locate(index)
        by_part.setdefault(k, []).append(i)
    image_cols = [c for f in ("images", "teacher_images") for c in _as_list(data.fields.get(f))]
    written = []
    for k, part in enumerate(data._parts):
        rows = by_part.get(k, [])
        src = Path(part.label)
        if src.is_file():
            dest = out / (_relative(src, root) or Path(src.name))
            _write_rows(src, rows, dest)
        else:  # save_to_disk folder, hub cache, in-memory: the columns read, as parquet
            dest = out / f"part{k}.parquet"
            dest.parent.mkdir(parents=True, exist_ok=True)
            part.ds.select(rows).to_parquet(str(dest))
        written.append(dest)
        base_rel = (_relative(part.base, root) if part.base is not None else None)
        image_dir = out / base_rel if base_rel is not None else dest.parent
        for i in rows:
            row = part.ds[i]
            for col in image_cols:
                for cell in _as_list(row.get(col)):
                    _copy_image(cell, part.base, image_dir)
    return written


def write_embedded(items: Sequence[Any], kept: Sequence[int], out: Path) -> list[Path]:
    """Kept embedded items as `embedded.jsonl` (id, question, images, answer, solution) with png images."""
    dest = out / "embedded.jsonl"
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in sorted(kept):
        item = items[index]
        names = []
        for j, image in enumerate(item.images):
            name = f"images/{item.id}-{j}.png"
            image.save(out / name)
            names.append(name)
        lines.append(json.dumps({"id": str(item.id), "question": item.question, "images": names,
                                 "answer": str(item.answer), "solution": str(item.solution)}))
    atomic_write_text(dest, "".join(ln + "\n" for ln in lines), "utf-8")
    return [dest]


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


# ----------------------------------------------------------------------------- sampling


def sample_items(engine: Any, items: Sequence[Any], todo: Sequence[int], verifier: Callable, params: Any, seed: int,
                 batch: int, records_path: Path, on_batch: Callable[[int], None] = lambda n: None) -> None:
    """k = params.n samples of each item in `todo` (indices into `items`), scored by `verifier`; each batch's
    records are appended to `records_path` once the batch is done."""
    from rlsd_harness.rollout.scored import generate_and_score

    drop_cut_last_line(records_path)  # appended below: the new lines must not run on from one a kill cut short

    def reward(text: str, item: Any) -> float:
        return verifier(text, item.answer).reward

    for scored in generate_and_score(engine, [items[i] for i in todo], [f"filter/{i}/{items[i].id}" for i in todo],
                                     params, [reward] * params.n, seed=seed, step=0, batch=batch):
        lines = [json.dumps(item_record(todo[s.index], str(s.item.id), s.results, s.texts), ensure_ascii=False)
                 for s in scored]
        with records_path.open("a", encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in lines))
        on_batch(len(scored))
