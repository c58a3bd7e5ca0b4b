"""Several processes, on one machine or many, through Lightning: who is who, and the collectives
headstart needs around training.

A run on N devices is N processes (ranks), each with its own device. Lightning starts them and
connects them: ``headstart train --devices 2`` on one machine (Lightning's launcher re-runs the
command once per extra device), ``torchrun`` across machines, ``srun`` under SLURM (Lightning's
cluster environments read their variables). ``launch`` does that once per process, at the start
of a run, so that the work before training can be shared out: the frozen pass is computed once
in total, each rank its share of the images (``gather_rows`` puts them together).

>>> ranks = launch("cpu", 1, num_nodes=1)                  # doctest: +SKIP
>>> ranks.rank, ranks.world, ranks.device                   # doctest: +SKIP
(0, 1, device(type='cpu'))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from headstart.errors import ConfigError, HeadstartError, RunError

# Rows moved per collective call when gathering: bounds the memory a gather needs on a GPU.
GATHER_ROWS = 4096


@dataclass
class Ranks:
    """This process's place among the ranks of a run, and what they do together."""

    rank: int = 0  # global rank: 0 writes the run folder
    world: int = 1
    device: torch.device = torch.device("cpu")  # this rank's own device (LOCAL_RANK's GPU)
    fabric: Any = None  # lightning.Fabric when world > 1

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def on_zero(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its result (or its HeadstartError) on every rank: a bad input found by
        rank 0 stops every rank with the same message, instead of leaving them waiting."""
        result, error = None, None
        if self.is_zero:
            try:
                result = fn()
            except HeadstartError as e:
                error = e
            except Exception as e:  # e.g. an unwritable runs folder: the other ranks must not wait for ever
                if self.fabric is None:
                    raise
                error = RunError(f"Rank 0 failed: {type(e).__name__}: {e}")
        if self.fabric is not None:
            result, error = self.fabric.broadcast((result, error), src=0)
        if error is not None:
            raise error
        return result

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (each may see its own disk)."""
        if self.fabric is None:
            return flag
        return bool(self.fabric.all_gather(torch.tensor([int(flag)], device=self.device)).min())

    def share(self, n: int) -> range:
        """The indices of ``n`` rows this rank computes: a block of consecutive ones (rank r: the r-th of ``world``
        blocks of ``ceil(n / world)``), so that a rank reading shards in order reads only its own shards."""
        per_rank = math.ceil(n / self.world)
        return range(min(self.rank * per_rank, n), min((self.rank + 1) * per_rank, n))

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` rows computed rank by rank (rank r: its ``share``) in order, on every rank (CPU)."""
        if self.world == 1:
            return local
        per_rank = math.ceil(n / self.world)
        padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype)
        padded[: len(local)] = local
        out = torch.empty((self.world, per_rank, *local.shape[1:]), dtype=local.dtype)
        for start in range(0, per_rank, GATHER_ROWS):
            chunk = padded[start : start + GATHER_ROWS].to(self.device)
            out[:, start : start + GATHER_ROWS] = self.fabric.all_gather(chunk).cpu()
        return out.reshape(self.world * per_rank, *local.shape[1:])[:n]  # rank r's block, then rank r + 1's


_LAUNCHED: dict[tuple, Ranks] = {}


def launch(accelerator: str = "auto", devices: str | int = "auto", num_nodes: int = 1) -> Ranks:
    """Start and connect the ranks of a run (once per process; a second call returns the same).

    One device: nothing to start; the ranks are this process alone, on the accelerator's device.
    """
    key = (accelerator, str(devices), num_nodes)
    if key not in _LAUNCHED:
        _LAUNCHED[key] = _launch(accelerator, devices, num_nodes)
    return _LAUNCHED[key]


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one): the one that reports."""
    return all(r.is_zero for r in _LAUNCHED.values())


def _launch(accelerator: str, devices: str | int, num_nodes: int) -> Ranks:
    import lightning as L

    _check_cpu_processes(accelerator, devices, num_nodes)
    try:
        fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="auto")
    except Exception as e:  # Lightning's MisconfigurationException, ValueError, RuntimeError...
        raise ConfigError(
            f"Cannot use --accelerator {accelerator} --devices {devices} --num-nodes {num_nodes}: "
            f"{str(e).rstrip('.')}. Ask for the devices this machine has (e.g. --accelerator cpu --devices 1)."
        ) from None
    if fabric.world_size == 1:
        return Ranks(device=fabric.device)
    fabric.launch()
    return Ranks(fabric.global_rank, fabric.world_size, fabric.device, fabric)


def _check_cpu_processes(accelerator: str, devices: str | int | list[int], num_nodes: int) -> None:
    """On CPUs, ``--devices N`` starts N processes here: no more than this machine has cores for.
    (GPU counts are checked by Lightning; processes started by torchrun or SLURM are theirs.)"""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    started_outside = any(k in os.environ for k in ("LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS"))
    if on_cpu and isinstance(devices, int) and not started_outside:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if devices > cores:
            where = (
                "this machine has no GPU that PyTorch can use, so"
                if accelerator == "auto"
                else "with --accelerator cpu"
            )
            raise ConfigError(
                f"--devices {devices}: {where} each device is a CPU process, and this machine has "
                f"{cores} CPU core(s). Use --devices {cores} or fewer (or run where the GPUs are)."
            )


def parse_devices(devices: str) -> str | int | list[int]:
    """``--devices`` as Lightning takes it: "auto", a count ("2"), or a list of device ids ("0,1")."""
    if devices == "auto":
        return devices
    try:
        return int(devices) if devices.lstrip("-").isdigit() else [int(d) for d in devices.split(",") if d.strip()]
    except ValueError:
        raise ConfigError(
            f"--devices must be auto, a count or a list of device ids such as 0,1. Received: devices={devices!r}"
        ) from None


def precision(name: str = "auto") -> str:
    """Lightning's precision for the ``precision`` option (a config key): "auto" is bf16 mixed where it
    pays (a GPU), 32-bit elsewhere."""
    if name != "auto":
        return name
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"
