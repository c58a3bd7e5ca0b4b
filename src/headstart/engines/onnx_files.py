"""A module written as ONNX once: the graph every engine but PyTorch reads, cached by what it computes.

``write_onnx`` is the one ONNX writer (``headstart export`` writes its files with it too): PyTorch's
``torch.export``-based exporter, any batch size. ``converted`` keeps a frozen module's ONNX file under
``<cache dir>/engines/<fingerprint>.onnx``: the fingerprint covers the module's structure, every
weight and buffer, what the caller adds (its preprocessing) and the input's shape, so a changed
weight means a new file, and a second run on the same backbone never exports again.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from headstart.utils.files import cache_dir, check_writable_dir

log = logging.getLogger(__name__)

# Bump when the writer changes what it writes: older files are then exported again.
FORMAT = "1"


def fingerprint(module: nn.Module, extra: str = "") -> str:
    """What ``module`` computes, as a hash: its structure, every parameter and buffer (values, dtype,
    shape), and ``extra`` (what the caller knows that the module does not hold, e.g. its preprocessing)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{FORMAT}|{torch.__version__}|{extra}|{module!r}".encode())
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t = t.detach()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str = "input",
    output_name: str = "output",
    metadata: dict | None = None,
) -> Path:
    """Write ``module`` (on the CPU, in eval mode) as an ONNX file taking any batch size of
    ``example``'s shape; ``metadata`` goes into the file's ``metadata_props`` as JSON under key
    ``headstart``."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes={next(iter(_arg_names(module))): {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if metadata is not None:
        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "headstart", json.dumps(metadata)
        onnx.save(proto, str(path))
    return path


def _arg_names(module: nn.Module) -> list[str]:
    return list(inspect.signature(module.forward).parameters)


def engine_dir() -> Path:
    """Where converted modules are kept: ``$HEADSTART_CACHE/engines`` (``~/.cache/headstart/engines``)."""
    return check_writable_dir(cache_dir(), "The cache folder (HEADSTART_CACHE)") / "engines"


def _file(key: str, example: torch.Tensor) -> Path:
    return engine_dir() / f"{key}-{'x'.join(map(str, example.shape[1:]))}.onnx"


def is_converted(key: str, example: torch.Tensor) -> bool:
    return _file(key, example).is_file()


def converted(module: nn.Module, example: torch.Tensor, key: str) -> Path:
    """``module``'s ONNX file in the cache (``key``: its ``fingerprint``), exported now if it is not
    there yet. One process exports while the others wait (a file lock);
    the file is written under a temporary name and renamed, so nobody reads half of one."""
    path = _file(key, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return path
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return path
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
        cpu = copy.deepcopy(module).float().cpu().eval()
        try:
            write_onnx(cpu, example.detach().float().cpu().contiguous(), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("exported the frozen layers to ONNX once: %s", path)
    return path
