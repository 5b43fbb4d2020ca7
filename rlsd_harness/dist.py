"""Process-group set-up and the DeepSpeed engine: one process without a launcher, or N ranks under `deepspeed`."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rlsd_harness.config.typed import DeepspeedSection


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def name_cpu_accelerator() -> None:
    """Without CUDA, tell DeepSpeed the CPU accelerator before anything imports it (transformers and accelerate
    do when a model loads): left to detect it, DeepSpeed warns on the console that it fell back to the CPU,
    which is the expected case on a CPU machine. An explicit DS_ACCELERATOR is kept."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


# A DeepSpeed op built on a start (the CPU shared-memory comm op on the first CPU start) is compiled by
# torch.utils.cpp_extension under a lock file, <extensions root>/<op>/lock, that torch's FileBaton creates with
# O_EXCL and keeps open until the build ends. A build killed midway leaves the file, and every later start
# spins on it forever, silently. A live build holds the file open; a stale one is held by no process.
BUILD_LOCK_WAIT_S = 1800.0  # how long a start waits for another process's live build (one takes ~3 min on 2 cores)


def _default_extensions_root() -> Path:
    """torch's own choice without TORCH_EXTENSIONS_DIR: <user cache>/torch_extensions/py<ver>_<accelerator>."""
    from torch.utils.cpp_extension import get_default_build_root

    accel = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
             f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{accel}"
    return Path(get_default_build_root()) / tag


def extensions_root() -> Path:
    """Where torch.utils.cpp_extension builds ops in this process."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else _default_extensions_root()


def use_venv_extensions_dir() -> None:
    """Inside a virtual environment (and without an explicit TORCH_EXTENSIONS_DIR), build ops under
    <venv>/torch_extensions: DeepSpeed's build flags name the venv, so two clones with their own venvs sharing
    the user-wide folder rebuilt the op (~3 min) whenever they alternated. The first time, builds of the shared
    folder made by this venv are copied over with their timestamps (ninja then finds them up to date)."""
    if "TORCH_EXTENSIONS_DIR" in os.environ or sys.prefix == sys.base_prefix:
        return
    root = Path(sys.prefix) / "torch_extensions"
    if not root.is_dir():
        shared = _default_extensions_root()
        tmp = root.with_name(f".torch_extensions.tmp-{os.getpid()}")
        try:
            tmp.mkdir(parents=True)
            for build in (shared.iterdir() if shared.is_dir() else []):
                ninja = build / "build.ninja"
                if ninja.is_file() and not (build / "lock").exists() and sys.prefix in ninja.read_text(errors="replace"):
                    shutil.copytree(build, tmp / build.name, symlinks=True)
            os.rename(tmp, root)
        except OSError:  # another start made it first, or the venv is read-only: torch's default then
            shutil.rmtree(tmp, ignore_errors=True)
            if not root.is_dir():
                return
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)


def lock_holders(path: Path) -> list[int]:
    """Ids of the processes that have `path` open (from /proc/<pid>/fd; processes of other users, whose fds
    cannot be read, do not build in this user's extension folder)."""
    target, pids = os.path.realpath(path), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == target for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
    return pids


def clear_stale_build_locks(root: Path | None = None, wait_s: float = BUILD_LOCK_WAIT_S,
                            log=lambda msg: print(msg, file=sys.stderr)) -> list[Path]:
    """Remove the op build locks under `root` (default: this process's extensions root) that no process holds,
    i.e. left by a killed build; wait up to `wait_s` for a live build to end. Returns the removed locks.
    Without /proc (no way to tell a live build) a lock is refused in one line naming it."""
    root = Path(root) if root is not None else extensions_root()
    locks = sorted(root.glob("*/lock")) if root.is_dir() else []
    if locks and not Path("/proc/self/fd").is_dir():
        raise FileExistsError(f"{locks[0]} is a DeepSpeed op build lock, and without /proc this start cannot tell "
                              f"whether a build holds it; if no build is running, remove it: rm {locks[0]}")
    removed, deadline = [], time.monotonic() + wait_s
    for lock in locks:
        told = False
        while True:
            try:
                inode = lock.stat().st_ino
            except FileNotFoundError:
                break  # the build ended meanwhile
            holders = lock_holders(lock)
            if not holders:
                # FileBaton closes the file an instant before it removes it: look again after a pause
                time.sleep(1.0)
                with contextlib.suppress(FileNotFoundError):
                    if lock.stat().st_ino == inode and not lock_holders(lock):
                        lock.unlink()
                        removed.append(lock)
                        log(f"removed {lock}: a DeepSpeed op build lock that no process holds (left by a build "
                            f"that was killed); {lock.parent.name} is built again")
                break
            if time.monotonic() > deadline:
                raise FileExistsError(f"{lock}: process {holders[0]} has held this DeepSpeed op build lock for over "
                                      f"{wait_s:.0f} s; if that build is stuck, stop it (kill {holders[0]}) and start again")
            if not told:
                log(f"waiting for process {holders[0]}, which is building the DeepSpeed op {lock.parent.name} ({lock})")
                told = True
            time.sleep(0.5)
    return removed


def _deepspeed():
    name_cpu_accelerator()
    use_venv_extensions_dir()
    clear_stale_build_locks()
    import deepspeed

    return deepspeed


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[03-05,09]" -> "gpu03"), as `scontrol show hostnames` expands it."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot expand SLURM_JOB_NODELIST={nodelist!r} with `scontrol show hostnames`: {e}") from e
    if not out:
        raise RuntimeError(f"`scontrol show hostnames {nodelist}` listed no host")
    return out[0]


# "<pid>:<port>" of the world of one this package set up in process <pid>. A child process inherits RANK ...
# MASTER_PORT with it; those are not a launcher's, and the parent's group still listens on that port.
OWN_GROUP = "RLSD_HARNESS_OWN_GROUP"


def _parents_own_group(env: Mapping[str, str]) -> bool:
    """RANK ... in `env` were set by another process for its own world of one (a Python caller that trained
    in-process and then started rlsd-train): the child rendezvousing on the parent's port would fail with
    EADDRINUSE. A launcher's variables (its own MASTER_PORT, or more than one rank) never match."""
    pid, _, port = env.get(OWN_GROUP, "").partition(":")
    return bool(pid) and pid != str(os.getpid()) and port == env.get("MASTER_PORT") and env.get("WORLD_SIZE") == "1"


def launcher_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process-group variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) to add to `environ`.

    - set by a launcher (torchrun, `deepspeed`): nothing to add;
    - inherited from a parent process's own world of one (OWN_GROUP): a world of one of this process's own;
    - a task of an srun step (SLURM_STEP_NUM_TASKS is set: the batch script itself, one process whatever
      --ntasks says, has no step variables): rank SLURM_PROCID of SLURM_STEP_NUM_TASKS, local rank
      SLURM_LOCALID, the rendezvous on the first host of SLURM_JOB_NODELIST at MASTER_PORT if set, else a port
      every task derives alike from the job and step ids;
    - otherwise a world of one on a free local port."""
    env = os.environ if environ is None else environ
    inherited = _parents_own_group(env)
    if "RANK" in env and not inherited:
        return {}
    if "SLURM_STEP_NUM_TASKS" in env and int(env["SLURM_STEP_NUM_TASKS"]) > 1:
        step = env.get("SLURM_STEP_ID", "0")
        # 15000-34999: clear of the ephemeral range (32768+ on Linux) for the most part and of Slurm's 6817/6818
        port = env.get("MASTER_PORT") or str(15000 + (int(env["SLURM_JOB_ID"]) * 7 + int(step if step.isdigit() else 0)) % 20000)
        return {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"], "MASTER_PORT": port,
                "MASTER_ADDR": env.get("MASTER_ADDR") or _first_host(env["SLURM_JOB_NODELIST"])}
    port = (None if inherited else env.get("MASTER_PORT")) or str(_free_port())
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
            OWN_GROUP: f"{os.getpid()}:{port}"}


def init_distributed() -> tuple[int, int]:
    """(rank, world size): from a launcher's variables (torchrun, `deepspeed`), from Slurm's inside an srun step
    (`launcher_env`), or a world of one (DeepSpeed would otherwise look for MPI)."""
    deepspeed = _deepspeed()

    os.environ.update(launcher_env())
    if torch.cuda.is_available():  # object collectives under NCCL use the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not torch.distributed.is_initialized():
        # DeepSpeed prints "... deepspeed_shm_comm_op built successfully" on stdout here; anything else it
        # prints still reaches the console (on stderr, beside the command's other diagnostics).
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                       auto_mpi_discovery=False)
        rest = [ln for ln in printed.getvalue().splitlines() if not ln.endswith("built successfully")]
        if rest:
            print("\n".join(rest), file=sys.stderr)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def cpu_identity() -> str:
    """The CPU model and the vector ISA torch dispatches its kernels for (e.g. "AMD EPYC, AVX512"): on CPU a
    run's floats, and so a chaotic warm-up's outcome, depend on it, beside the thread count."""
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return f"{model or 'unknown CPU'}, {torch.backends.cpu.get_cpu_capability()}"


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device())
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: int) -> int:
    t = torch.tensor([value], dtype=torch.long, device=device())
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one without a process group)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def exchange(pieces: list[Any]) -> list[Any]:
    """All-to-all of picklable objects: `pieces[k]` goes to rank k; returns what each rank sent here, in rank
    order. Each rank receives only its own pieces (one gather per destination)."""
    world = len(pieces)
    if world == 1:
        return list(pieces)
    received = None
    for dst in range(world):
        out = [None] * world if torch.distributed.get_rank() == dst else None
        torch.distributed.gather_object(pieces[dst], out, dst=dst)
        if out is not None:
            received = out
    return received


def deepspeed_config(ds: DeepspeedSection, micro_batch: int, grad_accum: int, grad_clip: float) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": {"stage": ds.zero_stage},
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": ds.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if ds.param_persistence_threshold is not None:  # ZeRO-3 keeps parameters this small gathered
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = ds.param_persistence_threshold
    return cfg


def initialize_engine(model: torch.nn.Module, optimizer, scheduler, config: dict):
    deepspeed = _deepspeed()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def initialize_inference_engine(model: torch.nn.Module, policy_config: dict):
    """A ZeRO-3 engine without an optimizer: partitions `model`'s parameters across the ranks like the policy's
    (`policy_config`) and installs the hooks that gather them layer by layer during a forward (a frozen teacher
    or reference next to a ZeRO-3 policy). The parameters keep their dtype."""
    deepspeed = _deepspeed()

    dtype = next(model.parameters()).dtype
    zero = {k: v for k, v in policy_config["zero_optimization"].items() if k != "offload_optimizer"}
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    return engine


def release_gathered(params: list[torch.nn.Parameter]) -> None:
    """Free the full copies ZeRO-3 keeps of gathered parameters (small "persistent" ones stay gathered after a
    forward), leaving only each rank's shard, which is then the one copy to write to."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = [p for p in params if p.ds_status == ZeroParamStatus.AVAILABLE]
    if gathered:
        gathered[0].partition(gathered)


def shutdown() -> None:
    # A barrier first: two ZeRO-3 ranks on CPU aborted at interpreter exit ("terminate called without an active
    # exception", exit -6) in 2 of 4 runs without it, in none of 6 with it.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def iter_full_parameters(module: torch.nn.Module, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) one parameter at a time; under ZeRO-3 each is gathered just for its own transfer."""
    if zero_stage == 3:
        import deepspeed

        for name, p in module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.data
    else:
        yield from ((n, p.data) for n, p in module.named_parameters())
