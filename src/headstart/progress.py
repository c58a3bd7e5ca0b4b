"""Progress a person can watch: a rich bar in a terminal; off a terminal (nohup, CI, SLURM, a file),
a line about every 10 % on the ``headstart.progress`` logger, which the CLI prints on stderr.

Long passes (decoding, the frozen pass, checking images, evaluating) go through ``track``;
training prints one line an epoch the same way (``headstart.training.History``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("headstart.progress")
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
