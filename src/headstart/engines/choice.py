"""Which engine runs a module that only infers, checked against PyTorch before it is used.

``Engine("auto")`` on a CPU takes, of the installed engines (ONNX Runtime, OpenVINO) whose first batch
matches PyTorch's, the faster on that batch (docs/benchmarks.md "Inference engines"); on a GPU it stays
with PyTorch (bf16 there, as training). ``torch``, ``onnxruntime`` and ``openvino`` ask for one engine.

Parity before use: the first batch through the engine is compared with PyTorch on the same batch;
the largest difference, relative to the largest PyTorch output, must be within ``PARITY`` for the
precision (fp32: 1e-4). Otherwise the pass runs in PyTorch, with one warning naming the engine and
the error. ``used`` says what ran (engine, precision, the error measured), for ``metrics.json`` and
for the keys of cached outputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from headstart.checks import check_engine
from headstart.engines.onnx_files import converted, fingerprint, is_converted
from headstart.engines.runtimes import RUNTIMES, bf16_capable, installed, require
from headstart.errors import ConfigError

log = logging.getLogger(__name__)

# The largest difference allowed against PyTorch fp32, relative to the largest output: fp32 engines
# reorder sums (1e-6 seen); bf16 keeps 8 bits of mantissa (8e-2 seen on AMX for EfficientNet-Lite0).
PARITY = {"fp32": 1e-4, "bf16": 1.5e-1}
# auto converts a module (a one-time export, 14 s for EfficientNet-Lite0 on 2 cores) only for a pass PyTorch would
# take longer than this over (an engine saves about two thirds of it), or when it was converted before.
WORTH_CONVERTING_SECONDS = 20.0
# The engines auto tries on a CPU; it keeps the fastest on the pass's first batch (which wins depends on
# the CPU and the backbone: docs/benchmarks.md, "Inference engines"). The first is taken when asked by name.
CPU_ORDER = ("onnxruntime", "openvino")


class Mismatch(Exception):
    """An engine's output that is not PyTorch's (caught here: PyTorch runs instead)."""


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference, relative to the largest absolute value PyTorch gave."""
    got, expected = got.float(), expected.float()
    if got.shape != expected.shape:
        raise Mismatch(f"it gives outputs of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


@dataclass
class Runner:
    """A module's forward pass on a CPU batch, in one engine."""

    engine: str
    precision: str
    run: Callable[[torch.Tensor], torch.Tensor]
    parity_rel_error: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def describe(self) -> dict:
        out = {"engine": self.engine, "precision": self.precision}
        if self.parity_rel_error is not None:
            out["parity_rel_error"] = float(f"{self.parity_rel_error:.3g}")
        return out


class Engine:
    """The engine asked for (``ENGINES``) at a precision (``ENGINE_PRECISIONS``), and what it chose for each module."""

    def __init__(self, name: str = "auto", precision: str = "fp32"):
        check_engine(name, precision)
        self.name, self.precision = name, precision
        self.used: dict = {}
        self.setup_seconds = 0.0  # spent converting and checking engines (once per module)
        self._runners: dict[str, Runner | None] = {}  # by fingerprint; None: PyTorch
        self._failed: set[str] = set()
        self._fingerprints: dict[tuple, str] = {}

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, {self.precision!r})"

    def candidates(self, device: torch.device) -> list[str]:
        """The engines to try, in order, for a module PyTorch would run on ``device`` (none: PyTorch)."""
        if self.name == "torch" or (self.name == "auto" and device.type != "cpu" and self.precision == "fp32"):
            return []
        if self.name != "auto":
            require(self.name)
            found = [self.name]
        else:
            found = [e for e in CPU_ORDER if installed(e) and (self.precision == "fp32" or e == "openvino")]
        if self.precision == "bf16":
            if not found:
                require("openvino")
            if not bf16_capable():
                raise ConfigError(
                    "--engine-precision bf16: this CPU has no bf16 units (AMX or AVX-512 BF16) that OpenVINO "
                    "can use, so bf16 would be slower than fp32 here. Leave --engine-precision out (fp32)."
                )
        return [e for e in found if e not in self._failed]

    def fingerprint(self, module: nn.Module, extra: str = "") -> str:
        """``onnx_files.fingerprint``, computed once per module's tensors as they are (a tensor changed in
        place, as training changes weights, has another version and is hashed again)."""
        tensors = [*module.parameters(), *module.buffers()]
        # (Tensors made under inference_mode have no version: they never train.)
        seen = (extra, type(module).__name__, *((id(t), 0 if t.is_inference() else t._version) for t in tensors))
        if seen not in self._fingerprints:
            self._fingerprints[seen] = fingerprint(module, extra)
        return self._fingerprints[seen]

    def labels(self, device: torch.device, autocast: bool = False) -> list[str]:
        """What may compute on ``device``, in the words of the keys of kept outputs ("openvino-fp32",
        "torch-cpu", ...): the engine asked for; with ``auto``, any of its candidates, or PyTorch (for a
        pass too short to convert for)."""
        names = [f"{n}-{self.precision}" for n in self.candidates(device)]
        if not names or self.name == "auto":
            names.append(self.torch_label(device, autocast))
        return names

    def actual(self, device: torch.device, autocast: bool = False) -> str:
        """What did compute, in ``labels``' words (after a fallback: PyTorch)."""
        if self.used.get("engine", "torch") == "torch":
            return self.torch_label(device, autocast)
        return f"{self.used['engine']}-{self.used['precision']}"

    @staticmethod
    def torch_label(device: torch.device, autocast: bool) -> str:
        return f"torch-{device.type}" + ("-bf16" if autocast and device.type == "cuda" else "")

    def start(
        self,
        module: nn.Module,
        first: torch.Tensor,
        torch_run: Callable[[torch.Tensor], torch.Tensor],
        extra: str = "",
        images: int = 0,
    ) -> tuple[Runner, torch.Tensor]:
        """How to run ``module`` (in eval mode) on CPU batches like ``first``, and its output on ``first``:
        an engine whose output on ``first`` matches ``torch_run``'s (PyTorch's) within ``PARITY`` (the one
        asked for; with ``auto``, the faster of the candidates that match), else PyTorch. Decided once per
        module (by its weights). ``extra``: what the module's output depends on besides its weights (its
        preprocessing); ``images``: how many the pass runs (``auto`` converts only where that pays:
        PyTorch's time on ``first``, times the batches, over ``WORTH_CONVERTING_SECONDS``, or the module
        converted before). No batch runs twice in PyTorch."""
        device = next(module.parameters(), torch.empty(0)).device
        names = self.candidates(device)
        key = self.fingerprint(module, extra) if names else None
        expected = None
        if key is not None and key not in self._runners:
            started = time.perf_counter()
            with torch.inference_mode():
                expected = torch_run(first)
            estimate = (time.perf_counter() - started) * images / max(len(first), 1)
            worth_it = self.name != "auto" or is_converted(key, first) or estimate >= WORTH_CONVERTING_SECONDS
            if self.name == "auto" and not is_converted(key, first):
                log.info(
                    "the pass would take PyTorch about %.0f s: %s", estimate, "converting" if worth_it else "PyTorch"
                )
            self._runners[key] = self._checked(module, first, expected, key, names) if worth_it else None
        runner = self._runners.get(key) or Runner("torch", "fp32" if device.type == "cpu" else "auto", torch_run)
        self.used = runner.describe()
        if runner.engine == "torch" and expected is not None:
            return runner, expected
        with torch.inference_mode():
            return runner, runner(first)

    def _checked(self, module, first, expected, key: str, names: list[str]) -> Runner | None:
        """Of the engines ``names``, those that match PyTorch on ``first``; ``auto``: the fastest of them
        on ``first`` (each timed on its second run: the first warms it up), else the first that matches."""
        started = time.perf_counter()
        try:
            matching = []
            for name in names:
                runner = self._matches(name, module, first, expected.float().cpu(), key)
                if runner is not None:
                    matching.append(runner)
                    if self.name != "auto":
                        break
            if len(matching) > 1:
                matching.sort(key=lambda r: _seconds(r, first))
            if matching:
                best = matching[0]
                log.info(
                    "frozen layers run by %s (%s), relative error %.2g against PyTorch%s",
                    best.engine,
                    best.precision,
                    best.parity_rel_error,
                    f"; the fastest of {', '.join(r.engine for r in matching)}" if len(matching) > 1 else "",
                )
                return best
            return None
        finally:
            self.setup_seconds += time.perf_counter() - started

    def _matches(self, name: str, module, first, expected, key: str) -> Runner | None:
        """Engine ``name`` on ``module``, if its output matches PyTorch's; else None, and one warning."""
        try:
            path = converted(module, first, key)
            run = on_tensors(RUNTIMES[name](path, self.precision, torch.get_num_threads()))
            with torch.inference_mode():  # the whole batch, and one image alone: any batch size works
                error = max(relative_error(run(first), expected), relative_error(run(first[:1]), expected[:1]))
            if not error <= PARITY[self.precision]:
                raise Mismatch(
                    f"its output differs from PyTorch's by {error:.3g} (relative), over the "
                    f"{PARITY[self.precision]:g} allowed at {self.precision}"
                )
        except ConfigError:
            raise
        except Exception as e:  # a converter or runtime that cannot take this module
            self._failed.add(name)
            log.warning("%s failed its check against PyTorch, which runs instead: %s", name, _short(e))
            return None
        return Runner(name, self.precision, run, error)


def on_tensors(run):
    """An engine's numpy function as one from a CPU or GPU tensor to a CPU tensor."""
    return lambda x: torch.from_numpy(run(np.ascontiguousarray(x.detach().float().cpu().numpy())))


def _seconds(runner: Runner, first: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        runner(first)
    return time.perf_counter() - started


def _short(e: Exception) -> str:
    text = str(e) if isinstance(e, Mismatch) else f"{type(e).__name__}: {e}"
    return text.splitlines()[0][:300] if text else type(e).__name__
