"""Reading a run's checkpoints: plain data only (``weights_only``), a damaged file named as such, and
the model rebuilt from what the checkpoint says of itself, from a run folder, a ``.ckpt`` or a saved
``.safetensors`` model alike.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from headstart.errors import RunError
from headstart.models.classifier import Classifier
from headstart.models.saving import load_saved_model, rebuild_model
from headstart.runs.layout import BEST, CHECKPOINTS, CONFIG, LAST

# --- models -------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, tensors and plain data only (``weights_only=True``: nothing in the
    file can run code), memory-mapped; a RunError naming the file when it is damaged or unsafe."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise _damaged(path, ValueError("the file is empty: 0 bytes"))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise RunError(
                f"Refused to load {path}: it holds Python objects besides tensors and plain data, and "
                "loading those could run code. headstart only loads checkpoints it wrote; train the run "
                "again, or get the file from someone you trust and re-save it with weights only."
            ) from None
        raise _damaged(path, e) from None
    except Exception as e:  # truncated, garbage, not a zip, unreadable
        raise _damaged(path, e) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RunError(f"{path} is not a headstart checkpoint (no state_dict). Pass a run folder or a .ckpt it wrote.")
    return ckpt


def _damaged(path: str | Path, e: Exception) -> RunError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return RunError(
        f"{path} is damaged or not a checkpoint ({reason}). Delete it and train again (a damaged "
        f"{LAST}.ckpt: delete it and resume, which goes back to the start), or restore it from a copy."
    )


def load_checkpoint(path: str | Path) -> tuple[Classifier, dict]:
    """The model of a training checkpoint, with its preprocessing, and the checkpoint's metadata
    (class names, config). Only tensors and plain data are loaded (``weights_only=True``)."""
    ckpt = read_checkpoint(path)
    if "headstart" not in ckpt:
        raise RunError(f"{path} is not a headstart checkpoint (no class names or preprocessing in it).")
    meta = ckpt["headstart"]
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return rebuild_model(meta["model"], state, meta["preprocessing"]).eval(), meta


def load_model(source: str | Path) -> tuple[Classifier, dict, Path | None]:
    """The model behind a run folder (its best checkpoint), a ``.ckpt``, or a ``.safetensors``
    written by ``save_model``; its metadata (``classes``...); and the run folder it comes from."""
    path = Path(source)
    if path.is_dir():
        best = path / CHECKPOINTS / f"{BEST}.ckpt"
        if not best.is_file():
            if (path / CONFIG).is_file():
                raise unfinished(path)
            raise RunError(
                f"{path} has no {CHECKPOINTS}/{BEST}.ckpt: it is not a headstart run. Pass a finished run folder."
            )
        path = best
    if not path.is_file():
        raise RunError(f"'{source}' does not exist. Pass a run folder (runs/NAME), a .ckpt or a .safetensors model.")
    what = "model written by save_model" if path.suffix == ".safetensors" else "checkpoint"
    try:
        model, meta = load_saved_model(path) if path.suffix == ".safetensors" else load_checkpoint(path)
    except RunError:
        raise
    except Exception as e:  # not one of ours, or damaged
        raise RunError(f"{path} is not a readable headstart {what} ({type(e).__name__}: {e}).") from None
    # A checkpoint lives in <run>/checkpoints/: that run's folder holds its config and data.
    run_dir = path.parent.parent
    return model, meta, run_dir if path.parent.name == CHECKPOINTS and (run_dir / CONFIG).is_file() else None


def unfinished(path: Path) -> RunError:
    """A run folder with no best checkpoint: an interrupted run, to resume."""
    return RunError(
        f"{path} has no {CHECKPOINTS}/{BEST}.ckpt: it did not finish. Resume it with headstart train --resume {path}"
    )
