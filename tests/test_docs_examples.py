"""The guides' examples and commands are run, so that the guides cannot drift from the code.

docs/api.md: every python block is executed (in order, in one namespace, from the repository root) and each
signature of its table is checked against the function it names (parameter names, order and defaults).
docs/adding-an-objective.md: what it names exists (paths, make targets, test ids, the fields of `mb` and
`policy`, functions and methods), its python blocks parse and their imports run; and (slow) the guide is followed
on a throwaway objective in a copy of the repository: the module, the config from the guide's yaml block and the
test file at the paths it names, then the commands of its Step 4 block, each of which must succeed."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import rlsd_harness
from rlsd_harness.algorithms import batch, common, grpo, opd, registry
from rlsd_harness.algorithms.batch import PolicyOutput, RolloutBatch
from tests import objective_helpers

REPO = Path(__file__).resolve().parents[1]
API = REPO / "docs" / "api.md"
GUIDE = REPO / "docs" / "adding-an-objective.md"
THROWAWAY = "guide_probe"  # the objective the slow test adds by following the guide


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def step_commands(text: str) -> list[str]:
    """The commands of the guide's Step 4 block (the one that runs `make config-docs`)."""
    (block,) = [b for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M) if "make config-docs" in b]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


# ------------------------------------------------------------------------------------------------ docs/api.md


def test_every_python_block_of_the_api_guide_runs(monkeypatch, capsys):
    """Executed, not only parsed: the example reads the committed study (a second or two)."""
    monkeypatch.chdir(REPO)
    found = blocks(API, "python")
    assert len(found) >= 2
    namespace: dict = {}
    for code in found:
        exec(compile(code, str(API), "exec"), namespace)  # noqa: S102 - the guide's own examples
    printed = capsys.readouterr().out
    assert "Name: rollout/reward" in printed and len(namespace["df"]) > 0, printed


def _documented_signatures() -> dict[str, str]:
    rows = re.findall(r"^\| `(\w+)\((.*?)\)(?: -> [^`]*)?` \|", API.read_text(), flags=re.M)
    return dict(rows)


def _split_params(text: str) -> list[tuple[str, object]]:
    """'a: list[str], b="x", c=None' -> [("a", EMPTY), ("b", "x"), ("c", None)], via the parser."""
    tree = ast.parse(f"def f({text}): pass").body[0]
    args = tree.args.args
    defaults = [inspect.Parameter.empty] * (len(args) - len(tree.args.defaults)) + [
        ast.literal_eval(d) for d in tree.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults)]


def test_the_api_table_states_each_functions_full_signature():
    documented = _documented_signatures()
    assert set(documented) == set(rlsd_harness.__all__), "the table documents every name of rlsd_harness.__all__"
    for name, text in documented.items():
        real = inspect.signature(getattr(rlsd_harness, name)).parameters
        want = [(p.name, p.default) for p in real.values()]
        got = _split_params(text)
        assert [n for n, _ in got] == [n for n, _ in want], f"docs/api.md: {name}'s parameters"
        for (n, doc_default), (_, default) in zip(got, want):
            if default is not inspect.Parameter.empty:  # a required parameter may be shown with its type only
                assert doc_default == default, f"docs/api.md: {name}({n}=...) says {doc_default!r}, the code {default!r}"


# ------------------------------------------------------------------------------ docs/adding-an-objective.md


def test_the_objective_guide_names_only_what_exists():
    text = GUIDE.read_text()
    # paths: every backticked file or folder name (a <name> placeholder stands for any file)
    for path in set(re.findall(r"`([\w.<>*/-]+/(?:[\w.<>*-]+\.(?:py|yaml|md)(?:::\w+)?)?)`", text)):
        file, _, test = path.partition("::")
        assert list(REPO.glob(file.replace("<name>", "*"))), f"{GUIDE.name} names {file}, which does not exist"
        assert not test or f"def {test}(" in (REPO / file).read_text(), f"{GUIDE.name}: no test {path}"
    # make targets, test ids, folders the commands name
    makefile = (REPO / "Makefile").read_text()
    for target in set(re.findall(r"make ([\w-]+)", text)):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{GUIDE.name}: no make target {target}"
    commands = step_commands(text)
    assert any(c.startswith(".venv/bin/ruff check") for c in commands) and "make config-docs" in commands
    for command in commands:
        program, *words = shlex.split(command)
        if program == "make":
            continue
        assert (REPO / program).exists(), f"{GUIDE.name}: `{command}`: no {program}"
        # every argument that is not an option, a module after -m or ruff's subcommand is a path
        paths = [w for i, w in enumerate(words) if not w.startswith("-") and (i == 0 or words[i - 1] != "-m")
                 and not (program.endswith("ruff") and w == "check")]
        for word in paths:
            file, _, test = word.partition("::")
            assert list(REPO.glob(file)), f"{GUIDE.name}: `{command}` names {file}, which does not exist"
            assert not test or f"def {test}(" in (REPO / file).read_text(), f"{GUIDE.name}: no test {word}"
    # what the trainer hands an objective: every `mb.<field>` and `policy.<field>` the guide mentions
    fields = {"mb": {f.name for f in dataclasses.fields(RolloutBatch)} | {n for n, _ in inspect.getmembers(
        RolloutBatch, lambda m: isinstance(m, property))}, "policy": {f.name for f in dataclasses.fields(PolicyOutput)}}
    for owner, name in set(re.findall(r"\b(mb|policy)\.(\w+)", text)):
        assert name in fields[owner], f"{GUIDE.name} mentions {owner}.{name}; the {owner} has {sorted(fields[owner])}"
    # functions and methods named as `name(...)`
    spaces = [registry.Objective, grpo.GRPO, common, registry, batch, objective_helpers, opd]
    for dotted in set(re.findall(r"`(?:self\.)?([A-Za-z_][\w.]*)\(", text)):
        head, _, attr = dotted.rpartition(".")
        if head.split(".")[0] in fields:  # `policy.logp.detach()`: a tensor's method, the field checked above
            continue
        where = [getattr(s, head) for s in spaces if hasattr(s, head)] if head else spaces
        assert any(hasattr(s, attr) for s in where), f"{GUIDE.name} names {dotted}(), which nothing defines"


def test_the_objective_guides_python_blocks_parse_and_its_imports_run():
    found = blocks(GUIDE, "python")
    assert len(found) >= 3
    for code in found:
        tree = ast.parse(code)
        imports = [node for node in tree.body if isinstance(node, ast.ImportFrom | ast.Import)]
        exec(compile(ast.Module(body=imports, type_ignores=[]), str(GUIDE), "exec"), {})  # noqa: S102


# ------------------------------------------------------------------------- the guide, followed (slow)


def _copy_repository(dest: Path) -> None:
    """The working tree's files that git tracks or would track (results/ left out: large, not needed)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if rel.startswith("results/") or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(src.read_bytes())


@pytest.mark.slow
def test_following_the_objective_guide_on_a_throwaway_objective_ends_green(tmp_path):
    """Steps 1-3 produce the three files the guide names (the module and test as the worked example's, renamed;
    the config is the guide's own yaml block); Step 4's commands then run as written, with two adaptations to a
    shared machine: the venv is this repository's (linked, and `make` is told not to reinstall it) and pytest
    gets its own --basetemp."""
    text = GUIDE.read_text()
    copy = tmp_path / "repo"
    _copy_repository(copy)
    (copy / ".venv").symlink_to(REPO / ".venv")
    rename = lambda s: re.sub(r"\bopd\b", THROWAWAY, s)  # noqa: E731 - `opd_loss` and `opsd` keep their names
    # Step 1: the module
    module = copy / "rlsd_harness" / "algorithms" / f"{THROWAWAY}.py"
    module.write_text(rename((REPO / "rlsd_harness" / "algorithms" / "opd.py").read_text()))
    # Step 2: the config, from the guide's yaml block
    (yaml_block,) = blocks(GUIDE, "yaml")
    assert "name: opd" in yaml_block
    (copy / "rlsd_harness" / "config" / "algorithm" / f"{THROWAWAY}.yaml").write_text(rename(yaml_block))
    # Step 3: the test
    (copy / "tests" / f"test_objective_{THROWAWAY}.py").write_text(
        rename((REPO / "tests" / "test_objective_opd.py").read_text()))
    # Step 4: the guide's commands, in order
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HARNESS_KILL"))}
    where = subprocess.run([".venv/bin/python", "-c", "import rlsd_harness; print(rlsd_harness.__file__)"],
                           cwd=copy, env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(copy), f"the copy must import its own package, not {where}"
    before = (copy / "docs" / "config.md").read_text()
    for command in step_commands(text):
        run = command  # a shell command, as a reader types it (globs expand)
        if command.startswith("make "):
            run = command.replace("make ", "make -o .venv/.installed ", 1)
        if " pytest " in command:
            run += f" --basetemp={shlex.quote(str(tmp_path / 'pt'))}"
        done = subprocess.run(["bash", "-c", run], cwd=copy, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{command} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    after = (copy / "docs" / "config.md").read_text()
    assert f"'{THROWAWAY}'" in after and f"'{THROWAWAY}'" not in before  # make config-docs listed the new choice
