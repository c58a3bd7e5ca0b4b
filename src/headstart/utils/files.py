"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where decoded images, frozen outputs and converted networks are kept: ``$HEADSTART_CACHE``,
    else ``~/.cache/headstart``."""
    return Path(os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart")


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it into place.

    If ``write`` fails, ``path`` is untouched (an old version stays, a new one never appears).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a run's files are as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.debug("wrote %s", path)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (no window in which
    another thread would create files with none)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)  # elsewhere the only way to read it is to set it
        os.umask(mask)
        return mask


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder this process can write in (it may not exist yet: then the nearest
    existing folder above it is checked). A ConfigError naming ``what`` (e.g. "--runs-dir") when it
    is a file, a dangling link, read-only or not ours. Nothing is created."""
    from headstart.errors import ConfigError

    path = Path(path)
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise ConfigError(
                f"{what} {path}: {existing} is a link to something that does not exist. "
                "Fix or remove the link, or pass another folder."
            )
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder. Pass a folder.")
    denied = ConfigError(
        f"{what} {path}: cannot write in {existing} (read-only, or permission denied). Pass a folder you can write to."
    )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise denied
    try:  # what the permission bits do not tell (a read-only mount, /sys, /proc): a file made and gone at once
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError:
        raise denied from None
    return path
