"""Atomic output files of the analysis: every table, record and figure is written whole to a temporary name and
renamed (rlsd_harness.io), so an interrupted report never leaves a torn file behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from rlsd_harness.io import atomic_path, atomic_write_text


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (rlsd_harness.io), creating its folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """`df` as CSV without its index, atomically."""
    write_text(path, df.to_csv(index=False))


def write_json(obj: Any, path: Path) -> None:
    """`obj` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=1) + "\n")


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG at `path` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
