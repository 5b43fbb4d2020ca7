"""`python3 bench/gpu_check.py [--wheels .gpu-wheels] [--out DIR] [--dry]` (`make gpu-check`): the GPU path in
one pass, each step in its own process under its own time limit, one line of result per step.

Steps: install (the carried wheels, offline, no dependency resolution, then every carried wheel's
requirements checked against what is installed), env (machine and the versions in use), gpu_tests (the `gpu`-marked tests that need
no vLLM), trainer_tests (the CPU suite's fast trainer tests; the Trainer places itself on CUDA),
objective_tests (the fast objective tests, each objective's loss computed on CUDA), train_zero2 / train_zero3
(every objective on the tiny VLM, bf16, one rank: parameters move, losses finite, a resumed run repeats the
uninterrupted one), bench_grpo / bench_rlsd / bench_trl (a ~0.6 B-parameter Qwen3-VL built from a config,
random weights, vocabulary 151,936, prompts ~512 tokens, 1,024 forced response tokens, 2 prompts x G = 8:
seconds per phase, tokens/s, peak GPU memory). The limits add up to at most 8 minutes.

Results go to DIR (default: $OUT when set, else outputs/gpu-check): gpu_check.txt (one line per step, written
as each step ends) and gpu_check.json (everything each step measured). `--dry` runs on a machine without
CUDA: every step's process, imports, config composition and test collection run, the CUDA parts are skipped
and each line says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# ------------------------------------------------------------------------------------------------------------
# Everything the check calls by name: the one place to update when modules, functions or tests are renamed.
NAMES = {
    "compose_config": "rlsd_harness.config:compose_config",
    "run": "rlsd_harness.training.run:run",
    "shutdown": "rlsd_harness.dist:shutdown",
    "objective_names": "rlsd_harness.algorithms:objective_names",
    "policy_path": "rlsd_harness.training.warmup:policy_path",
    "build_data": "rlsd_harness.data:build_data",
    "Trainer": "rlsd_harness.training.trainer:Trainer",
    "load_model": "rlsd_harness.models:load_model",
    "load_processor": "rlsd_harness.models:load_processor",
    "models": "rlsd_harness.models",  # ARCHS, build_config, build_processor, train_tokenizer
    "embedded": "rlsd_harness.benchmarks.embedded",
    "build_trl": "bench.perf:build_trl",
    "trl_timer": "bench.perf:_PhaseTimer",
    "verifiers": "rlsd_harness.verifier:VERIFIERS",
    "parity": "tests.ds_worker:Parity",  # test-only verifier: mixed rewards even for a random model
    "small_overrides": "tests.conftest:small_overrides",
    "objective_registry": "rlsd_harness.algorithms.registry:get_objective_class",
    "read_jsonl": "rlsd_harness.io:read_jsonl",
    "typed": "rlsd_harness.config.schema:typed",
}
PYTEST = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
TESTS = {
    "gpu_tests": (["tests/test_scale.py"], ["-m", "gpu and not slow", "-k", "not vllm"]),
    "trainer_tests": (["tests/test_trainer.py"], ["-m", "not slow and not gpu"]),
    "objective_tests": (sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_objective_*.py")),
                        ["-m", "not slow and not gpu", "-p", "bench.gpu.objectives_on_cuda"]),
}
PIP_INSTALL = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", "--disable-pip-version-check"]
# ------------------------------------------------------------------------------------------------------------

TOTAL_LIMIT_S = 480  # 8 minutes on the device for the whole pass, so that one rerun fits 15 minutes of device time
LIMITS_S = {  # seconds per step, checked against TOTAL_LIMIT_S before anything runs
    "install": 35, "env": 15, "gpu_tests": 45, "trainer_tests": 70, "objective_tests": 35,
    "train_zero2": 60, "train_zero3": 70, "bench_grpo": 50, "bench_rlsd": 50, "bench_trl": 50,
}
STEPS = list(LIMITS_S)
DRY_SCALE = 3  # the dry mode runs on CPU machines that import torch and transformers several times slower

# The benchmark's model: Qwen3-VL's architecture at ~0.6 B parameters, with the real vocabulary size
BENCH_VOCAB = 151_936
BENCH_DIMS = dict(hidden=1024, layers=28, heads=16, kv=8, ffn=3072, v_depth=12, v_hidden=768, v_ffn=3072)
BENCH = dict(prompts=2, group=8, micro_batch=8, prompt_tokens=512, response_tokens=1024, image=448,
             warmup_tokens=32)
BENCH_DRY = dict(prompts=1, group=2, micro_batch=2, prompt_tokens=64, response_tokens=4, image=64, warmup_tokens=2)


def check_limits(limits: dict[str, int], total: int = TOTAL_LIMIT_S) -> None:
    """Every step has a positive limit and together they fit the pass's total."""
    bad = {k: v for k, v in limits.items() if not (isinstance(v, int) and v > 0)}
    if bad:
        raise ValueError(f"step time limits must be positive whole seconds; got {bad}")
    if sum(limits.values()) > total:
        raise ValueError(f"step time limits add up to {sum(limits.values())} s, over the pass's {total} s: {limits}")


def resolve(key: str) -> Any:
    import importlib

    module, _, attr = NAMES[key].partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


# ------------------------------------------------------------------------------------------------- running
@dataclass
class StepResult:
    name: str
    status: str  # PASS FAIL TIMEOUT SKIP DRY
    seconds: float
    limit: int
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name:<16}{self.status:<8}{self.seconds:6.1f}/{self.limit:<4d}s  {self.summary}"


def run_limited(cmd: list[str], limit: float, env: dict[str, str] | None = None, log: Path | None = None) -> tuple[int | None, float, str]:
    """(exit status or None when killed at the limit, seconds, output tail). The command runs in a process
    session of its own, and everything in that session is killed at the limit: children it started too."""
    t0 = time.perf_counter()
    out = open(log, "w") if log else tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            text=True)
    try:
        code: int | None = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        try:  # the session's other processes (a worker's own children) go with it, whether it ended or not
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    seconds = time.perf_counter() - t0
    out.flush()
    if log:
        out.close()
        text = log.read_text(errors="replace")
    else:
        out.seek(0)
        text = out.read()
        out.close()
    return code, seconds, text[-3000:]


def worker_cmd(name: str, result: Path, dry: bool, work: Path) -> list[str]:
    return [PY, str(Path(__file__).resolve()), "--worker", name, "--result", str(result), "--work", str(work),
            *(["--dry"] if dry else [])]


def _junit(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    out: dict[str, Any] = {"passed": 0, "failed": [], "skipped": []}
    for c in cases:
        nodeid = f"{c.get('classname')}::{c.get('name')}"
        if c.find("failure") is not None or c.find("error") is not None:
            out["failed"].append(nodeid)
        elif c.find("skipped") is not None:
            out["skipped"].append(f"{nodeid} ({c.find('skipped').get('message', '')[:80]})")
        else:
            out["passed"] += 1
    return out


def pytest_step(name: str, limit: float, dry: bool, env: dict[str, str], work: Path) -> StepResult:
    files, extra = TESTS[name]
    if dry:
        code, secs, tail = run_limited([*PYTEST, "--collect-only", *extra, *files], limit, env)
        collected = [ln for ln in tail.splitlines() if "tests collected" in ln or "test collected" in ln
                     or "deselected" in ln]
        if code is None:
            return StepResult(name, "TIMEOUT", secs, int(limit), f"collection killed at the {limit:.0f} s limit")
        if code != 0:
            return StepResult(name, "FAIL", secs, int(limit), f"collection failed (exit {code}): {tail[-300:]!r}")
        return StepResult(name, "DRY", secs, int(limit), f"{(collected or ['?'])[-1].strip()}; not run: needs CUDA")
    xml = work / f"{name}.xml"
    code, secs, tail = run_limited([*PYTEST, f"--junitxml={xml}", *extra, *files], limit, env, work / f"{name}.log")
    if code is None:
        got = _junit(xml) if xml.exists() else {}
        return StepResult(name, "TIMEOUT", secs, int(limit), f"killed at the {limit:.0f} s limit", {"tail": tail, **got})
    if not xml.exists():
        return StepResult(name, "FAIL", secs, int(limit), f"pytest exit {code}, no report", {"tail": tail})
    got = _junit(xml)
    n_failed, n_skipped = len(got["failed"]), len(got["skipped"])
    counts = f"{got['passed']} passed, {n_failed} failed, {n_skipped} skipped"
    if n_failed or code not in (0, 5):
        status, summary = "FAIL", f"{counts}; first failures: {', '.join(got['failed'][:3])}"
    elif got["passed"] == 0:
        status, summary = "SKIP", f"{counts}: nothing ran; {'; '.join(got['skipped'][:2])}"
    else:
        status, summary = "PASS", counts + (f" ({'; '.join(got['skipped'][:2])})" if n_skipped else "")
    if name == "objective_tests":
        marker = work / "objectives_on_cuda.json"
        calls = json.loads(marker.read_text()) if marker.exists() else {}
        summary += f"; objective losses computed on CUDA: {sum(calls.values())} ({len(calls)} objectives)"
        if status == "PASS" and not calls:
            status, summary = "FAIL", summary + " (none ran on CUDA)"
        got["cuda_calls"] = calls
    return StepResult(name, status, secs, int(limit), summary, {"tail": tail if status != "PASS" else "", **got})


def _gpu_wheels():
    """bench/gpu_wheels.py (lock, package lists, name normalisation), imported by path: bench/ is no package."""
    import importlib.util

    if "gpu_wheels" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "bench" / "gpu_wheels.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_wheels"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_wheels"]


def install_step(limit: float, dry: bool, wheels: Path, site: Path) -> StepResult:
    gpu_wheels = _gpu_wheels()
    lock = json.loads(gpu_wheels.LOCK.read_text())
    have = {f.name for f in wheels.glob("*.whl")} if wheels.is_dir() else set()
    missing = [e["file"] for e in lock if e["file"] not in have]
    details: dict[str, Any] = {"wheels": sorted(have), "missing": missing, "site": str(site)}
    if dry:
        problems = requirement_problems(lock, static_installed(lock))
        details["requirement_problems"] = problems
        status = "FAIL" if problems else "DRY"
        where = f"{len(lock) - len(missing)}/{len(lock)} wheels in {wheels}" if have else f"no {wheels} (make gpu-wheels)"
        summary = (f"{where}; requirements vs the device image's list: "
                   f"{'; '.join(problems) if problems else 'all met'}; pip install skipped (dry)")
        return StepResult("install", status, 0.0, int(limit), summary, details)
    if missing:
        return StepResult("install", "FAIL", 0.0, int(limit), f"missing wheels in {wheels}: {', '.join(missing)}", details)
    cmd = [*PIP_INSTALL, "--target", str(site), *(str(wheels / e["file"]) for e in lock)]
    code, secs, tail = run_limited(cmd, limit)
    if code is None or code != 0:
        return StepResult("install", "TIMEOUT" if code is None else "FAIL", secs, int(limit),
                          f"pip install {'killed at the limit' if code is None else f'exit {code}'}", {**details, "tail": tail})
    return StepResult("install", "PASS", secs, int(limit), f"{len(lock)} wheels into {site}", details)


def static_installed(lock: list[dict]) -> dict[str, str | None]:
    """What the device has after the install, as far as known here: its image's list, carried wheels on top."""
    installed = _gpu_wheels().read_device_image()
    installed.update({e["name"]: e["version"] for e in lock})
    return installed


def requirement_problems(lock: list[dict], installed: dict[str, str | None]) -> list[str]:
    """Each carried wheel's requirement (for CPython 3.12 on x86-64 Linux, no extras) that `installed`
    ({normalised name: version, None where unknown}) does not meet. An unknown version counts as met."""
    from packaging.requirements import Requirement

    norm = _gpu_wheels().norm
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    problems = []
    for e in lock:
        for text in e["requires"]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = norm(req.name)
            if name not in installed:
                problems.append(f"{e['name']} needs {req}: not installed")
            elif installed[name] is not None and not req.specifier.contains(installed[name], prereleases=True):
                problems.append(f"{e['name']} needs {req}: {name} {installed[name]} is there")
    return problems


def worker_step(name: str, limit: float, dry: bool, env: dict[str, str], work: Path) -> StepResult:
    result = work / f"{name}.json"
    code, secs, tail = run_limited(worker_cmd(name, result, dry, work), limit, env, work / f"{name}.log")
    got = json.loads(result.read_text()) if result.exists() else {}
    if code is None:
        partial = f"; before that: {got['summary']}" if got.get("summary") else ""
        return StepResult(name, "TIMEOUT", secs, int(limit), f"killed at the {limit:.0f} s limit{partial}", {**got, "tail": tail})
    if code != 0 or "status" not in got:
        last = [ln for ln in tail.strip().splitlines() if ln.strip()][-1:] or [""]
        return StepResult(name, "FAIL", secs, int(limit), f"worker exit {code}: {last[0][:300]}", {**got, "tail": tail})
    return StepResult(name, got["status"], secs, int(limit), got["summary"], got)


# ------------------------------------------------------------------------------------------------- workers
def _write(path: Path, status: str, summary: str, **details: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"status": status, "summary": summary, **details}, indent=1, default=str))
    tmp.replace(path)  # a worker killed mid-write leaves the previous, whole, result


def w_env(result: Path, dry: bool, work: Path) -> None:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available()}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "deepspeed", "trl", "accelerate", "tokenizers", "datasets", "hydra-core", "vllm"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                                 "--format=csv,noheader"], capture_output=True, text=True,
                                                timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
        summary = (f"{info['gpu']} ({info['gpu_memory_gib']} GiB, sm {info['capability']}), torch {info['torch']} "
                   f"CUDA {info['cuda']}, transformers {info['transformers']}, deepspeed {info['deepspeed']}, "
                   f"trl {info['trl']}, python {info['python']}")
        _write(result, "PASS", summary, **info)
    elif dry:
        _write(result, "DRY", f"no CUDA (dry): torch {info['torch']}, transformers {info['transformers']}, "
               f"deepspeed {info['deepspeed']}, python {info['python']}", **info)
    else:
        _write(result, "FAIL", f"no CUDA device visible to torch {info['torch']}", **info)


def w_requirements(result: Path, dry: bool, work: Path) -> None:
    """On the device after the install: every carried wheel's requirements against the installed versions."""
    from importlib.metadata import distributions

    gpu_wheels = _gpu_wheels()
    lock = json.loads(gpu_wheels.LOCK.read_text())
    installed: dict[str, str | None] = {}
    for d in distributions():  # PYTHONPATH (the carried wheels) comes first: its versions win
        installed.setdefault(gpu_wheels.norm(d.metadata["Name"]), d.version)
    problems = requirement_problems(lock, installed)
    wrong = [f"{e['name']} {installed.get(e['name'])} (carried {e['version']})" for e in lock
             if installed.get(e["name"]) != e["version"]]
    status = "FAIL" if problems or wrong else "PASS"
    _write(result, status, "; ".join(problems + [f"not the carried version: {w}" for w in wrong]) or "all met",
           problems=problems, wrong=wrong)


def _register_parity() -> None:
    resolve("verifiers")["parity"] = resolve("parity")


def _train_cases(stage: int, work: Path) -> list[tuple[str, dict[str, list[str]]]]:
    small = resolve("small_overrides")
    cases = []
    for obj in resolve("objective_names")():
        common = [f"algorithm={obj}", "algorithm.lr=null", "optim.lr=1e-2", f"deepspeed=zero{stage}",
                  "deepspeed.bf16=true", "train.save_every=1"]
        runs = {"straight": [*common, "train.steps=2", f"run.name={obj}-straight"],
                "split": [*common, "train.steps=1", f"run.name={obj}-split"],
                "resume": [*common, "train.steps=2", f"run.name={obj}-split", "run.resume=true"]}
        cases.append((obj, {k: small(work / f"runs-zero{stage}", *v) for k, v in runs.items()}))
    return cases


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-7)


def w_train(stage: int, result: Path, dry: bool, work: Path) -> None:
    compose = resolve("compose_config")
    cases = _train_cases(stage, work)
    cfgs = {(obj, k): compose(ov) for obj, runs in cases for k, ov in runs.items()}
    names = [obj for obj, _ in cases]
    if dry:
        _write(result, "DRY", f"{len(cfgs)} configs composed ({len(names)} objectives: {', '.join(names)} x "
               "straight/split/resume); runs skipped: need CUDA bf16", objectives=names)
        return
    import torch
    from safetensors.torch import load_file

    torch.use_deterministic_algorithms(True, warn_only=True)  # a resumed run must be able to repeat exactly
    _register_parity()
    run, policy_path = resolve("run"), resolve("policy_path")
    per: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    for obj in names:
        t0 = time.perf_counter()
        dirs = {k: run(cfgs[(obj, k)], log=lambda m: None) for k in ("straight", "split", "resume")}
        read_jsonl = resolve("read_jsonl")
        straight, split = read_jsonl(dirs["straight"] / "metrics.jsonl"), read_jsonl(dirs["resume"] / "metrics.jsonl")
        losses = [m["actor/loss"] for m in straight[1:] + split[1:] if "actor/loss" in m]
        finite = bool(losses) and all(math.isfinite(x) for x in losses)
        keys = [k for k in straight[-1] if isinstance(straight[-1][k], float) and "time" not in k and "seconds" not in k
                and k in split[-1]]
        worst_key, worst = max(((k, _rel(straight[-1][k], split[-1][k])) for k in keys), key=lambda kv: kv[1],
                               default=("", 0.0))
        typed = resolve("typed")(cfgs[(obj, "straight")])
        init = load_file(str(next(policy_path(typed.model, typed.data).glob("*.safetensors"))))
        final = load_file(str(dirs["straight"] / "final" / "model.safetensors"))
        resumed = load_file(str(dirs["resume"] / "final" / "model.safetensors"))
        unmoved = [n for n, t in final.items() if n in init and torch.equal(t, init[n].to(t.dtype))]
        weight_gap = max((resumed[n].float() - t.float()).abs().max().item() for n, t in final.items())
        ok = finite and not unmoved and worst <= 1e-5 and len(split) == len(straight) == 3
        per[obj] = {"losses": losses, "finite": finite, "unmoved": unmoved[:10], "n_unmoved": len(unmoved),
                    "n_tensors": len(final), "resume_worst_metric": worst_key, "resume_worst_rel": worst,
                    "resume_weight_max_abs": weight_gap, "metric_lines": [len(straight), len(split)],
                    "dtype": str(next(iter(final.values())).dtype), "seconds": time.perf_counter() - t0, "ok": ok}
        if not ok:
            failed.append(obj)
        done = ", ".join(f"{o} {'ok' if r['ok'] else 'FAILED'}" for o, r in per.items())
        _write(result, "FAIL" if failed else "PASS", f"(partial) {done}", objectives=per)
    worst_obj = max(per, key=lambda o: per[o]["resume_worst_rel"])
    summary = (f"{len(names) - len(failed)}/{len(names)} objectives ok (ZeRO-{stage}, bf16, 1 rank, 2 steps); "
               f"resume: worst metric gap {per[worst_obj]['resume_worst_rel']:.1e} rel ({worst_obj} "
               f"{per[worst_obj]['resume_worst_metric']}), weights max |diff| "
               f"{max(r['resume_weight_max_abs'] for r in per.values()):.1e}")
    if failed:
        summary += "; failed: " + "; ".join(
            f"{o} (finite={per[o]['finite']}, unmoved={per[o]['n_unmoved']}, resume rel {per[o]['resume_worst_rel']:.1e})"
            for o in failed)
    _write(result, "FAIL" if failed else "PASS", summary, objectives=per)
    resolve("shutdown")()


# --------------------------------------------------------------------------------------------- benchmark
def bench_config(tokenizer, dims: dict[str, int]):
    """A Qwen3-VL config of these dimensions for the tokenizer, with the vocabulary BENCH_VOCAB."""
    models = resolve("models")
    models.ARCHS["qwen3_vl"]["gpu_bench"] = dims
    try:
        config = models.build_config("qwen3_vl", "gpu_bench", tokenizer)
    finally:
        del models.ARCHS["qwen3_vl"]["gpu_bench"]
    config.text_config.vocab_size = BENCH_VOCAB  # sampled ids past the tokenizer's decode to nothing
    return config


def count_parameters(config) -> int:
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_bench_assets(work: Path, dry: bool) -> tuple[Path, Path]:
    """(model folder, data jsonl) for the benchmark, built once per pass and shared by its three steps. The dry
    mode builds the tiny dimensions with the same vocabulary: the plumbing, not the size."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    shape = BENCH_DRY if dry else BENCH
    root = work / "bench-assets"
    model_dir, data = root / "model", root / "data.jsonl"
    if (root / "done").exists():
        return model_dir, data
    models, embedded = resolve("models"), resolve("embedded")
    tokenizer = models.train_tokenizer(embedded.corpus(seed=0), 512)
    config = bench_config(tokenizer, models.ARCHS["qwen3_vl"]["tiny"] if dry else BENCH_DIMS)
    processor = models.build_processor("qwen3_vl", tokenizer, image_size=shape["image"])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForImageTextToText.from_config(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "recipe.json").write_text(json.dumps({"arch": "qwen3_vl", "size": "gpu_bench", "vocab": BENCH_VOCAB}))
    # prompts of ~prompt_tokens: one image of (image / 32)^2 tokens, then text up to the rest
    image_tokens = (shape["image"] // 32) ** 2
    sentences = embedded.corpus(seed=1)
    rows, k = [], 0
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        words: list[str] = []
        while len(tokenizer(" ".join(words))["input_ids"]) < shape["prompt_tokens"] - image_tokens - 24:
            words.append(sentences[k % len(sentences)])
            k += 1
        pixels = torch.randint(0, 256, (shape["image"], shape["image"], 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"img{i}.png")
        rows.append({"id": f"b{i}", "problem": " ".join(words), "answer": "1", "images": [f"img{i}.png"]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "done").touch()
    return model_dir, data


def bench_overrides(method: str, model_dir: Path, data: Path, dry: bool) -> list[str]:
    s = BENCH_DRY if dry else BENCH
    return [f"algorithm={'grpo' if method == 'trl' else method}", "model=tiny_qwen3vl", f"model.path={model_dir}",
            "model.warmup=null", "data=local", f"data.path={data}", "data.verifier=parity",
            f"train.prompts_per_step={s['prompts']}", f"train.group_size={s['group']}",
            f"train.micro_batch_size={s['micro_batch']}", "train.eval_every=0", "train.save_every=0",
            "train.progress=false", f"rollout.max_new_tokens={s['response_tokens']}", "dynamics.teacher_probe=false",
            "deepspeed=zero2", f"deepspeed.bf16={'false' if dry else 'true'}", "algorithm.lr=null"]


def _gib(x: float) -> float:
    return round(x / 2**30, 2)


def w_bench(method: str, result: Path, dry: bool, work: Path) -> None:
    import torch

    cuda = torch.cuda.is_available()
    shape = BENCH_DRY if dry else BENCH
    if not cuda and not dry:
        _write(result, "FAIL", "no CUDA")
        return
    model_dir, data = build_bench_assets(work, dry)
    processor = resolve("load_processor")(model_dir)
    n_params = count_parameters(bench_config(processor.tokenizer, BENCH_DIMS))  # the full size, dry or not
    cfg = resolve("typed")(resolve("compose_config")(bench_overrides(method, model_dir, data, dry)))
    _register_parity()
    settings = {"model": f"Qwen3-VL architecture, {n_params / 1e9:.2f} B parameters, vocab {BENCH_VOCAB}, random init",
                "params": n_params, **shape, "zero_stage": 2, "bf16": not dry}
    prompts = resolve("build_data")(cfg.data, cfg.seed).prompts(1, shape["prompts"])
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]}] for p in prompts]
    enc = processor(text=[processor.apply_chat_template(m, add_generation_prompt=True) for m in msgs],
                    images=[p.images[0] for p in prompts], return_tensors="pt", padding=True)
    settings["prompt_tokens_measured"] = int(enc["attention_mask"].sum(1).float().mean())
    if dry:
        _write(result, "DRY", f"{settings['model']} (counted on the meta device); prompts "
               f"{settings['prompt_tokens_measured']} tokens at the dry shape; config composed; "
               f"{method} steps skipped: need CUDA", settings=settings)
        return
    if method == "trl":
        _bench_trl(cfg, model_dir, result, settings, work)
    else:
        _bench_ours(method, cfg, model_dir, result, settings)


def _bench_ours(method: str, cfg: Any, model_dir: Path, result: Path, settings: dict) -> None:
    import torch

    trainer = resolve("Trainer")(cfg, resolve("load_model")(model_dir), resolve("load_processor")(model_dir),
                                 resolve("build_data")(cfg.data, cfg.seed), log=lambda m: None)
    steps = []
    for k, tokens in enumerate((settings["warmup_tokens"], settings["response_tokens"])):
        trainer.sampling.max_new_tokens = trainer.sampling.min_new_tokens = tokens  # forced length
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        m = trainer.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        phases = {key[len("ledger/step/time/"):]: v for key, v in m.items()
                  if key.startswith("ledger/step/time/") and key != "ledger/step/time/step"}
        rec = {"response_tokens": tokens, "wall_s": wall, "phases_s": phases,
               "generated_tokens": m["ledger/step/tokens/generated"], "loss": m.get("actor/loss"),
               "rollout_tokens_per_s": m["ledger/step/tokens/generated"] / phases["rollout"] if phases.get("rollout") else None,
               "step_tokens_per_s": m["ledger/step/tokens/generated"] / wall,
               "resident_gib": _gib(resident), "peak_allocated_gib": _gib(torch.cuda.max_memory_allocated()),
               "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved())}
        steps.append(rec)
        _write(result, "PASS" if k else "FAIL", _bench_summary(method, rec, k == 0), settings=settings, steps=steps)
    resolve("shutdown")()


def _bench_summary(method: str, rec: dict, warmup_only: bool) -> str:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in rec["phases_s"].items() if v >= 0.005)
    head = "(warm-up step only) " if warmup_only else ""
    tps = f"{rec['rollout_tokens_per_s']:.0f}" if rec.get("rollout_tokens_per_s") else "?"
    return (f"{head}{method}: step {rec['wall_s']:.2f} s ({phases}); {rec['generated_tokens']:.0f} tokens generated, "
            f"rollout {tps} tok/s; peak {rec['peak_allocated_gib']} GiB allocated "
            f"({rec['peak_reserved_gib']} reserved, {rec['resident_gib']} resident before the step)")


def _bench_trl(cfg: Any, model_dir: Path, result: Path, settings: dict, work: Path) -> None:
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    steps: list[dict[str, Any]] = []
    state: dict[str, Any] = {}

    class Timed(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            torch.cuda.synchronize()
            state["t0"], state["resident"] = time.perf_counter(), torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, st, control, **kw):
            torch.cuda.synchronize()
            wall = time.perf_counter() - state["t0"]
            acc, tokens = state["timer"].take()
            rollout = acc.get("rollout", 0.0)
            rec = {"response_tokens": settings["response_tokens"], "wall_s": wall,
                   "phases_s": {"rollout": rollout, "reward": acc.get("reward", 0.0),
                                "update": wall - acc.get("_gen_and_score", 0.0)},
                   "generated_tokens": tokens, "rollout_tokens_per_s": tokens / rollout if rollout else None,
                   "step_tokens_per_s": tokens / wall, "resident_gib": _gib(state["resident"]),
                   "peak_allocated_gib": _gib(torch.cuda.max_memory_allocated()),
                   "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved())}
            steps.append(rec)
            note = ("HF Trainer bf16 autocast over fp32 weights, adamw_torch, gradient checkpointing "
                    f"{'on' if args.gradient_checkpointing else 'off'} (GRPOConfig's default); ours: DeepSpeed "
                    "ZeRO-2 bf16, no gradient checkpointing")
            _write(result, "PASS" if len(steps) > 1 else "FAIL", _bench_summary("trl", rec, len(steps) == 1),
                   settings={**settings, "trl": note}, steps=steps)

    data = resolve("build_data")(cfg.data, cfg.seed)
    # its first step is the warm-up (full length: GRPOConfig fixes the completion length), the second is measured
    trainer = resolve("build_trl")(cfg, model_dir, data, 2, settings["response_tokens"], work / "trl-out", [Timed()],
                                   use_cpu=False, bf16=True)
    trainer.remove_callback(PrinterCallback)
    state["timer"] = resolve("trl_timer")(trainer)
    trainer.train()


WORKERS = {
    "env": w_env,
    "requirements": w_requirements,
    "train_zero2": lambda r, d, w: w_train(2, r, d, w),
    "train_zero3": lambda r, d, w: w_train(3, r, d, w),
    "bench_grpo": lambda r, d, w: w_bench("grpo", r, d, w),
    "bench_rlsd": lambda r, d, w: w_bench("rlsd", r, d, w),
    "bench_trl": lambda r, d, w: w_bench("trl", r, d, w),
}


# ------------------------------------------------------------------------------------------------- driver
def step_env(site: Path | None, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               HARNESS_CACHE=str(work / "cache"), GPU_CHECK_WORK=str(work), CUBLAS_WORKSPACE_CONFIG=":4096:8",
               PYTHONUNBUFFERED="1")
    return env


def run_check(out: Path, wheels: Path, dry: bool, steps: list[str], limits: dict[str, int] = LIMITS_S,
              work: Path | None = None) -> list[StepResult]:
    check_limits(limits)
    unknown = [s for s in steps if s not in limits]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; valid: {', '.join(limits)}")
    out.mkdir(parents=True, exist_ok=True)
    work = work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    site = None if dry else work / "site"
    env = step_env(site, work)
    txt, js = out / "gpu_check.txt", out / "gpu_check.json"
    mode = "DRY (no CUDA parts run)" if dry else "full"
    header = (f"# bench/gpu_check.py, {mode}; {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; host {platform.node()}, "
              f"{os.cpu_count()} CPUs; step limits {sum(limits[s] for s in steps)} s of {TOTAL_LIMIT_S}"
              + (f", x{DRY_SCALE} in the dry mode" if dry else ""))
    txt.write_text(header + "\n")
    print(header, flush=True)
    results: list[StepResult] = []
    t_start = time.perf_counter()
    for name in steps:
        scale = DRY_SCALE if dry else 1
        left = scale * TOTAL_LIMIT_S - (time.perf_counter() - t_start)
        limit = max(1, min(scale * limits[name], int(left)))
        if name == "install":
            r = install_step(limit, dry, wheels, work / "site")
            if r.status == "PASS":  # then the requirements, with what was just installed on the path
                req = worker_step("requirements", max(1, limit - r.seconds), dry, env, work)
                r = StepResult("install", req.status, r.seconds + req.seconds, limit,
                               f"{r.summary}; requirements: {req.summary}", {**r.details, **req.details})
        elif name in TESTS:
            r = pytest_step(name, limit, dry, env, work)
        else:
            r = worker_step(name, limit, dry, env, work)
        results.append(r)
        with txt.open("a") as f:
            f.write(r.line() + "\n")
        js.write_text(json.dumps({"header": header, "steps": [vars(x) for x in results]}, indent=1, default=str))
        print(r.line(), flush=True)
    total = time.perf_counter() - t_start
    tail = f"# total {total:.1f} s; " + ", ".join(f"{s} {sum(r.status == s for r in results)}" for s in
                                                  ("PASS", "FAIL", "TIMEOUT", "SKIP", "DRY"))
    with txt.open("a") as f:
        f.write(tail + "\n")
    print(tail, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels", help="folder of carried wheels")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else outputs/gpu-check)")
    p.add_argument("--dry", action="store_true", help="no CUDA: run every step's plumbing, skip the CUDA parts")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of: {', '.join(STEPS)}")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](args.result, args.dry, args.work)
        return 0
    if not args.dry:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device visible; on a machine without one, `make gpu-check DRY=1` "
                  "(bench/gpu_check.py --dry) runs the dry mode", file=sys.stderr)
            return 2
    out = args.out or Path(os.environ.get("OUT") or REPO / "outputs" / "gpu-check")
    results = run_check(out, args.wheels, args.dry, [s for s in args.steps.split(",") if s], work=args.work)
    return 1 if any(r.status in ("FAIL", "TIMEOUT") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
