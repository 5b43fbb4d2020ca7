"""Peak memory of opening a training set of the paper's size through `data=local`, against the file's size.

Writes a synthetic parquet of 123,000 rows (MMFineReason-SFT-123K's row count) in the Hugging Face Image
layout, each row with one small PNG (a handful of distinct noise images of a few KB, stored uncompressed
and without dictionary encoding, as real photographs would be), opens it with `rlsd_harness.data.LocalData`,
reads a few rows, and reports the peak resident memory above the process's baseline. Each open runs in a
fresh process: the first converts the parquet into the `datasets` cache (as every first run does), the
second maps the cached copy (every later run).

    python bench/open_parquet_memory.py            # 123,000 rows in a temporary folder, removed after
    python bench/open_parquet_memory.py --rows 20000 --keep /tmp/bench-data
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: int, distinct: int, side: int) -> None:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(distinct):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        blobs.append(buf.getvalue())
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("image", image_type),
                        ("answer", pa.string()), ("solution", pa.string())])
    # The Image feature's metadata, as `datasets` writes it, so that the column reads as images.
    features = {"id": {"dtype": "string", "_type": "Value"}, "question": {"dtype": "string", "_type": "Value"},
                "image": {"_type": "Image"}, "answer": {"dtype": "string", "_type": "Value"},
                "solution": {"dtype": "string", "_type": "Value"}}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    batch = 5000
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=["id", "question", "answer"]) as w:
        for start in range(0, rows, batch):
            ids = range(start, min(start + batch, rows))
            w.write_table(pa.table({
                "id": [f"r{i}" for i in ids],
                "question": [f"In the figure, find the value of x in case {i} and explain each step." for i in ids],
                "image": [{"bytes": blobs[i % distinct], "path": None} for i in ids],
                "answer": [f"\\frac{{{i % 97}}}{{{1 + i % 13}}}" for i in ids],
                "solution": [("Reading the figure, the two angles add up; " * 4) + f"so x = {i % 97}." for i in ids],
            }, schema=schema))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _measure(path: str, cache: str) -> dict:
    """Run in a fresh process: warm up the imports, then open and read, sampling memory all along."""
    import resource
    import threading
    import time

    import psutil

    sys.path.insert(0, str(REPO))
    from rlsd_harness.data import LocalData

    # Open a 2-row file first: the modules `datasets` imports on its first load are not data.
    warm = Path(cache).parent / "warm-up.parquet"
    _write(warm, 2, 1, 8)
    LocalData(str(warm), cache_dir=str(Path(cache).parent / "warm-up-cache"))
    proc = psutil.Process()
    base_rss = proc.memory_info().rss
    base_anon, base_file = _status_kb("RssAnon"), _status_kb("RssFile")
    peak = {"rss": base_rss, "anon": base_anon, "file": base_file}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            peak["anon"] = max(peak["anon"], _status_kb("RssAnon"))
            peak["file"] = max(peak["file"], _status_kb("RssFile"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    data = LocalData(path, cache_dir=cache)
    t_open = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = [data[i] for i in (0, len(data) // 2, len(data) - 1)] + data.prompts(1, 8) + data.prompts(5000, 8)
    t_read = time.perf_counter() - t1
    done.set()
    sampler.join()
    assert len(data) > 0 and all(len(r.images) == 1 and r.images[0].size[0] > 0 for r in rows)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"rows": len(data), "open_s": t_open, "read_s": t_read, "rows_read": len(rows),
            "baseline_rss": base_rss, "peak_above_baseline": max(max_rss, peak["rss"]) - base_rss,
            "peak_anon_above_baseline": (peak["anon"] - base_anon) * 1024,
            "peak_file_above_baseline": (peak["file"] - base_file) * 1024,
            "end_rss_above_baseline": proc.memory_info().rss - base_rss}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=123_000)
    ap.add_argument("--distinct", type=int, default=8, help="distinct PNG images reused across rows")
    ap.add_argument("--side", type=int, default=40, help="image side in pixels (40: about 4.8 KB of noise PNG)")
    ap.add_argument("--keep", type=Path, default=None, help="write here and keep the files (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--_measure", nargs=2, metavar=("PARQUET", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._measure:
        print(json.dumps(_measure(*args._measure)))
        return
    import time

    work = args.keep or Path(tempfile.mkdtemp(prefix="open-parquet-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    path, cache = work / "train.parquet", work / "datasets-cache"
    try:
        t0 = time.perf_counter()
        # Generation runs in its own process so that none of its memory counts against the opens.
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                        f"from bench.open_parquet_memory import _write; from pathlib import Path; "
                        f"_write(Path({str(path)!r}), {args.rows}, {args.distinct}, {args.side})"], check=True)
        gen_s = time.perf_counter() - t0
        size = path.stat().st_size
        shutil.rmtree(cache, ignore_errors=True)
        results = {}
        for name in ("first open (converts into the datasets cache)", "cached open"):
            out = subprocess.run([sys.executable, __file__, "--_measure", str(path), str(cache)], check=True,
                                 capture_output=True, text=True).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])
        cache_size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        mib = 2**20
        print(f"parquet: {args.rows:,} rows, {size / mib:.0f} MiB ({size / args.rows / 1024:.1f} KiB a row), "
              f"written in {gen_s:.0f} s; datasets cache after the first open: {cache_size / mib:.0f} MiB")
        for name, r in results.items():
            print(f"{name}: open {r['open_s']:.1f} s, {r['rows_read']} rows read in {r['read_s']:.2f} s; "
                  f"peak RSS above baseline {r['peak_above_baseline'] / mib:.0f} MiB "
                  f"({100 * r['peak_above_baseline'] / size:.1f} % of the file; heap {r['peak_anon_above_baseline'] / mib:.0f} MiB, "
                  f"mapped file pages {r['peak_file_above_baseline'] / mib:.0f} MiB), "
                  f"at the end {r['end_rss_above_baseline'] / mib:.0f} MiB; baseline {r['baseline_rss'] / mib:.0f} MiB")
        if args.json:
            args.json.write_text(json.dumps({"file_bytes": size, "cache_bytes": cache_size, "rows": args.rows,
                                             "generate_s": gen_s, "opens": results}, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
