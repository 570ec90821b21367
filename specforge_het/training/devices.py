"""Where a training process runs: one device per process, shared by the frozen base and the draft.

HF Trainer decides the device from the launch, not from our config: under torchrun (LOCAL_RANK set)
each process trains on `cuda:LOCAL_RANK`; a single process trains on `cuda:0` and, when it sees more
than one GPU, wraps the model in `nn.DataParallel` (which would replicate the draft while the frozen
base stays on one GPU). `plan_training_device` resolves `--modeling.device` against the same facts
(launcher environment, visible CUDA devices) once, before the base is loaded, and refuses what HF
would get wrong; `check_trainer_device` then checks the TrainingArguments agree.

Pure functions of (requested name, environment, CUDA device count): testable without a GPU.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from specforge_het.config import ConfigError

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cpu" or "cuda:N": base and draft both live here
    use_cpu: bool  # TrainingArguments(use_cpu=...)
    local_rank: int | None  # the launcher's LOCAL_RANK, None for a plain single process
    world_size: int  # processes in the run (WORLD_SIZE, 1 for a plain single process)
    warnings: tuple[str, ...] = ()
    sharded_base: bool = False  # --modeling.device_map: HF spreads the base over this process's GPUs; the
    # draft sits on the base's last-layer device and HF Trainer treats the run as model parallel (n_gpu 1)


def launched_distributed(env: Mapping[str, str]) -> bool:
    """torchrun, `accelerate launch` and the deepspeed launcher all set LOCAL_RANK in every process."""
    return env.get("LOCAL_RANK", "") not in ("", "-1")


def _command(args: Sequence[str] | None) -> str:
    return shlex.join(args) if args else "<your arguments>"


def plan_training_device(requested: str, env: Mapping[str, str], cuda_count: int,
                         args: Sequence[str] | None = None, device_map: str = "") -> DevicePlan:
    """Resolve `--modeling.device` (cpu, cuda, cuda:N, auto) for one training process.

    env: the process environment (LOCAL_RANK, WORLD_SIZE); cuda_count: torch.cuda.device_count()
    (what CUDA_VISIBLE_DEVICES leaves visible); args: the command's arguments, quoted in the errors;
    device_map: --modeling.device_map ('' = the whole base on the plan's device).
    """
    name = requested.strip().lower()
    match = _CUDA.match(name)
    if name not in ("cpu", "auto") and match is None:
        raise ConfigError(f"--modeling.device '{requested}' cannot train: use cpu, cuda, cuda:N or auto.")
    distributed = launched_distributed(env)
    local = int(env["LOCAL_RANK"]) if distributed else None
    world = int(env.get("WORLD_SIZE", "1") or 1) if distributed else 1
    if name == "cpu" or (name == "auto" and cuda_count == 0):
        return _cpu_plan(cuda_count, local, world)
    if cuda_count == 0:
        raise ConfigError(f"--modeling.device {requested}: no CUDA device is visible to this process "
                          "(check the driver and CUDA_VISIBLE_DEVICES), or train with --modeling.device cpu.")
    index = int(match.group(1)) if match is not None and match.group(1) is not None else None
    if device_map:
        if distributed:
            raise ConfigError(f"--modeling.device_map {device_map} spreads one base over this node's GPUs, but under torchrun every "
                              "process would spread its own copy over the same GPUs. Run one process with device_map "
                              f"(python -m specforge_het.train {_command(args)}), or torchrun without it.")
        return DevicePlan("cuda:0", False, None, 1, sharded_base=True)  # cuda:0: where HF Trainer puts the batches
    if local is not None:
        return _distributed_plan(requested, index, cuda_count, local, world)
    return _single_process_plan(requested, index, cuda_count, args)


def _cpu_plan(cuda_count: int, local: int | None, world: int) -> DevicePlan:
    warn: tuple[str, ...] = ()
    if cuda_count > 0:
        warn = (f"CUDA is available ({cuda_count} GPU{'s' if cuda_count > 1 else ''}) but --modeling.device is cpu: "
                "training runs on the CPU. Use --modeling.device cuda (or auto) to train on the GPU.",)
    return DevicePlan("cpu", True, local, world, warn)


def _distributed_plan(requested: str, index: int | None, cuda_count: int, local: int, world: int) -> DevicePlan:
    """Under a launcher every process trains on its local rank's GPU."""
    if local >= cuda_count:
        raise ConfigError(f"this process has LOCAL_RANK {local} but only {cuda_count} GPU(s) are visible: start at most "
                          f"{cuda_count} processes per node (torchrun --nproc_per_node {cuda_count}).")
    if index is not None and index != local:
        raise ConfigError(f"--modeling.device {requested} under torchrun: every process trains on its local rank's GPU "
                          f"(this one is LOCAL_RANK {local}, cuda:{local}). Pass --modeling.device cuda (or auto); "
                          "choose the GPUs with CUDA_VISIBLE_DEVICES.")
    return DevicePlan(f"cuda:{local}", False, local, world)


def _single_process_plan(requested: str, index: int | None, cuda_count: int, args: Sequence[str] | None) -> DevicePlan:
    """A plain single process trains on cuda:0 and must see one GPU only (else HF wraps it in DataParallel)."""
    if index is not None and index >= cuda_count:
        raise ConfigError(f"--modeling.device {requested}: only {cuda_count} GPU(s) are visible (cuda:0..cuda:{cuda_count - 1}).")
    if cuda_count > 1:
        gpu = index if index is not None else 0
        raise ConfigError(
            f"{cuda_count} GPUs are visible but this is a single process: HF Trainer would train on cuda:0 and wrap the draft "
            "in nn.DataParallel while the frozen base stays on one GPU. Either train on all of them, one process per GPU:\n"
            f"    torchrun --nproc_per_node {cuda_count} -m specforge_het.train {_command(args)}\n"
            f"or on one GPU, with --modeling.device cuda:\n"
            f"    CUDA_VISIBLE_DEVICES={gpu} python -m specforge_het.train {_command(args)}")
    return DevicePlan("cuda:0", False, None, 1)


def check_trainer_device(plan: DevicePlan, args_device, n_gpu: int) -> None:
    """The TrainingArguments (built after the plan) must put the draft where the base is, unreplicated."""
    import torch

    want, got = torch.device(plan.device), torch.device(args_device)
    if got.type == "cuda" and got.index is None:
        got = torch.device("cuda", torch.cuda.current_device())
    same = want.type == got.type == "cpu" or want == got  # CPU index (accelerate may say cpu:0) is meaningless
    if not same or (n_gpu > 1 and not plan.sharded_base):  # model parallel: HF Trainer resets n_gpu to 1
        raise ConfigError(f"HF Trainer would train on {got} with n_gpu {n_gpu}, but the base was placed on {plan.device}: "
                          "launch one process per GPU with torchrun, or make one GPU visible with CUDA_VISIBLE_DEVICES.")


def check_sharding(fsdp: str, deepspeed: str, plan: DevicePlan) -> None:
    """Refuse FSDP / DeepSpeed runs that HF Trainer would not run as asked (or would silently run as DDP)."""
    if not fsdp and not deepspeed:
        return
    if fsdp and deepspeed:
        raise ConfigError("--training.fsdp and --training.deepspeed exclude each other: choose one.")
    flag = "--training.fsdp" if fsdp else f"--training.deepspeed {deepspeed}"
    if plan.local_rank is None:
        raise ConfigError(f"{flag} shards the draft across processes: launch with torchrun "
                          "(torchrun --nproc_per_node N -m specforge_het.train ...).")
    if plan.use_cpu:
        raise ConfigError(f"{flag} needs CUDA devices: on CPU accelerate would run plain DDP instead of FSDP, and the "
                          "DeepSpeed setup here targets GPUs. Train on CPU without it (DDP: torchrun with --training.ddp_backend gloo).")
    if deepspeed:
        _check_deepspeed_config(deepspeed)


def _check_deepspeed_config(path_name: str) -> dict:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(path_name)
    if not path.is_file():
        raise ConfigError(f"--training.deepspeed {path_name}: no such file (a ZeRO-2 config ships as configs/deepspeed_zero2.json).")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--training.deepspeed {path_name}: not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--training.deepspeed {path_name}: expected a JSON object of DeepSpeed settings.")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("--training.deepspeed needs the deepspeed package: pip install deepspeed "
                          "(it builds CUDA extensions: install it in the environment that has your CUDA toolkit).")
    return config
