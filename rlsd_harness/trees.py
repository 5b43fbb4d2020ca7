"""Nested mappings (configs, identities, tracker parameters) as one level of dotted keys.

One flattener for the whole package, in the lowest layer: the config schema, the benchmark runner's identity
check, a run's config comparison and the trackers' parameters all use it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Mapping[str, Any], prefix: str = "", keep_empty: bool = True) -> dict[str, Any]:
    """Dotted key -> leaf value, depth first in the mapping's order: {"a": {"b": 1}} -> {"a.b": 1}. `prefix`
    goes before every key. An empty mapping is a leaf ({} under its own key) with `keep_empty`, so that adding
    or removing one shows as a change; without it, it leaves no key (a tracker has no value to log for it)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and (value or not keep_empty):
            out.update(flatten(value, f"{name}.", keep_empty))
        else:
            out[name] = value
    return out
