"""The GPU check without a GPU: the carried wheels against the device image's package list, the per-step time
limits, the result lines, and (slow) the dry mode end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


gw = _load("gpu_wheels")
gc = _load("gpu_check")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if "==" in text:
            name, version = text.split("==")
            pins[gw.norm(name)] = version
    return pins


def test_every_carried_wheel_is_needed_and_pinned_as_the_project_pins_it():
    pins = gw.read_pins()
    image = gw.read_device_image()
    constraints = _constraints()
    assert len(image) > 150 and image["transformers"] == "5.17.0" and image["python"] == "3.12.3"
    for pin in pins:
        assert pin.name not in gw.NEVER_CARRIED
        # carrying what the image already has at the same version would only cost travel room
        assert image.get(pin.name) != pin.version, f"{pin.name} {pin.version} is already on the device image"
        if pin.name in constraints:
            assert pin.version == constraints[pin.name], f"{pin.name}: carried {pin.version}, constraints.txt {constraints[pin.name]}"
    names = {p.name for p in pins}
    assert {"transformers", "deepspeed", "hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "math-verify",
            "latex2sympy2-extended", "trl"} <= names


def test_wheel_list_errors_name_the_line(tmp_path):
    bad = tmp_path / "wheels.txt"
    bad.write_text("transformers==5.24.0\ntorch==2.11.0\n")
    with pytest.raises(ValueError, match=r"wheels.txt:2: torch must not be carried"):
        gw.read_pins(bad)
    bad.write_text("trl==1.16.0\ntrl==1.16.0  # again\n")
    with pytest.raises(ValueError, match=r"wheels.txt:2: trl is already pinned on line 1"):
        gw.read_pins(bad)
    bad.write_text("trl>=1.16\n")
    with pytest.raises(ValueError, match=r"wheels.txt:1: 'trl>=1.16' is not 'name==version'"):
        gw.read_pins(bad)


def test_lock_matches_the_wheel_list_and_fits_the_travel_budget():
    lock = json.loads(gw.LOCK.read_text())
    assert [(e["name"], e["version"]) for e in lock] == [(p.name, p.version) for p in gw.read_pins()], \
        "bench/gpu/wheels.txt changed: run make gpu-wheels to refresh bench/gpu/wheels.lock.json"
    for e in lock:
        assert gw.wheel_name_version(e["file"]) == (e["name"], e["version"])
        assert e["file"].endswith("-none-any.whl") or ("-cp312-cp312-" in e["file"] and e["file"].endswith("x86_64.whl"))
    total = sum(e["bytes"] for e in lock)
    assert total <= gw.budget_bytes(gw.working_tree_bytes()), f"wheels {total / gw.MIB:.1f} MiB exceed the budget"


def test_carried_requirements_are_met_by_the_device_image_and_the_wheels():
    lock = json.loads(gw.LOCK.read_text())
    installed = gc.static_installed(lock)
    assert gc.requirement_problems(lock, installed) == []
    # the check can fail: without a carried pydantic, deepspeed's requirement is unmet; an old version is named
    assert "deepspeed needs pydantic>=2.0.0: not installed" in gc.requirement_problems(
        lock, {k: v for k, v in installed.items() if k != "pydantic"})
    assert "transformers needs tokenizers<0.24.0,>=0.23.1: tokenizers 0.22.0 is there" in gc.requirement_problems(
        lock, {**installed, "tokenizers": "0.22.0"})


# The project's dependencies that the check never imports (and so does not carry), with why.
NOT_NEEDED_ON_THE_DEVICE = {"lm-eval": "only rlsd_harness.evaluation.lm_eval_bridge imports it, and no step of the check does",
                            "submitit": "imported only inside rlsd_harness.analysis.launch for launcher=slurm, which no step runs",
                            "optuna": "imported only by the tuner (rlsd-compare's tuning stage), which no step of the check runs"}


def test_project_dependencies_are_on_the_device_or_carried():
    import tomllib

    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    carried = {p.name: p.version for p in gw.read_pins()}
    image = gw.read_device_image()
    for req in deps:
        name = gw.norm(req.name)
        if name in NOT_NEEDED_ON_THE_DEVICE:
            continue
        if name in carried:
            assert req.specifier.contains(carried[name]), f"carried {name} {carried[name]} does not meet {req}"
        else:
            assert name in image, f"{req}: neither carried nor on the device image"
            if image[name] is not None:
                assert req.specifier.contains(image[name]), f"{req}: the image has {image[name]}; carry it"
    # the image's transformers is too old for the project: that is why it travels
    assert not Requirement(next(str(r) for r in deps if r.name == "transformers")).specifier.contains(image["transformers"])


def test_step_limits_fit_the_pass_and_bad_limits_are_refused():
    assert sum(gc.LIMITS_S.values()) <= gc.TOTAL_LIMIT_S == 480
    assert list(gc.LIMITS_S) == gc.STEPS and gc.STEPS[0] == "install"
    gc.check_limits(gc.LIMITS_S)
    with pytest.raises(ValueError, match="add up to 481 s, over the pass's 480 s"):
        gc.check_limits({**gc.LIMITS_S, "env": gc.LIMITS_S["env"] + 481 - sum(gc.LIMITS_S.values())})
    with pytest.raises(ValueError, match="positive whole seconds.*'env': 0"):
        gc.check_limits({**gc.LIMITS_S, "env": 0})
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['nope'\]; valid: install, env"):
        gc.run_check(Path("/nonexistent"), Path("/nonexistent"), True, ["nope"])


def _alive(pid: int) -> bool:
    try:  # a killed child not yet reaped by its (dead) parent is a zombie: dead, though its pid exists
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_overrunning_command_is_killed_with_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.perf_counter()
    code, seconds, _ = gc.run_limited([sys.executable, "-c", script], 1.5)
    assert code is None and 1.4 < seconds < 10 and time.perf_counter() - t0 < 10
    child = int(pidfile.read_text())
    deadline = time.time() + 5
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the step's own child outlived the time limit"
    code, _, out = gc.run_limited([sys.executable, "-c", "print('done')"], 30)
    assert code == 0 and "done" in out


def test_a_step_past_its_limit_is_reported_timed_out_and_the_pass_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "worker_cmd", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(gc, "DRY_SCALE", 1)
    t0 = time.perf_counter()
    results = gc.run_check(tmp_path / "out", tmp_path / "no-wheels", True, ["env", "install"],
                           limits={**gc.LIMITS_S, "env": 2}, work=tmp_path / "work")
    assert time.perf_counter() - t0 < 15
    assert [r.status for r in results] == ["TIMEOUT", "DRY"]
    lines = (tmp_path / "out" / "gpu_check.txt").read_text().splitlines()
    assert lines[0].startswith("# bench/gpu_check.py, DRY") and lines[-1].startswith("# total")
    assert lines[1].split()[:2] == ["env", "TIMEOUT"] and "killed at the 2 s limit" in lines[1]
    assert lines[2].split()[:2] == ["install", "DRY"] and "no " in lines[2] and "(make gpu-wheels)" in lines[2]
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [s["status"] for s in saved["steps"]] == ["TIMEOUT", "DRY"]


def test_a_test_step_that_only_skips_is_not_a_pass(tmp_path, monkeypatch):
    (tmp_path / "test_only_skips.py").write_text("import pytest\n\ndef test_x():\n    pytest.skip('needs CUDA')\n")
    (tmp_path / "test_fails.py").write_text("def test_y():\n    assert 1 == 2\n")
    monkeypatch.setitem(gc.TESTS, "gpu_tests", ([str(tmp_path / "test_only_skips.py")], []))
    monkeypatch.setitem(gc.TESTS, "trainer_tests", ([str(tmp_path / "test_fails.py")], []))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    skipped = gc.pytest_step("gpu_tests", 60, False, env, tmp_path)
    assert skipped.status == "SKIP" and "0 passed, 0 failed, 1 skipped" in skipped.summary and "needs CUDA" in skipped.summary
    failed = gc.pytest_step("trainer_tests", 60, False, env, tmp_path)
    assert failed.status == "FAIL" and "test_fails::test_y" in failed.summary


@pytest.mark.slow
def test_dry_mode_end_to_end(tmp_path):
    """Every step of the real driver, as `make gpu-check DRY=1` runs it (about 3 minutes on 2 busy cores)."""
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tmp_path / "gpu_check.txt").read_text().splitlines()
    steps = [ln.split()[:2] for ln in lines if not ln.startswith("#")]
    assert steps == [[s, "DRY"] for s in gc.STEPS]
    assert "0.62 B parameters, vocab 151936" in "\n".join(lines)
    assert all("CUDA" in ln or "dry" in ln for ln in lines if not ln.startswith("#"))
