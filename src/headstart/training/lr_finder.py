"""The learning-rate finder (a range test): a few steps of the run's own training, the rate rising
exponentially from ``MIN_LR`` to ``MAX_LR``, the loss recorded at each; the suggested rate is read
off that curve.

It trains the same model on the same batches as the run would (``headstart.training.fit`` builds them);
with ``features`` those are the pooled features computed once, through the head alone, so it costs
seconds. The weights are put back afterwards: the run starts from where it would have.

>>> found = headstart.find_lr("demo", strategy="features")        # doctest: +SKIP
>>> found.suggestion                                              # doctest: +SKIP
0.0044
"""

from __future__ import annotations

import csv
import io
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from headstart.config import TrainConfig
from headstart.errors import ConfigError
from headstart.reporting.plots import plot_lr_find
from headstart.utils.files import write_text

log = logging.getLogger(__name__)

MIN_LR, MAX_LR = 1e-7, 1.0
STEPS = 100  # rates tried, one optimizer step each (fewer if the loss diverges first)
BETA = 0.98  # the smoothing of Lightning's finder: each point averages the last ~50 losses
DIVERGED = 4.0  # stop once the smoothed loss is this many times its best so far


@dataclass
class LRFind:
    """The range test's curve (rates and smoothed losses, step by step) and the rate it suggests."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None
    seconds: float = 0.0  # the range test's wall time

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["lr", "loss"])
        w.writerows(zip(self.lrs, self.losses))
        return buf.getvalue()

    def save(self, path: Path, picture: Path | None = None) -> Path:
        """The curve as CSV at ``path``, and drawn at ``picture`` (the run report shows it)."""
        written = write_text(Path(path), self.to_csv())
        if picture is not None:
            plot_lr_find(self, picture)
        return written

    @classmethod
    def read(cls, path: Path, suggestion: float | None) -> "LRFind":
        with Path(path).open() as f:
            rows = list(csv.DictReader(f))
        return cls([float(r["lr"]) for r in rows], [float(r["loss"]) for r in rows], suggestion)


def valley(losses: list[float]) -> int | None:
    """The index of the suggested rate: the middle of the longest descent of the (smoothed) curve.

    Why this rule (fastai's "valley") and not the steepest slope (Lightning's suggestion): the slope
    of a smoothed but still noisy curve has its minimum at any small dip, often early, among rates
    too small to train in a few epochs; the longest descent is a property of the whole curve.
    The descent: the longest run of points each lower than the one before it (a longest decreasing
    subsequence, so noise does not cut it in pieces), measured by its number of points and placed
    back from its lowest one (a run could start early and hop over a long flat stretch, which is no
    descent). Its middle: far enough down to learn fast, well before the bottom, past which the loss
    blows up. None when the loss never fell (a descent of fewer than 3 points)."""
    n = next((i for i, x in enumerate(losses) if not math.isfinite(x)), len(losses))
    y = losses[:n]  # the curve up to its first non-finite loss (a diverged step)
    length = [1] * n  # of the longest decreasing subsequence that ends at i
    for i in range(n):
        for j in range(i):
            if y[j] > y[i]:
                length[i] = max(length[i], length[j] + 1)
    if not n or max(length) < 3:
        return None
    end = length.index(max(length))  # the lowest point of the longest descent (of equals, the first)
    return end - length[end] // 2


def check_one_process(world: int) -> None:
    """The range test runs in one process: with several, each would find its own rate."""
    if world > 1:
        raise ConfigError(
            f"lr_find runs on one device; this run has {world} processes. Find the rate on one device "
            "(headstart lr-find DATA, or train --lr-find --devices 1), then pass it as "
            "--lr to the run on several devices."
        )


def range_test(module, loader, cfg: TrainConfig, steps: int = STEPS, progress: bool = False) -> LRFind:
    """The range test with Lightning's tuner (``Tuner.lr_find``) on ``module`` and its training
    ``loader``, in a trainer of its own in a temporary folder: its checkpoint (of the weights, put
    back at the end) never lands in a run folder. The loss it records is smoothed (an exponential
    moving average, bias-corrected); every trained parameter group takes the swept rate."""
    import contextlib
    import time

    import lightning as L
    from lightning.pytorch.tuner import Tuner

    from headstart.training.distributed import precision

    started = time.perf_counter()
    # Lightning's finder always shows a bar of its own (tqdm, on stderr): hidden unless progress is on.
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with tempfile.TemporaryDirectory(prefix="headstart-lr-find-") as tmp, quiet, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # on purpose: the sweep only trains
        trainer = L.Trainer(
            accelerator=cfg.accelerator,
            devices=1,
            precision=precision(cfg.precision),
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            num_sanity_val_steps=0,
            deterministic=cfg.deterministic,
        )
        found = Tuner(trainer).lr_find(
            module,
            train_dataloaders=loader,
            min_lr=MIN_LR,
            max_lr=MAX_LR,
            num_training=steps,
            early_stop_threshold=DIVERGED,
            update_attr=False,
        )
    lrs, losses = [float(x) for x in found.results["lr"]], [float(x) for x in found.results["loss"]]
    # Lightning (2.6) bias-corrects its moving average at step k by 1 - 0.98^(k+2), the global step having
    # already moved on: the first points read about half the loss, and the curve seems to rise at first.
    # Corrected to 1 - 0.98^(k+1), as the average of k+1 losses needs (the first point is then the first loss).
    losses = [x * (1 - BETA ** (k + 2)) / (1 - BETA ** (k + 1)) for k, x in enumerate(losses)]
    at = valley(losses)
    result = LRFind(lrs, losses, None if at is None else float(f"{lrs[at]:.3g}"), time.perf_counter() - started)
    if result.suggestion is None:
        log.warning("The learning-rate finder saw the loss never fall (%d steps): keeping lr %g.", len(lrs), cfg.lr)
    return result


def tune(module, loader, world: int, progress: bool = False) -> tuple[LRFind, TrainConfig]:
    """The range test, and the config with the head's ``lr`` set to its suggestion (``module``
    trains with it too). ``lr_find`` stays on in the config: config.yaml says how its lr was chosen."""
    check_one_process(world)
    trained, frozen = [p.requires_grad for p in module.parameters()], list(module.model.frozen_modules)
    found = range_test(module, loader, module.cfg, progress=progress)
    # The sweep's steps span epochs, and gradual unfreezing opens groups by epoch: the run starts frozen as planned.
    for p, grad in zip(module.parameters(), trained):
        p.requires_grad_(grad)
    module.model.frozen_modules = frozen
    module.model.train(module.model.training)  # frozen modules back in eval mode
    cfg = module.cfg if found.suggestion is None else replace(module.cfg, lr=found.suggestion)
    module.cfg = cfg
    log.info("learning-rate finder: lr %g (%d rates tried, %.1f s)", cfg.lr, len(found.lrs), found.seconds)
    return found, cfg
