"""The head search: on the cached features, fit a few heads and train the one the validation split prefers.

Once the frozen pass has run, an epoch of a head on its features costs milliseconds, so before training,
``features`` (and ``gradual``, for its head warm-up) tries:

- the run's own head (the tutorial's: Dropout, Dense(100, relu), Dense(classes)) at the run's learning rate
  and weight decay, at a third and three times the rate, each also with ten times the weight decay;
- a linear head, a logistic regression fitted by L-BFGS on the whole training split at once, its L2
  regularisation each of ``LINEAR_L2``.

Every candidate trains with the run's loss (label smoothing, class weights), epochs, early stopping and seed,
and keeps its best epoch by the run's ``monitor``, as the run's checkpoint does. With ``monitor: val_loss``
the candidates are then compared by their validation loss *calibrated*: each at the one temperature that
suits it best (its logits divided by T, T fitted on the validation split; Guo et al., 2017). Label
smoothing and weight decay leave heads under-confident by different amounts, and the plain loss ranks
confidence, not accuracy: on four photo sets it preferred fast, confident heads that were 0.4 point less
accurate on new photos (docs/benchmarks.md, "Head search"). Accuracy and macro F1 do not depend on T.
The run's own head stays unless the best candidate beats it beyond chance: in at least ``CONFIDENCE`` of
``RESAMPLES`` paired bootstrap resamples of the validation images (on a few hundred images a few images'
difference is noise, and chasing it loses accuracy on new photos). The evaluation split is never read.

>>> found = search_heads(cfg, inputs["training"], inputs["validation"], num_classes)   # doctest: +SKIP
>>> found.chosen.name, found.chosen.overrides                                          # doctest: +SKIP
('linear, L2 0.001', {'optimizer': 'lbfgs', 'lr': 1.0, 'weight_decay': 0.001, 'head_hidden': 0, ...})
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from headstart.config import TrainConfig
from headstart.data.samplers import EpochSampler, RankBatches, seed_of
from headstart.evaluation.metrics import MODE, confusion, macro_f1
from headstart.models.classifier import HeadConfig
from headstart.training.losses import train_loss
from headstart.training.optimizers import l2_penalty, make_optimizer
from headstart.training.schedule import lr_lambda
from headstart.utils.files import write_text
from headstart.utils.progress import track

log = logging.getLogger(__name__)

LR_FACTORS = (1 / 3, 1.0, 3.0)  # the run's head: its learning rate times these
WD_FACTORS = (1.0, 10.0)  # and its weight decay times these (0.01 and 0.1 where it is 0)
LINEAR_L2 = (1e-4, 1e-3, 1e-2, 1e-1)  # the linear head's L2 penalties (a logistic regression's 1 / (C N))
RESAMPLES, CONFIDENCE = 1000, 0.95  # paired bootstrap of the validation images: how sure a change must be
TEMPERATURES = np.exp(np.linspace(np.log(0.01), np.log(100.0), 81))  # tried for the calibrated loss, then refined
COLUMNS = [
    "candidate",
    "best_epoch",
    "val_loss",
    "val_loss_calibrated",
    "temperature",
    "val_accuracy",
    "val_macro_f1",
    "seconds",
    "chosen",
]


@dataclass
class Trial:
    """One candidate head, fitted: its validation figures at its best epoch."""

    name: str
    overrides: dict  # what it changes in the run's config
    best_epoch: int = 0
    figures: dict = field(default_factory=dict)  # val_loss(_calibrated), temperature, val_accuracy, val_macro_f1
    seconds: float = 0.0
    logits: torch.Tensor | None = None  # on the validation images, at the best epoch
    probs: np.ndarray | None = None  # the same, calibrated (divided by the temperature), as probabilities
    head: nn.Module | None = None  # the head at its best epoch (gradual starts from it)


@dataclass
class HeadSearch:
    """Every candidate's validation figures, the one chosen, and how sure the choice is."""

    trials: list[Trial]
    chosen: Trial
    monitor: str
    confidence: float  # the share of resamples in which the best candidate beat the run's own head
    seconds: float

    @property
    def own(self) -> Trial:
        return self.trials[0]

    def to_dict(self, taken: dict | None = None) -> dict:
        """What ``metrics.json`` and ``config.yaml``'s ``head_choice`` record; ``taken``: what the run took
        of the chosen candidate, when not all of its settings."""
        return {
            "chosen": self.chosen.name,
            "taken": self.chosen.overrides if taken is None else taken,
            "monitor": self.monitor,
            "confidence": round(self.confidence, 3),
            "seconds": round(self.seconds, 2),
            "candidates": [{"candidate": t.name, "best_epoch": t.best_epoch, **t.figures} for t in self.trials],
        }

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS)
        w.writeheader()
        for t in self.trials:
            w.writerow(
                {
                    "candidate": t.name,
                    "best_epoch": t.best_epoch,
                    **t.figures,
                    "seconds": round(t.seconds, 3),
                    "chosen": int(t is self.chosen),
                }
            )
        return buf.getvalue()

    def save(self, path) -> None:
        write_text(path, self.to_csv())


def searched(cfg: TrainConfig) -> bool:
    """Whether a run with this config searches its head: ``head_search: auto`` on ``features`` or
    ``gradual``, a search not already made (a run's own config.yaml records it), an optimizer of steps
    (an ``lbfgs`` run is a logistic regression already), and no learning-rate finder (it sets the rate)."""
    return (
        cfg.head_search == "auto"
        and cfg.strategy in ("features", "gradual")
        and cfg.head_choice is None
        and cfg.optimizer != "lbfgs"
        and not cfg.lr_find
    )


def candidates(cfg: TrainConfig) -> list[tuple[str, dict]]:
    """``(name, overrides)`` of every candidate, the run's own head first."""
    wds = [cfg.weight_decay * f for f in WD_FACTORS] if cfg.weight_decay > 0 else [0.0, 0.01, 0.1]
    own = "head" if cfg.head_hidden == 0 else f"head {cfg.head_hidden}"
    out = [(f"{own}, lr {cfg.lr:.3g}, wd {cfg.weight_decay:.3g}", {})]
    for f in LR_FACTORS:
        for wd in wds:
            lr = cfg.lr * f
            if (f, wd) != (1.0, cfg.weight_decay):
                out.append((f"{own}, lr {lr:.3g}, wd {wd:.3g}", {"lr": lr, "weight_decay": wd}))
    linear = dict(optimizer="lbfgs", lr=1.0, head_hidden=0, head_dropout=0.0, warmup_epochs=0.0, schedule="constant")
    out += [(f"linear, L2 {l2:g}", {**linear, "weight_decay": l2}) for l2 in LINEAR_L2]
    return out


def search_heads(
    cfg: TrainConfig,
    train: Dataset,
    val: TensorDataset,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    labels: list[int] | None = None,
    progress: bool = False,
    start: nn.Module | None = None,
) -> HeadSearch:
    """Fit every candidate on ``train`` (the cached features: a ``TensorDataset``, or augmented views), measure
    it on ``val``, and choose (module docstring). ``labels``: the training labels, for ``sampler: balanced``.
    ``start``: the run's head as built; the candidates of its shape start from its weights (so the run's own
    head, kept, trains exactly as it would have without a search), the others from new ones, seeded. The
    random state is left as it was found."""
    started = time.perf_counter()
    # As a features run trains the head (gradual's warm-up is one): no unfreezing, no augmented images.
    base = dataclasses.replace(cfg, strategy="features", unfreeze_every=2, augment=False, aug_views=0)
    trials = []
    tried = candidates(cfg)
    with torch.random.fork_rng(devices=[]):
        for name, overrides in track(tried, len(tried), "head search", progress):
            candidate = dataclasses.replace(base, **overrides)
            head = None if start is None or new_shape(overrides) else copy.deepcopy(start)
            trials.append(_fit(candidate, name, overrides, train, val, num_classes, class_weights, labels, head))
    y = val.tensors[1]
    for t in trials:
        calibrate(t, y)
    best = _best(trials, cfg.monitor)
    confidence = 1.0 if best is trials[0] else win_share(best.probs, trials[0].probs, y.numpy(), cfg.monitor, cfg.seed)
    chosen = best if confidence >= CONFIDENCE else trials[0]
    found = HeadSearch(trials, chosen, cfg.monitor, confidence, time.perf_counter() - started)
    log.info(
        "head search: %d candidates in %.1f s; %s (best: %s, better than the run's own head in %.0f%% of resamples)",
        len(trials),
        found.seconds,
        chosen.name,
        best.name,
        100 * confidence,
    )
    return found


def calibrate(trial: Trial, y: torch.Tensor) -> None:
    """The temperature that gives ``trial``'s validation logits their lowest loss, that loss, and its
    probabilities at that temperature."""

    def lowest(temperatures: np.ndarray) -> tuple[float, float]:
        losses = [nn.functional.cross_entropy(trial.logits / float(t), y).item() for t in temperatures]
        i = int(np.argmin(losses))
        return float(temperatures[i]), losses[i]

    coarse, _ = lowest(TEMPERATURES)
    step = TEMPERATURES[1] / TEMPERATURES[0]
    temperature, loss = lowest(coarse * np.exp(np.linspace(-np.log(step), np.log(step), 41)))
    trial.figures["val_loss_calibrated"] = round(loss, 6)
    trial.figures["temperature"] = round(temperature, 4)
    trial.probs = (trial.logits / temperature).softmax(1).numpy()


def _best(trials: list[Trial], monitor: str) -> Trial:
    """The first of the best by ``monitor``, the loss calibrated (the run's own head wins a tie)."""
    key = "val_loss_calibrated" if monitor == "val_loss" else monitor
    sign = 1 if MODE[monitor] == "min" else -1
    return min(trials, key=lambda t: sign * t.figures[key])


def _figures(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    loss = nn.functional.cross_entropy(logits, y).item()  # as the run's val_loss
    predicted = logits.argmax(1)
    return {
        "val_loss": round(loss, 6),
        "val_accuracy": round((predicted == y).float().mean().item(), 6),
        "val_macro_f1": round(macro_f1(confusion(y, predicted, num_classes)), 6),
    }


def new_shape(overrides: dict) -> bool:
    """Whether a candidate's head is another shape than the run's (the linear heads)."""
    return "head_hidden" in overrides or "head_dropout" in overrides


def new_head(cfg: TrainConfig, in_features: int, num_classes: int) -> nn.Module:
    """The head ``cfg`` describes, its weights drawn from ``cfg.seed``: a candidate of a new shape starts so,
    and the run that trains it too."""
    torch.manual_seed(cfg.seed)
    return HeadConfig(cfg.head_dropout, cfg.head_hidden, cfg.head_init).build(in_features, num_classes)


def _fit(cfg, name, overrides, train, val, num_classes, class_weights, labels, head=None) -> Trial:
    """The head ``cfg`` describes (``head``, or a new one), trained as ``headstart.training.module.TransferModule``
    trains a head on cached features (its optimizer, schedule, loss, batches and dropout seeds), kept at its
    best epoch."""
    started = time.perf_counter()
    x_val, y_val = val.tensors[0].float(), val.tensors[1]
    head = head if head is not None else new_head(cfg, x_val.shape[1], num_classes)
    loss_fn = train_loss(cfg.loss, class_weights, cfg.label_smoothing)
    opt = make_optimizer([{"params": list(head.parameters()), "lr": cfg.lr}], cfg.optimizer, cfg.lr, cfg.weight_decay)
    full = cfg.optimizer == "lbfgs"
    order = EpochSampler(train, cfg.seed, labels if cfg.sampler == "balanced" else None)
    batches = _Batches(train, RankBatches(order, len(train) if full else cfg.batch_size))
    schedule = None if full else torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, len(batches)))
    trial, sign, waited = Trial(name, overrides), 1 if MODE[cfg.monitor] == "min" else -1, 0
    for epoch in range(cfg.epochs):
        order.set_epoch(epoch)
        head.train()
        for i, batch in enumerate(batches):
            # Dropout, as the run draws it (the CPU generator alone: seeding CUDA too costs a millisecond a step)
            torch.default_generator.manual_seed(seed_of(cfg.seed, epoch, i))
            x, y = batch[0].float(), batch[1]

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(head(x), y).mean() + (l2_penalty(head, cfg.weight_decay) if full else 0)  # noqa: B023
                loss.backward()
                return loss

            if full:
                opt.step(closure)
            else:
                closure()
                opt.step()
                schedule.step()
        head.eval()
        with torch.no_grad():
            logits = head(x_val).float()
        figures = _figures(logits, y_val, num_classes)
        if not trial.figures or sign * figures[cfg.monitor] < sign * trial.figures[cfg.monitor]:
            trial.best_epoch, trial.figures, trial.logits, waited = epoch + 1, figures, logits, 0
            trial.head = copy.deepcopy(head).eval()
        else:
            waited += 1
            if cfg.early_stopping and waited >= cfg.early_stopping:
                break
    trial.seconds = time.perf_counter() - started
    return trial


class _Batches:
    """The batches of ``sampler`` from ``data``: rows of its tensors taken at once when it holds tensors
    (a DataLoader's item-by-item reading and collating is most of the time a head's step takes), read
    through a DataLoader otherwise (augmented views pick one view an image)."""

    def __init__(self, data: Dataset, sampler: RankBatches):
        self.data, self.sampler = data, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        if isinstance(self.data, TensorDataset):
            return (tuple(t[torch.as_tensor(b)] for t in self.data.tensors) for b in self.sampler)
        return iter(DataLoader(self.data, batch_sampler=self.sampler))


def win_share(probs: np.ndarray, own: np.ndarray, y: np.ndarray, monitor: str, seed: int = 0) -> float:
    """In how many of ``RESAMPLES`` bootstrap resamples of the validation images (the same images for
    both) ``probs`` is better than ``own`` by ``monitor``: 0.5 is a coin toss, 1 always."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(y), size=(RESAMPLES, len(y)))
    a, b = _score(probs, y, picks, monitor), _score(own, y, picks, monitor)
    better = a < b if MODE[monitor] == "min" else a > b
    return float(better.mean())


def _score(probs: np.ndarray, y: np.ndarray, picks: np.ndarray, monitor: str) -> np.ndarray:
    """``monitor`` on each resample (rows of ``picks``)."""
    if monitor == "val_loss":
        return -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))[picks].mean(1)
    predicted = probs.argmax(1)
    if monitor == "val_accuracy":
        return (predicted == y)[picks].mean(1)
    c = probs.shape[1]
    return np.array([macro_f1(confusion(torch.as_tensor(y[p]), torch.as_tensor(predicted[p]), c)) for p in picks])
