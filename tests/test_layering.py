"""The package's import graph: layers import downward only, and no module imports itself back through others.

A layer may import from its own layer and those below it. Imports inside functions count too: a lazy import
hides an upward dependency at load time but not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "rlsd_harness"
# Lowest first. Each entry: a module prefix below rlsd_harness.
LAYERS = [
    ("algorithms", "config", "answers", "prompts", "dist", "benchmarks", "io", "trees", "local_files"),  # pure pieces, the config layer, files
    ("models", "rollout", "verifier", "data"),  # what a step is made of
    ("evaluation",),
    ("training",),
    ("analysis",),
    ("cli", "__init__"),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    rest = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if rest in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def is_module(root: Path, dotted: str) -> bool:
    as_path = root.parent / dotted.replace(".", "/")
    return as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists()


def import_graph(root: Path = ROOT) -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in root.rglob("*.py"):
        src = module_name(path, root)
        graph.add_node(src)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg itself
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s for s in subs if is_module(root, s)] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("rlsd_harness") and t != src and is_module(root, t):
                    graph.add_edge(src, t)
    return graph


def upward_edges(graph: nx.DiGraph) -> list[str]:
    return [f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})" for a, b in graph.edges
            if layer_of(b) > layer_of(a)]


def test_every_module_is_in_a_layer_and_imports_downward_only():
    upward = upward_edges(import_graph())
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the architecture
    graph.remove_edges_from([(a, b) for a, b in list(graph.edges) if b.startswith(a + ".")])
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_the_checker_sees_a_planted_upward_import(tmp_path):
    root = tmp_path / "rlsd_harness"
    for rel, text in {"__init__.py": "", "training/__init__.py": "", "training/trainer.py": "",
                      "benchmarks/__init__.py": "", "benchmarks/x.py": "def f():\n    from rlsd_harness.training import trainer\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert "rlsd_harness.benchmarks.x (layer 0) -> rlsd_harness.training.trainer (layer 3)" in upward_edges(
        import_graph(root))
