"""The transfer-learning rules as a tool: measure the data, place it in one of the four cases,
recommend a strategy (``headstart advise DATA``, ``--strategy auto``).

The rules (the tutorial quotes them; they come from the CS231n notes on transfer learning):

===========  ===============================  ==========================================
             similar to the pretraining data  different from it
===========  ===============================  ==========================================
small data   train only a new classifier on   fix the earlier layers, retrain the rest
             frozen features (``features``)   (``half``: frozen up to the middle)
large data   retrain the whole network from   retrain the whole network from
             the pretrained weights (``full``) the pretrained weights (``full``)
===========  ===============================  ==========================================

Two inputs decide the case, both measured on the user's data:

- **size**: training images per class (the smallest class decides: it is the one that overfits);
- **similarity**: how well the backbone's frozen final features already separate the classes
  (leave-one-out k-NN on a bounded sample), compared with the same probe on an earlier layer's
  pooled features. ImageNet-like data is separated well by the final layer; data unlike it is
  separated poorly, or better by earlier, more generic layers (Yosinski et al. 2014: later
  layers are the specific ones). Where the backbone has its ImageNet classifier, how confident it
  is on these images is shown as a third signal; it does not decide.

The input size is measured too: the same probe at two or three sizes around the photos' own and the
weights' native one; the smallest size within a point of the best is recommended (``--input-size auto``).

>>> advice = advise("demo")                                  # doctest: +SKIP
>>> advice.case, advice.recommendation["strategy"]          # doctest: +SKIP
('small data, similar to the pretraining data', 'features')
>>> advice.resolution["why"]                                 # doctest: +SKIP
'224 px: probe 76 % vs 67 % at 128 px, 3.1x the time'
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from headstart.advice.input_size import candidate_sizes, choose_size, native_size, photo_size
from headstart.config import VIEW_STRATEGIES, TrainConfig
from headstart.data.cache import decoded_images
from headstart.data.dataset import Dataset, load_dataset, multi_hot
from headstart.data.layouts import label_ids
from headstart.engines.choice import Engine
from headstart.errors import ConfigError, DataError
from headstart.models.factory import create_model
from headstart.models.features import extract_features
from headstart.models.strategies import resolve_freeze

log = logging.getLogger(__name__)

# --- thresholds: every number the advice depends on, and where it comes from ---------------------------

# "Small" data: fewer training images than this in the smallest class. The rules give no number;
# 1,000 per class is the usual rule of thumb (ImageNet itself has ~1,000 per class), and Food-11's
# 9,866 training images in 11 classes (~900 each) count as small, as in the tutorial.
SMALL_PER_CLASS = 1000
# "Similar" data: the final layer's k-NN accuracy at least halfway from chance to perfect, i.e. a
# normalised separability (acc - 1/C) / (1 - 1/C) >= 0.5. On ImageNet-like photos frozen features
# score far above (0.9+ in the tests); on data built to be different they sit near chance (0).
SIMILAR_SEPARABILITY = 0.5
# ... and not beaten by the earlier layer's features by more than this (accuracy points): earlier,
# generic layers beating the final, specific ones is Yosinski et al.'s sign of a different domain.
EARLIER_MARGIN = 0.05
# k of the k-NN probe (cosine similarity, majority vote, leave-one-out), and the bounded sample:
# at most 60 images a class and 3,000 in all, but never fewer than 5 a class (so above 600
# classes the sample grows by 5 a class; the probe works in blocks of rows either way).
K_NEIGHBOURS = 5
SAMPLE_PER_CLASS = 60
SAMPLE_TOTAL = 3000

RULES = {
    ("small", "similar"): (
        "features",
        "If the new data-set is very small, it's better to train only the final "
        "layers of the network to avoid overfitting, keeping all other layers fixed.",
    ),
    ("large", "similar"): (
        "full",
        "If the new data-set is very much large, retrain the whole network with "
        "initial weights from the pre-trained model.",
    ),
    ("small", "different"): (
        "half",
        "If the new data-set is very small, it will be good to fix the earlier "
        "layers and retrain the rest of the layers.",
    ),
    ("large", "different"): (
        "full",
        "If the new data-set has large amount of data, we can retrain the whole "
        "network with weights initialized from the pre-trained network.",
    ),
}
SOURCE = "as the tutorial quotes it, from the CS231n notes"


@dataclass
class Advice:
    """The measurements, the case they place the data in, the rule, and what to run."""

    data: str
    backbone: str
    measurements: dict
    size: str  # small | large
    similarity: str  # similar | different
    rule: str
    recommendation: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    resolution: dict | None = None  # the probe at each input size (choose_size), when measured

    @property
    def case(self) -> str:
        towards = "to" if self.similarity == "similar" else "from"
        return f"{self.size} data, {self.similarity} {towards} the pretraining data"

    @property
    def strategy(self) -> str:
        return self.recommendation["strategy"]

    def to_dict(self) -> dict:
        return {**asdict(self), "case": self.case}

    def overrides(self) -> dict:
        """The recommendation as ``TrainConfig`` options: the strategy, and what differs from the defaults."""
        d = TrainConfig()
        return {
            k: v
            for k, v in self.recommendation.items()
            if k == "strategy" or (hasattr(d, k) and v is not None and v != getattr(d, k))
        }


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = K_NEIGHBOURS) -> float:
    """Leave-one-out k-NN accuracy with cosine similarity: how well the features separate the classes.
    Neighbours are found 1,024 rows at a time, so memory stays O(1,024 x N). Multi-label ``labels`` ((N, C) rows
    of 0 and 1): the mAP of each class's share among the neighbours (``knn_map``)."""
    if labels.dim() == 2:
        return knn_map(features, labels, k)
    correct = 0
    for start, nearest in _neighbours(features, k):
        num_classes = int(labels.max()) + 1
        votes = torch.nn.functional.one_hot(labels[nearest], num_classes).sum(1).float()
        votes += 1e-3 * torch.nn.functional.one_hot(labels[nearest[:, 0]], num_classes)  # ties: the nearest wins
        correct += int((votes.argmax(1) == labels[start : start + 1024]).sum())
    return correct / len(features)


def _neighbours(features: torch.Tensor, k: int):
    """(start, the k nearest other rows of rows start..start+1023 by cosine similarity), 1,024 rows at a time."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    k = min(k, len(x) - 1)
    for start in range(0, len(x), 1024):
        sim = x[start : start + 1024] @ x.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -float("inf")  # not its own neighbour
        yield start, sim.topk(k, dim=1).indices


def knn_map(features: torch.Tensor, labels: torch.Tensor, k: int = K_NEIGHBOURS) -> float:
    """Multi-label data: leave-one-out, each class scored by its share among an image's k nearest neighbours;
    the mean over the classes (with a positive image) of their average precision (scikit-learn's)."""
    from sklearn.metrics import average_precision_score

    scores = torch.cat([labels[nearest].float().mean(1) for _, nearest in _neighbours(features, k)]).numpy()
    present = labels.sum(0).numpy() > 0
    return float(average_precision_score(labels.numpy()[:, present], scores[:, present], average="macro"))


def separability(accuracy: float, num_classes: int, chance: float | None = None) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (``chance``: 1 / classes unless given; for a
    multi-label mAP, the mean share of images a class is on, a random scorer's AP)."""
    chance = 1 / num_classes if chance is None else chance
    return max(0.0, (accuracy - chance) / (1 - chance))


def _sample(ds: Dataset, per_class: int, seed: int) -> list[int]:
    """Indices of a seeded sample of the training and validation images, bounded per class and in all."""
    rng = np.random.default_rng(seed)
    per_class = min(per_class, max(5, SAMPLE_TOTAL // ds.num_classes))
    out = []
    for c in range(ds.num_classes):
        idx = [i for i, s in enumerate(ds.samples) if c in label_ids(s.label) and s.split in ("training", "validation")]
        out += sorted(rng.choice(idx, min(per_class, len(idx)), replace=False).tolist())
    return sorted(set(out)) if ds.multi_label else out  # an image of several classes, once


@torch.inference_mode()
def measure_similarity(
    ds: Dataset,
    backbone: str,
    weights: str = "default",
    input_size: int | None = None,
    per_class: int = SAMPLE_PER_CLASS,
    seed: int = 0,
    progress: bool = False,
    decode_all: bool = False,
    engine: Engine | None = None,
) -> dict:
    """Probe the frozen backbone on a bounded sample: k-NN accuracy of the final and of an earlier
    layer's pooled features, and the ImageNet classifier's confidence where there is one.

    Only the sample is decoded, unless ``decode_all``: then the whole dataset goes into the image
    cache (what training is about to read anyway) and the sample is read from there.
    """
    try:  # keep the ImageNet classifier when the weights have one: its confidence is a signal
        model = create_model(backbone, 1000, weights=weights, head="pretrained", input_size=input_size)
    except ConfigError:  # none to keep (weights that cannot be had are a WeightsError: said once)
        model = create_model(backbone, ds.num_classes, weights=weights, input_size=input_size)
    model.eval()
    if decode_all:
        ds, store = decoded_images(ds, model.preprocessing, progress=progress)
        indices = _sample(ds, per_class, seed)
    else:
        picked = _sample(ds, per_class, seed)
        ds = dataclasses.replace(ds, samples=[ds.samples[i] for i in picked], ignored=[], problems=[])
        ds, store = decoded_images(ds, model.preprocessing, progress=progress, check=False)
        indices = list(range(len(ds.samples)))
    labels = [ds.samples[i].label for i in indices]
    labels = torch.from_numpy(multi_hot(labels, ds.num_classes)) if ds.multi_label else torch.tensor(labels)
    chance = float(labels.mean()) if ds.multi_label else None  # a random scorer's mAP: the mean share of a class
    mid = resolve_freeze(model, "half")  # the end of what `half` freezes: the earlier layer probed
    out = {
        "sample": len(indices),
        "groups": len(model.groups),
        "half_freezes": mid,
        "earlier_layer": None,
        "earlier_knn": None,
        "earlier_separability": None,
        "imagenet_confidence": None,
        "input_size": model.preprocessing.input_size,
        "native_size": model.body.preprocessing.input_size,
    }
    model.forward_features(torch.zeros(1, 3, model.preprocessing.input_size, model.preprocessing.input_size))  # warm-up
    engine = engine or Engine("torch")
    # The forward pass: what a size costs at every epoch and prediction (an engine's one-time conversion aside).
    started, converting = time.perf_counter(), engine.setup_seconds
    cut = model.split(mid)
    if cut is not None:  # one pass: the earlier activations, then the rest of the body on them
        prefix, rest = cut
        act = extract_features(model, store, indices, upto=prefix, progress=progress, engine=engine)
        final = torch.cat([rest(act[i : i + 64]) for i in range(0, len(act), 64)])
        earlier = act.float().mean((2, 3)) if act.dim() == 4 else act.float().mean(1)
        out["earlier_layer"] = model.groups[mid - 1].name
        out["earlier_knn"] = knn_accuracy(earlier, labels)
        out["earlier_separability"] = separability(out["earlier_knn"], ds.num_classes, chance)
    else:
        final = extract_features(model, store, indices, progress=progress, engine=engine)
    out["probe_seconds"] = round(time.perf_counter() - started - (engine.setup_seconds - converting), 3)
    out["engine"] = engine.used
    out["final_knn"] = knn_accuracy(final, labels)
    out["final_separability"] = separability(out["final_knn"], ds.num_classes, chance)
    if model.config.get("head") == "pretrained":
        out["imagenet_confidence"] = float(model.head(final).softmax(1).max(1).values.mean())
    return out


def recommend(size: str, similarity: str, groups: int, frozen: int) -> dict:
    """Strategy, learning rates, epochs and augmentation for one of the four cases: the default
    recipe's values (``TrainConfig``), except where the case calls for others."""
    d = TrainConfig()
    strategy = RULES[(size, similarity)][0]
    rec = {"strategy": strategy, "epochs": d.epochs, "lr": d.lr, "backbone_lr": d.backbone_lr, "augment": d.augment}
    if strategy == "features":
        rec.update(
            augment=False,
            backbone_lr=None,
            why="a new classifier on frozen features: nothing else to fit on little data; features are "
            "computed once, so epochs take a fraction of a second",
        )
    elif strategy == "half":
        rec.update(
            why=f"the first {frozen} of {groups} groups stay fixed (generic features); the "
            f"later ones adapt at {d.backbone_lr:g}, {d.lr / d.backbone_lr:g}x gentler than the new head; "
            "augmentation against overfitting"
        )
    else:
        if similarity == "different":
            rec["backbone_lr"] = 3 * d.backbone_lr  # the body has further to go
        rec.update(
            why="every layer trains from the pretrained weights, lower layers more gently "
            "(discriminative rates); enough data not to overfit"
        )
    return rec


def advise(
    data: str | Dataset,
    backbone: str = "efficientnet_lite0",
    weights: str = "default",
    input_size: int | None = None,
    per_class: int = SAMPLE_PER_CLASS,
    seed: int = 0,
    progress: bool = False,
    decode_all: bool = False,
    layout: str | None = None,
    resolution: bool | None = None,
    sizes: list[int] | None = None,
    engine: str = "auto",
    engine_precision: str = "fp32",
) -> Advice:
    """Measure ``data`` and apply the rules: the case, the rule quoted, and a recommendation.

    ``resolution`` (None: when no ``input_size`` is given): probe two or three input sizes too
    (``candidate_sizes``, or these ``sizes`` and ``input_size``) and recommend one (``choose_size``);
    the case is measured at ``input_size`` if given, else at the recommended size. ``decode_all``: decode
    the whole dataset into the image cache at ``input_size`` (when training follows at it). ``engine``:
    what runs the probe's frozen pass (``headstart.engines``). Prepared shards are measured at the size they hold."""
    runs = Engine(engine, engine_precision)
    runs.candidates(torch.device("cpu"))  # not installed, or bf16 without bf16 units: said now
    ds = data if isinstance(data, Dataset) else load_dataset(data, layout, seed=seed)
    if ds.stream is not None:  # prepared shards hold one size: measured at it, no other probed
        input_size, resolution = input_size or ds.stream.preprocessing.input_size, False
    if ds.num_classes < 2:
        raise DataError(f"advise needs at least 2 classes; {ds.root} has {ds.num_classes}.")
    train = ds.counts()["training"]
    m = {
        "classes": ds.num_classes,
        **({"task": "multi"} if ds.multi_label else {}),  # the k-NN figures are then a mAP
        "training_images": len(ds.split("training")),  # multi-label: images, not labels
        "smallest_class": min(train),
        "largest_class": max(train),
        "imbalance": round(max(train) / max(min(train), 1), 2),
    }
    probe = functools.partial(
        measure_similarity, ds, backbone, weights, per_class=per_class, seed=seed, progress=progress, engine=runs
    )
    res = None
    if resolution or resolution is None and not input_size:
        photo, native = photo_size(ds, _sample(ds, per_class, seed)), native_size(backbone, weights)
        sizes = (
            sorted({*sizes, *([input_size] if input_size else [])})
            if sizes
            else candidate_sizes(photo, native, input_size)
        )
        probes = {s: probe(s, decode_all=decode_all and s == input_size) for s in sizes}
        res = {"photo_size": photo, "native_size": native, **choose_size(probes)}
        m.update(probes[input_size or res["input_size"]])
    else:
        m.update(probe(input_size, decode_all=decode_all))

    size = "small" if m["smallest_class"] < SMALL_PER_CLASS else "large"
    reasons = [
        f"{size}: the smallest class has {m['smallest_class']:,} training images "
        f"({'<' if size == 'small' else '>='} {SMALL_PER_CLASS:,})"
    ]
    separable = m["final_separability"] >= SIMILAR_SEPARABILITY
    earlier_wins = m["earlier_knn"] is not None and m["earlier_knn"] > m["final_knn"] + EARLIER_MARGIN
    similarity = "similar" if separable and not earlier_wins else "different"
    knn = "k-NN mAP" if ds.multi_label else "k-NN"  # multi-label data: the probe's mAP (knn_map)
    reasons.append(
        f"final-layer features separate the classes {'well' if separable else 'poorly'}: {knn} "
        f"{m['final_knn']:.1%}, separability {m['final_separability']:.2f} "
        f"({'>=' if separable else '<'} {SIMILAR_SEPARABILITY})"
    )
    if m["earlier_knn"] is not None:
        reasons.append(
            f"earlier layer ({m['earlier_layer']}) {knn} {m['earlier_knn']:.1%}: "
            + (
                "better than the final layer, a sign of a different domain"
                if earlier_wins
                else "not better than the final layer"
            )
        )
    rec = recommend(size, similarity, m["groups"], m["half_freezes"])
    if res:
        rec["input_size"] = res["input_size"]
    return Advice(
        str(data if not isinstance(data, Dataset) else ds.root),
        backbone,
        m,
        size,
        similarity,
        RULES[(size, similarity)][1],
        rec,
        reasons,
        res,
    )


def advised_config(cfg: TrainConfig, ds: Dataset, asked: dict | None, progress: bool) -> TrainConfig:
    """``--strategy auto``: the advice's strategy and settings, except those asked for explicitly
    (``asked``; None: everything was, e.g. a whole config passed in, so only the strategy is taken;
    so too with the seed recipe: the rest of it is the tutorial's). ``--input-size auto``: the
    recommended input size (a number: a saved config never says auto)."""
    auto_size = cfg.input_size == "auto"
    # Its own random state: an advised run trains exactly as one with the same strategy named.
    with torch.random.fork_rng(devices=[]):
        advice = advise(
            ds,
            cfg.backbone,
            cfg.weights,
            None if auto_size else cfg.input_size,
            seed=cfg.seed,
            progress=progress,
            resolution=auto_size,
            decode_all=not auto_size,
            engine=cfg.engine,
            engine_precision=cfg.engine_precision,
        )  # training reads the same cache next (the size known)
    wanted = {"strategy"} if cfg.strategy == "auto" else set()
    wanted |= {"input_size"} if auto_size else set()
    take_all = cfg.strategy == "auto" and asked is not None and cfg.recipe != "seed"
    chosen = {k: v for k, v in advice.overrides().items() if k in wanted or (take_all and k not in asked)}
    if (
        cfg.aug_views and cfg.aug_views != "auto"
    ):  # views asked for: they need augmentation, and frozen layers to go through
        chosen.pop("augment", None)
        if chosen.get("strategy", cfg.strategy) not in VIEW_STRATEGIES:
            log.warning(
                "aug_views: the advised strategy, %s, has no frozen layers to compute views through; "
                "it trains without them",
                chosen["strategy"],
            )
            chosen["aug_views"] = 0
    log.info("auto: %s", ", ".join(f"{k} {v}" for k, v in chosen.items()))
    return dataclasses.replace(cfg, **chosen, advice={**advice.to_dict(), "taken": sorted(chosen)})
