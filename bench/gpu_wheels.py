"""`python bench/gpu_wheels.py [--dest .gpu-wheels]` (`make gpu-wheels`): the wheels the GPU check carries.

The GPU machine has no package registry, and everything that travels to it (working tree and carried folders)
is at most 64 MiB. This downloads, for CPython 3.12 on x86-64 Linux, the pinned wheels of
bench/gpu/wheels.txt into an ignored folder (building the sdist-only ones here into pure-Python wheels),
removes anything else from that folder (two versions of one package would stop the offline install), writes
bench/gpu/wheels.lock.json (file, size, sha256 and requirements of each wheel, read from the wheels
themselves), prints the total size and fails when it leaves too little room for the working tree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS_TXT = REPO / "bench" / "gpu" / "wheels.txt"
LOCK = REPO / "bench" / "gpu" / "wheels.lock.json"
DEVICE_IMAGE = REPO / "bench" / "gpu" / "device_image.txt"
DEFAULT_DEST = REPO / ".gpu-wheels"
MIB = 1024 * 1024
TRAVEL_LIMIT = 64 * MIB  # what one device call carries: working tree + carried folders
TREE_MARGIN = 8 * MIB  # room for the working tree to grow (results, new files) after the wheels were sized
NEVER_CARRIED = ("torch", "vllm", "torchvision", "torchaudio", "triton")  # the image's CUDA builds stay
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")  # pip matches manylinux_2_N tags exactly: name every N a wheel may carry


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    build: bool  # PyPI has an sdist only: built here
    line: int


def read_pins(path: Path = WHEELS_TXT) -> list[Pin]:
    """The pins of a wheels.txt; a malformed line or a package listed twice is named with its line number."""
    pins: list[Pin] = []
    seen: dict[str, int] = {}
    for k, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)(\s+build)?", text)
        if not m:
            raise ValueError(f"{path}:{k}: {raw.strip()!r} is not 'name==version' or 'name==version build'")
        name = norm(m.group(1))
        if name in NEVER_CARRIED:
            raise ValueError(f"{path}:{k}: {name} must not be carried (the device image's CUDA build is used)")
        if name in seen:
            raise ValueError(f"{path}:{k}: {name} is already pinned on line {seen[name]}")
        seen[name] = k
        pins.append(Pin(name, m.group(2), bool(m.group(3)), k))
    return pins


def read_device_image(path: Path = DEVICE_IMAGE) -> dict[str, str | None]:
    """{normalised name: version or None where no version was recorded} of the device image's packages."""
    out: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        text = raw.split("#", 1)[0].split()
        if text:
            out[norm(text[0])] = text[1] if len(text) > 1 else None
    return out


def wheel_name_version(filename: str) -> tuple[str, str]:
    parts = Path(filename).name.split("-")
    return norm(parts[0]), parts[1]


def wheel_requires(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    head = text.split("\n\n", 1)[0]
    return [ln.split(":", 1)[1].strip() for ln in head.splitlines() if ln.startswith("Requires-Dist:")]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def working_tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels besides the carried folders: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((repo / f).stat().st_size for f in files if f and (repo / f).is_file())


def budget_bytes(tree: int) -> int:
    return TRAVEL_LIMIT - tree - TREE_MARGIN


def _find(dest: Path, pin: Pin) -> Path | None:
    for f in dest.glob("*.whl"):
        if wheel_name_version(f.name) == (pin.name, pin.version):
            return f
    return None


def fetch(pin: Pin, dest: Path) -> Path:
    pip = [sys.executable, "-m", "pip"]
    spec = f"{pin.name}=={pin.version}"
    if pin.build:  # pure-Python sdists; built against this environment (deepspeed's setup imports torch)
        cmd = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), spec]
    else:
        cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(dest), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = _find(dest, pin)
    if done.returncode or found is None:
        raise RuntimeError(f"could not get {spec} (bench/gpu/wheels.txt line {pin.line}):\n{done.stdout}{done.stderr}")
    if pin.build and not found.name.endswith("-py3-none-any.whl"):
        raise RuntimeError(f"{found.name}: a built wheel must be pure Python (py3-none-any) to run on the device")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_wheels.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="the (git-ignored) wheel folder")
    args = p.parse_args(argv)
    pins = read_pins()
    locked = {e["file"]: e["sha256"] for e in json.loads(LOCK.read_text())} if LOCK.exists() else {}
    args.dest.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for pin in pins:
        have = _find(args.dest, pin)
        files.append(have if have is not None else fetch(pin, args.dest))
        want = locked.get(files[-1].name)
        if want and not pin.build and sha256(files[-1]) != want:
            raise SystemExit(f"error: {files[-1]} does not match its sha256 in {LOCK.relative_to(REPO)}; delete it "
                             f"and rerun, or, if the pin changed on purpose, delete the lock entry")
        print(f"  {files[-1].name:<80} {files[-1].stat().st_size / MIB:6.2f} MiB")
    for extra in set(args.dest.iterdir()) - set(files):
        extra.unlink()
        print(f"  removed {extra.name} (not in bench/gpu/wheels.txt)")
    lock = [{"name": pin.name, "version": pin.version, "file": f.name, "bytes": f.stat().st_size,
             "sha256": None if pin.build else sha256(f), "built_here": pin.build, "requires": wheel_requires(f)}
            for pin, f in zip(pins, files)]
    LOCK.write_text(json.dumps(lock, indent=1) + "\n")
    total, tree = sum(e["bytes"] for e in lock), working_tree_bytes()
    budget = budget_bytes(tree)
    print(f"{len(lock)} wheels, {total / MIB:.2f} MiB in {args.dest}; working tree {tree / MIB:.2f} MiB; "
          f"budget for wheels {budget / MIB:.2f} MiB (64 MiB carried per call, {TREE_MARGIN // MIB} MiB margin)")
    if total > budget:
        print(f"error: the wheels ({total / MIB:.2f} MiB) exceed the budget ({budget / MIB:.2f} MiB)", file=sys.stderr)
        return 1
    print(f"wrote {LOCK.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
