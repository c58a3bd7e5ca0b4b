"""The run's Lightning callbacks: ``History`` (one row an epoch in ``history.csv``, and a line off a
terminal), the best/last checkpoints that survive a moved run folder, and the progress bar counting
epochs from 1.

Lightning keys a callback's saved state by its class name: renaming one of these classes would
leave older runs' checkpoints unable to resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from headstart.models.classifier import count_params
from headstart.runs.folder import Run
from headstart.utils.progress import log as progress_log


class History(L.Callback):
    """One row an epoch in ``history.csv``, written when the epoch (validation included) ends,
    just before the checkpoints are saved: they hold it, so a resumed run continues it."""

    def __init__(self, run: Run, lines: bool = False, label: str = ""):
        # lines: also one line an epoch on the progress logger (off a terminal, where there is no bar),
        # starting with ``label`` where there is one (compare's runs: which strategy the line is about)
        self.run, self.lines, self.rows, self._start = run, lines, [], 0.0
        self.prefix = f"{label}: " if label else ""

    def on_train_start(self, trainer, module) -> None:
        self._start = time.perf_counter()  # an epoch restored part-way has no epoch start of its own

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        (loss, acc), (val_loss, val_acc) = module.epoch_means("train"), module.epoch_means("val")
        groups = trainer.optimizers[0].param_groups
        body = [g for g in groups if g.get("name") != "head" and any(p.requires_grad for p in g["params"])]
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "loss": loss,
                "accuracy": acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "val_macro_f1": module.val_macro_f1,
                **({"val_map": module.val_map} if module.multi_label else {}),
                "lr": groups[0]["lr"],
                "backbone_lr": body[-1]["lr"] if body else "",
                "trainable": count_params(module.model, trainable_only=True),
                "seconds": round(time.perf_counter() - self._start, 3),
            }
        )
        if trainer.is_global_zero:
            self.run.write_history(self.rows)
            if self.lines:
                r = self.rows[-1]
                progress_log.info(
                    "%sepoch %d/%d: loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f, %s%.1f s",
                    self.prefix,
                    r["epoch"],
                    trainer.max_epochs,
                    loss,
                    acc,
                    val_loss,
                    val_acc,
                    f"val_map {r['val_map']:.4f}, " if "val_map" in r else "",
                    r["seconds"],
                )

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])


class _Checkpoint(ModelCheckpoint):
    """Lightning's, with the paths it keeps in a checkpoint re-based on resume: a run folder moved
    or copied elsewhere resumes from, and keeps choosing among, its own checkpoints; and a last.ckpt on
    Ctrl-C in the middle of a streamed epoch (``on_exception``)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old, new = state.get("dirpath"), self.dirpath

        def rebase(path):
            return str(Path(new) / Path(path).relative_to(old)) if path and Path(path).is_relative_to(old) else path

        if old and old != new:
            state = {
                **state,
                "dirpath": new,
                **{k: rebase(state.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")},
                "best_k_models": {rebase(k): v for k, v in state.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state)

    def on_train_epoch_end(self, trainer, module) -> None:
        # Lightning 2.6 writes last.ckpt only on the epochs that write best.ckpt: after a worse epoch
        # (or one that early stopping ends) a resume would go back to the best one and train again.
        # Asked before the parent saves: once it has, the step counts as saved.
        due = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, module)
        if due and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        # Ctrl-C in an epoch whose images stream from shards: last.ckpt saves where the epoch was (LitData's
        # loader state, which Lightning keeps), and a resume goes on from there. Other loaders restart their epoch.
        streamed = hasattr(trainer.train_dataloader, "state_dict")
        if isinstance(exception, KeyboardInterrupt) and streamed and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StreamPlace(L.Callback):
    """Where a streamed epoch is, saved right in a checkpoint taken mid-epoch: LitData's loader counts the batches
    it handed out, and Lightning fetches one ahead of the one it trains; the checkpoint gets the trained count,
    so a resumed epoch reads each image it had not trained on, once."""

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        loader = trainer.train_dataloader
        states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
        done = trainer.fit_loop.epoch_loop.batch_progress.current
        ahead = done.ready - done.completed
        if not hasattr(loader, "state_dict") or not states or ahead <= 0:
            return
        state = states[0]
        state["num_samples_yielded"] -= ahead * loader.batch_size
        state["latest_worker_idx"] = (state["latest_worker_idx"] - ahead) % max(loader.num_workers, 1)
        place = (state["num_samples_yielded"], loader.num_workers, loader.batch_size)
        state["dataset"] = loader.dataset.state_dict(*place)

    def on_train_epoch_end(self, trainer, module) -> None:
        # LitData's loader stays "restoring" until an epoch's iterator runs dry, which Lightning, knowing the
        # epoch's length, does not wait for: the epoch after a resumed one would then read nothing.
        if hasattr(trainer.train_dataloader, "restore"):
            trainer.train_dataloader.restore = False


class _Bar(RichProgressBar):
    """Lightning's progress bar, with epochs counted from 1 as everywhere else in headstart."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"
