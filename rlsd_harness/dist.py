"""Process-group set-up and the DeepSpeed engine: one process without a launcher, or N ranks under `deepspeed`."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch


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


def _deepspeed():
    name_cpu_accelerator()
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


def launcher_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process-group variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) to add to `environ`.

    - set by a launcher (torchrun, `deepspeed`): nothing to add;
    - a task of an srun step (SLURM_STEP_NUM_TASKS is set: the batch script itself, one process whatever
      --ntasks says, has no step variables): rank SLURM_PROCID of SLURM_STEP_NUM_TASKS, local rank
      SLURM_LOCALID, the rendezvous on the first host of SLURM_JOB_NODELIST at MASTER_PORT if set, else a port
      every task derives alike from the job and step ids;
    - otherwise a world of one on a free local port."""
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return {}
    if "SLURM_STEP_NUM_TASKS" in env and int(env["SLURM_STEP_NUM_TASKS"]) > 1:
        step = env.get("SLURM_STEP_ID", "0")
        # 15000-34999: clear of the ephemeral range (32768+ on Linux) for the most part and of Slurm's 6817/6818
        port = env.get("MASTER_PORT") or str(15000 + (int(env["SLURM_JOB_ID"]) * 7 + int(step if step.isdigit() else 0)) % 20000)
        return {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "WORLD_SIZE": env["SLURM_STEP_NUM_TASKS"], "MASTER_PORT": port,
                "MASTER_ADDR": env.get("MASTER_ADDR") or _first_host(env["SLURM_JOB_NODELIST"])}
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": env.get("MASTER_PORT") or str(_free_port())}


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


def deepspeed_config(ds: Any, micro_batch: int, grad_accum: int, grad_clip: float) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": {"stage": int(ds.zero_stage)},
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": bool(ds.get("bf16", False))},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.get("offload_optimizer"):
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if ds.get("param_persistence_threshold") is not None:  # ZeRO-3 keeps parameters this small gathered
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = int(ds.param_persistence_threshold)
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
