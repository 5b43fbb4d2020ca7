"""Two checkpoints on the same evaluation: `rlsd-evaluate out=<A> compare_with=<B>` (or with `checkpoint=`, after
evaluating it into A).

Both folders are `rlsd-evaluate` outputs (config.json, `<key>.jsonl` with one record per (item, sample),
`<key>.metrics.json` once a benchmark is complete). Every benchmark complete in both is compared item by item, A - B:
an item's score is its benchmark's unit score (`Metadata.unit_scores`: the fraction of its k samples scored
correct, or for We-Math the composite problem's strict score), whose mean over the units is the headline mean@k.

- k = 1 (greedy, or one sample) with 0/1 unit scores: the exact McNemar test and its conditional Clopper-Pearson
  interval (stats.mcnemar_exact).
- mean@k (k > 1, or fractional unit scores): the BCa bootstrap over items and the paired sign-flip test
  (stats.paired_bootstrap_items).

Both resample items only: one evaluation of each checkpoint, so they say nothing about training-seed variance.
The p-values are also Holm-corrected across the benchmarks compared. Folders whose decoding (name, sampling
parameters, k) differs, or whose items differ for a benchmark (another data source, split, variant, limit or
token budget), are refused before anything is written. The result goes to A/compare.md and A/compare.csv; a
comparison already there against another folder is replaced only with overwrite=true.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rlsd_harness.analysis import stats
from rlsd_harness.evaluation.runner import unit_scores as record_unit_scores

DECODING_KEYS = ("decoding", "sampling")  # config.json keys that define how responses were drawn
OUTPUTS = ("compare.md", "compare.csv")


class PairingError(ValueError):
    """Two folders that cannot be compared item by item (the message says why, in one line)."""


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an rlsd-evaluate output folder: no config.json there")
    return json.loads(path.read_text())


def complete_benchmarks(folder: Path) -> dict[str, dict]:
    """{key: its metrics json} of the benchmarks whose evaluation in `folder` is complete (metrics written)."""
    described = _config(folder).get("benchmarks", {})
    return {key: json.loads((folder / f"{key}.metrics.json").read_text()) for key in sorted(described)
            if (folder / f"{key}.metrics.json").is_file()}


def unit_scores(folder: Path, key: str, name: str) -> tuple[dict[str, float], int]:
    """{unit: score} of benchmark `name` (results key `key`) in `folder`, and k (samples per item)."""
    path = folder / f"{key}.jsonl"
    scores, ks = record_unit_scores(path, name)
    if len(ks) != 1:
        raise PairingError(f"{path}: items have different sample counts {sorted(ks)}")
    return scores, ks.pop()


def check_pair(a: Path, b: Path) -> list[str]:
    """The benchmark keys that `a` and `b` share, complete in both; raises PairingError (one line) where they
    cannot be paired: the same folder, another decoding, no benchmark in common, or different items."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        raise PairingError(f"compare_with names the folder itself ({a}); give another rlsd-evaluate output folder")
    ca, cb = _config(a), _config(b)
    diffs = [f"{k}: {ca.get(k)!r} vs {cb.get(k)!r}" for k in DECODING_KEYS if ca.get(k) != cb.get(k)]
    if diffs:
        raise PairingError(f"{a} and {b} were decoded differently ({'; '.join(diffs)}); compare evaluations made "
                           "with the same eval.decoding and sampling")
    ma, mb = complete_benchmarks(a), complete_benchmarks(b)
    shared = sorted(set(ma) & set(mb))
    if not shared:
        raise PairingError(f"{a} and {b} have no complete benchmark in common ({sorted(ma) or 'none'} vs "
                           f"{sorted(mb) or 'none'})")
    for key in shared:
        # The data folder's path may differ between machines; the item ids (compared in `compare`) and the rest
        # of the identity (split, revision, variant, token budget, scoring) decide whether the items match.
        ia, ib = ({k: v for k, v in c["benchmarks"][key].items() if k != "source"} for c in (ca, cb))
        if ia != ib:
            what = "; ".join(f"{k}: {ia.get(k)!r} vs {ib.get(k)!r}" for k in sorted(set(ia) | set(ib))
                             if ia.get(k) != ib.get(k))
            raise PairingError(f"{key}: {a} and {b} evaluated different items ({what}); evaluate both on the same data")
        if ma[key].get("samples") != mb[key].get("samples"):
            raise PairingError(f"{key}: {a} has {ma[key].get('samples')} samples per item, {b} "
                               f"{mb[key].get('samples')}; evaluate both with the same eval.k")
    return shared


def compare(a: str | Path, b: str | Path, *, n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """One row per shared benchmark: both scores, A - B with its 95 % interval and p (points), the test used,
    and the Holm-corrected p over the benchmarks compared."""
    a, b = Path(a), Path(b)
    rows = []
    for key in check_pair(a, b):
        name = complete_benchmarks(a)[key]["benchmark"]
        sa, k = unit_scores(a, key, name)
        sb, _ = unit_scores(b, key, name)
        if set(sa) != set(sb):
            only = sorted(set(sa) ^ set(sb))
            raise PairingError(f"{key}: the folders hold different items ({len(set(sa) - set(sb))} only in {a}, "
                               f"{len(set(sb) - set(sa))} only in {b}, e.g. {only[:3]})")
        units = sorted(sa)
        xa, xb = np.array([sa[u] for u in units]), np.array([sb[u] for u in units])
        binary = k == 1 and np.isin(xa, (0.0, 1.0)).all() and np.isin(xb, (0.0, 1.0)).all()
        r = (stats.mcnemar_exact(xa, xb) if binary
             else stats.paired_bootstrap_items(xa, xb, n_resamples=n_resamples, seed=seed))
        rows.append({"benchmark": key, "k": k, "measure": "pass@1" if binary else f"mean@{k}",
                     "a": 100 * xa.mean(), "b": 100 * xb.mean(), "diff": 100 * r.difference, "low": 100 * r.low,
                     "high": 100 * r.high, "p": r.p_value, "items": r.n_items, "test": r.method})
    out = pd.DataFrame(rows)
    out["p_holm"], _ = stats.holm(out["p"].to_list())
    return out


def markdown(table: pd.DataFrame, a: Path, b: Path) -> str:
    """The comparison as markdown, naming both folders and the tests."""
    lines = [f"# {a} - {b}", "", f"A = `{a}`, B = `{b}` (compared with: `{Path(b).resolve()}`). Per benchmark, A - B "
             "in points over the same items (units) with its 95 % interval: the exact McNemar test where k = 1, the "
             "paired bootstrap over items otherwise; p Holm-corrected over the benchmarks. Items are resampled, "
             "training seeds are not.", "",
             "| benchmark | measure | items | A | B | A - B | 95 % CI | p | p Holm | test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.benchmark} | {r.measure} | {r.items} | {r.a:.1f} | {r.b:.1f} | {r.diff:+.1f} | "
                     f"[{r.low:+.1f}, {r.high:+.1f}] | {r.p:.3g} | {r.p_holm:.3g} | {r.test} |")
    return "\n".join(lines) + "\n"


def _recorded_other(a: Path) -> str | None:
    csv = a / "compare.csv"
    if not csv.is_file():
        return None
    other = pd.read_csv(csv).get("compared_with")
    return None if other is None or other.empty else str(other.iloc[0])


def check_output(a: Path, b: Path, overwrite: bool) -> None:
    """Refuse to replace A's comparison with another folder's unless `overwrite` (the same B is refreshed)."""
    other = _recorded_other(Path(a))
    if other is not None and other != str(Path(b).resolve()) and not overwrite:
        raise FileExistsError(f"{Path(a) / 'compare.md'} compares with {other}, not {Path(b).resolve()}; pass "
                              "overwrite=true to replace it")


def write(a: str | Path, b: str | Path, *, overwrite: bool = False, n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """compare(a, b) written to a/compare.md and a/compare.csv, after every check passed."""
    a, b = Path(a), Path(b)
    check_pair(a, b)
    check_output(a, b, overwrite)
    table = compare(a, b, n_resamples=n_resamples)
    from rlsd_harness.analysis.report import write_csv, write_text  # atomic writes

    write_csv(table.assign(compared_with=str(b.resolve())), a / "compare.csv")
    write_text(a / "compare.md", markdown(table, a, b))
    return table

