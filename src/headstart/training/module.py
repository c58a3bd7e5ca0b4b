"""The LightningModule: the model, its loss, optimizer and schedule, on images or on what frozen
layers made of them; epoch figures summed over every rank; gradual unfreezing by epoch.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.config import TrainConfig
from headstart.data.samplers import seed_of
from headstart.evaluation.metrics import confusion, macro_f1
from headstart.evaluation.multilabel import best_f1_thresholds, mean_ap
from headstart.models import strategies as S
from headstart.models.classifier import Classifier
from headstart.models.features import memory_layout
from headstart.training.losses import train_loss
from headstart.training.optimizers import l2_penalty, make_optimizer
from headstart.training.schedule import lr_lambda

log = logging.getLogger(__name__)

# --- the Lightning module -----------------------------------------------------------------


class TransferModule(L.LightningModule):
    """The model, its loss, optimizer and schedule, on images or on what frozen layers made of them."""

    def __init__(
        self,
        model: Classifier,
        cfg: TrainConfig,
        steps_per_epoch: int,
        extra: dict,
        trunk=None,
        train_size: int = 0,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        self.model, self.cfg, self.train_size = model, cfg, train_size
        # What turns a batch into pooled features: the whole body on images; nothing on cached
        # features; the layers after the frozen prefix on its cached activations.
        self.trunk = trunk or model.forward_features
        self.steps_per_epoch, self.extra = steps_per_epoch, extra
        # Class weights (headstart.training.losses.class_weights) scale each image's loss; the batch's loss is the mean
        # over its images, as Keras' class_weight does (not over their weights, as PyTorch's "mean"):
        # each rank's share is then a plain mean, and training_step's weighing by share size holds.
        # torch's, or Keras' (seed); binary cross-entropy for multi-label data (cfg.task multi)
        self.train_loss_fn = train_loss(cfg.loss, class_weights, cfg.label_smoothing, cfg.task)
        self.multi_label = cfg.task == "multi"
        # plain, so val_loss compares across recipes
        self.eval_loss_fn = nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss()
        self.epoch_stats = {"train": torch.zeros(3), "val": torch.zeros(3)}  # loss sum, correct, count
        self.val_confusion, self.val_macro_f1 = None, 0.0  # over every rank's validation images
        if self.multi_label:
            # Multi-label: every rank's validation probabilities and targets (torchmetrics gathers them, shares
            # of unequal sizes too) give val_map and each class's threshold, saved with the checkpoint.
            from torchmetrics.aggregation import CatMetric

            self.val_probs, self.val_targets = CatMetric(), CatMetric()
            self.val_map, self.thresholds = 0.0, None
        self._forward = torch.compile(self._plain_forward) if cfg.compile else self._plain_forward

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.trunk(memory_layout(x.float(), self.cfg.channels_last)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def train_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.train_loss_fn(logits, y).mean()
        return loss + l2_penalty(self.model.head, self.cfg.weight_decay) if self.full_batch else loss

    @property
    def full_batch(self) -> bool:
        """L-BFGS: every rank steps on the whole training split at once (the same loss on every rank, so
        every rank's line search takes the same steps), its weight decay an L2 penalty in the loss."""
        return self.cfg.optimizer == "lbfgs"

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.train_loss(logits, y) if stage == "train" else self.eval_loss_fn(logits, y)
        if self.multi_label:  # exact match at 0.5: every label of the image right
            correct = ((logits > 0) == (y > 0.5)).all(1).sum()
            if stage == "val":
                self.val_probs.update(logits.detach().float().sigmoid())
                self.val_targets.update(y.float())
        else:
            correct = (logits.argmax(1) == y).sum()
            if stage == "val":
                seen = confusion(y, logits.argmax(1), logits.shape[1])
                self.val_confusion = seen if self.val_confusion is None else self.val_confusion + seen
        if stage == "train":  # this rank's, for the progress bar; the epoch's figures are summed over the ranks
            self.log("batch_loss", loss, prog_bar=True, logger=False)
        # Epoch sums of our own (loss, correct, count), added up over the ranks at the epoch's end.
        stats = self.epoch_stats[stage]
        if stage == "train" and self.full_batch:
            stats.zero_()  # L-BFGS evaluates the batch many times a step: the epoch's figures are its last
        stats += torch.stack(
            [loss.detach().float() * len(y), correct.float(), torch.tensor(float(len(y)), device=y.device)]
        )
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        world = self.trainer.world_size
        if world > 1 and self.train_size and not self.full_batch:
            # DDP averages the ranks' gradients, each rank's loss a mean over its share: weigh each
            # share by its size, so the step is the whole global batch's mean even when it does
            # not split evenly (a batch of 7 on 2 ranks; the last, smaller batch of an epoch).
            whole = max(min(self.cfg.batch_size, self.train_size - batch_idx * self.cfg.batch_size), world)
            loss = loss * (len(batch[1]) * world / whole)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self.epoch_stats["val"] = torch.zeros(3, device=self.device)
        self.val_confusion = None
        if self.multi_label:
            self.val_probs.reset()
            self.val_targets.reset()

    def on_train_epoch_end(self) -> None:
        # For the loggers: the epoch's figures over every rank's samples (history.csv has the same).
        loss, accuracy = self.epoch_means("train")
        self.log("loss", loss)
        self.log("accuracy", accuracy)

    def on_validation_epoch_end(self) -> None:
        # What early stopping and the best checkpoint go by: the same figure on every rank.
        loss, accuracy = self.epoch_means("val")
        if self.multi_label:
            self._multilabel_validation()
        else:  # Macro F1 over the whole validation split: the ranks' confusion matrices summed first.
            self.val_macro_f1 = macro_f1(self.trainer.strategy.reduce(self.val_confusion.clone(), reduce_op="sum"))
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_accuracy", accuracy, prog_bar=True)
        self.log("val_macro_f1", self.val_macro_f1)

    def _multilabel_validation(self) -> None:
        """val_map, macro F1 at 0.5 and each class's best-F1 threshold over the whole validation split (every
        rank computes them from every rank's images: the same on each); the thresholds go into the checkpoint."""
        from torchmetrics.functional.classification import multilabel_f1_score

        probs, targets = self.val_probs.compute().cpu(), self.val_targets.compute().cpu().long()
        self.val_map = mean_ap(targets, probs)
        f1 = multilabel_f1_score(probs, targets, num_labels=probs.shape[1], average="macro")
        self.val_macro_f1 = float(f1)
        self.thresholds = best_f1_thresholds(targets, probs).tolist()
        self.log("val_map", self.val_map, prog_bar=True)

    def epoch_means(self, stage: str) -> tuple[float, float]:
        """Mean loss and accuracy of the current epoch so far, over every rank's samples (every
        rank must ask: it is a collective)."""
        loss, correct, n = self.trainer.strategy.reduce(self.epoch_stats[stage].clone(), reduce_op="sum").tolist()
        return loss / max(n, 1), correct / max(n, 1)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout draws from a generator seeded by (seed, epoch, batch[, rank]): resuming repeats it exactly.
        rank = (self.global_rank,) if self.trainer.world_size > 1 else ()
        torch.manual_seed(seed_of(self.cfg.seed, self.current_epoch, batch_idx, *rank))

    def on_train_start(self) -> None:
        if self.trainer.fit_loop.epoch_loop.batch_progress.current.completed:  # resumed mid-epoch (streamed
            self._start_epoch()  # shards): Lightning goes on with the epoch without its start

    def on_train_epoch_start(self) -> None:
        self.epoch_stats["train"] = torch.zeros(3, device=self.device)
        self._start_epoch()

    def _start_epoch(self) -> None:
        # Lightning leaves modules in the mode it finds them; computing features put the model in
        # eval mode. Train mode here (the model keeps its frozen parts in eval mode itself).
        self.model.train()
        if self.cfg.strategy == "gradual":
            opened = S.unfreeze_top(
                self.model, min(self.current_epoch // self.cfg.unfreeze_every, len(self.model.groups))
            )
            if opened:
                log.info("epoch %d: training the head and %s", self.current_epoch + 1, ", ".join(opened))

    def configure_optimizers(self):
        cfg = self.cfg
        # gradual: every group is in the optimizer from the start; a frozen one has no gradient,
        # so it gets no optimizer state (and no weight decay) until it is opened.
        groups = S.param_groups(
            self.model, cfg.lr, cfg.backbone_lr, cfg.lr_decay, include_frozen=cfg.strategy == "gradual"
        )
        opt = make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.weight_decay)
        if self.full_batch:  # L-BFGS' line search sets its steps: no schedule
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, self.steps_per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Resumed mid-epoch (streamed shards), the epoch's figures count its first part too: every rank's sums,
        # kept by rank 0 (added up over the ranks at the epoch's end). Epochs that start anew start from zero.
        sums = checkpoint.get("headstart_train_sums", (None, [0.0, 0.0, 0.0]))[1]
        self.epoch_stats["train"] = torch.tensor(sums if self.global_rank == 0 else [0.0] * 3, device=self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Saved mid-epoch (Ctrl-C while streaming shards), it resumes there: this epoch's sums so far, every rank's.
        # (Checkpoints saved at an epoch's end keep the shape of headstart 0.1.0's.)
        if 0 < self.trainer.fit_loop.epoch_loop.batch_progress.current.completed < self.trainer.num_training_batches:
            sums = self.trainer.strategy.reduce(self.epoch_stats["train"].clone(), reduce_op="sum")
            checkpoint["headstart_train_sums"] = (self.current_epoch, sums.tolist())
        # Everything needed to use the model without this code's arguments: how to rebuild it,
        # what its inputs must look like, and what its outputs mean.
        checkpoint["headstart"] = {
            "model": self.model.config,
            "preprocessing": self.model.preprocessing.to_dict(),
            "config": self.cfg.to_dict(),
            **self.extra,
            # multi-label: a sigmoid a class, and the thresholds chosen on this epoch's validation
            **({"task": "multi", "thresholds": self.thresholds} if self.multi_label else {}),
        }


@torch.inference_mode()
def _predict(module: TransferModule, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (multi-label: a sigmoid a class) and targets over a loader (images or features, as
    the module trains)."""
    module.eval()
    device = next(module.parameters()).device
    probs, targets = [], []
    for x, y in loader:
        logits = module(x.to(device)).float()
        probs.append((logits.sigmoid() if module.multi_label else logits.softmax(1)).cpu().numpy())
        targets.append(np.asarray(y))
    return np.concatenate(probs), np.concatenate(targets)
