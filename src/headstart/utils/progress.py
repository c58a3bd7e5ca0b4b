"""Progress a person can watch: a rich bar in a terminal; off a terminal (nohup, CI, SLURM, a file),
a line about every 10 % on the ``headstart.utils.progress`` logger, which the CLI prints on stderr.

Long passes (decoding, the frozen pass, checking images, evaluating) go through ``track``;
training prints one line an epoch the same way (``headstart.training.callbacks.History``).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("headstart.utils.progress")
T = TypeVar("T")


def in_terminal() -> bool:
    """Whether stderr is a terminal: bars there, lines elsewhere."""
    return sys.stderr.isatty()


def track(items: Iterable[T], total: int, description: str, enabled: bool = True) -> Iterator[T]:
    """``items``, showing how far along they are: a bar in a terminal, else a line each ~10 %."""
    if not enabled or total <= 0:
        yield from items
        return
    if in_terminal():
        from rich.progress import track as bar

        yield from bar(items, total=total, description=description, transient=True)
        return
    start, tenths, shown = time.perf_counter(), 0, 0
    log.info("%s: 0/%d", description, total)
    for n, item in enumerate(items, start=1):
        yield item
        if 10 * n // total > tenths:  # crossed the next 10 %: at most ten lines
            tenths, shown = 10 * n // total, n
            log.info("%s: %d/%d (%d %%), %.1f s", description, n, total, 100 * n // total, time.perf_counter() - start)
    if shown != total:  # fewer items than announced
        log.info("%s: done, %.1f s", description, time.perf_counter() - start)


def quiet_lightning() -> None:
    """Lightning's notes that do not concern a headstart user, silenced; its warnings and errors stay."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # resume
    # Frozen layers are in eval mode on purpose (their BatchNorm statistics must not move).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")  # inside Lightning's Fabric
    # val_loss and val_accuracy are summed over the ranks already; loss and accuracy are the progress bar's.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # we log once an epoch
    # Streamed shards: LitData's dataset has a length and shares itself out among the workers.
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
