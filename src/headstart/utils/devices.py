"""The device for using a model in one process (predict, evaluate, serve): ``auto`` is a GPU where
there is one. Training's several processes are ``headstart.training.distributed``'s.
"""

from __future__ import annotations

import torch

from headstart.errors import ConfigError


def device(name: str = "auto") -> torch.device:
    """The device for using a model in one process: ``auto`` (a GPU where there is one), ``cpu``,
    ``gpu``/``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device("cuda" if name == "gpu" else name)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{name}'. Use auto, cpu, gpu, cuda or cuda:N.") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no GPU that PyTorch can use. Use --device cpu or auto.")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s).")
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"Unknown device '{name}'. Use auto, cpu, gpu, cuda or cuda:N.")
    return chosen
