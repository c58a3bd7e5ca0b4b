"""The classifier: a pretrained body pooled to one feature vector, and the tutorial's head on it.

``Classifier`` takes RGB floats in [0, 1] and normalises them itself (``preprocessing``), so a saved
model always gets the inputs it was trained on; ``groups`` are the body's freezable parts, input to
output; ``split(k)`` cuts it after its k-th group for the frozen pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from headstart.checks import HEAD_DROPOUT, HEAD_HIDDEN, check_number
from headstart.data.preprocessing import Preprocessing
from headstart.errors import ConfigError
from headstart.models.backbone import Body, Group


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on top of the pooled features; the tutorial's by default."""

    dropout: float = 0.2  # the tutorial's Dropout(0.2)
    hidden: int = 100  # its Dense(100, relu); 0 means a single linear layer
    init: str = "torch"  # "keras": Glorot-uniform kernels and zero biases, as its Dense layers start

    def __post_init__(self) -> None:
        check_number("head dropout", self.dropout, HEAD_DROPOUT)
        check_number("head hidden", self.hidden, HEAD_HIDDEN)

    def build(self, in_features: int, num_classes: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout(self.dropout)] if self.dropout > 0 else []
        if self.hidden > 0:
            layers += [nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, num_classes)]
        else:
            layers.append(nn.Linear(in_features, num_classes))
        return init_head(nn.Sequential(*layers), self.init)


class Classifier(nn.Module):
    """A pretrained body, a new head, its freezable groups and its preprocessing."""

    def __init__(self, body: Body, head: nn.Module, preprocessing: Preprocessing, *, backbone: str, config: dict):
        super().__init__()
        self.frozen_modules: list[nn.Module] = []  # set by headstart.models.strategies; kept in eval mode
        self.pretrained_bn_stats = False  # True: every BatchNorm of the body uses its running statistics
        self.body = body
        self.head = head
        self.groups = body.groups()
        self.backbone = backbone
        self.num_features = body.num_features
        self.config = config  # everything create_model needs to build this model again
        self.set_preprocessing(preprocessing)

    def set_preprocessing(self, preprocessing: Preprocessing) -> None:
        """Use the input preprocessing of the weights loaded into the body."""
        self.preprocessing = preprocessing
        # Buffers, so they move with .to(device); not persistent: preprocessing is saved as data.
        order = ["RGB".index(c) for c in preprocessing.channels]
        self.register_buffer("channel_order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Classifier":
        """As ``nn.Module.train``, but frozen layers stay in eval mode: a frozen BatchNorm's running
        statistics never move (Keras does the same for layers with ``trainable = False``). With
        ``pretrained_bn_stats`` every BatchNorm of the body normalises with its pretrained statistics
        while its weights train (Keras' advice for fine-tuning on small data)."""
        super().train(mode)
        for m in self.frozen_modules:
            m.eval()
        if self.pretrained_bn_stats:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def replace_head(self, head: HeadConfig, module: nn.Module | None = None) -> None:
        """Put the head ``head`` describes on the body: ``module`` (already trained), or a new one. The
        model's ``config`` says so, so a saved model is rebuilt with it."""
        self.head = module if module is not None else head.build(self.num_features, self.config["num_classes"])
        self.config = {**self.config, "head": asdict(head)}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> what the body's weights expect (channel order, mean, std)."""
        if self.preprocessing.channels != "RGB":
            x = x[:, self.channel_order]
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, one vector of ``num_features`` per image."""
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def features_module(self) -> nn.Module:
        """``forward_features`` as a module of its own (the body, normalising first): what the frozen
        pass of ``features`` runs, and exports to an inference engine."""
        return _Normalized(self, self.body)

    def split(self, k: int) -> tuple[nn.Module, nn.Module] | None:
        """The forward pass cut after the first ``k`` groups: ``(prefix, rest)`` with
        ``rest(prefix(x)) == forward_features(x)``, or None when this architecture cannot be cut there.

        With the first k groups frozen (and no augmentation) the prefix's output never changes, so
        it is computed once and only ``rest`` runs every epoch.
        """
        stages = self.body.stages()
        if not stages or not 0 < k <= len(self.groups):
            return None
        names = [name for name, _ in stages]
        if names[:k] != [g.name for g in self.groups[:k]]:
            return None
        prefix = _Normalized(self, nn.Sequential(*[m for _, m in stages[:k]]))
        return prefix, _Rest(nn.Sequential(*[m for _, m in stages[k:]]), self.body)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(
            f"No group '{name}' in {self.backbone}; its groups are: {', '.join(g.name for g in self.groups)}."
        )


class _Normalized(nn.Module):
    """Normalise as the classifier does, then run some of its stages."""

    def __init__(self, classifier: Classifier, stages: nn.Sequential):
        super().__init__()
        self.stages, self._normalize = stages, classifier.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self._normalize(x))


class _Rest(nn.Module):
    """The stages after a cut, then the body's pooling."""

    def __init__(self, stages: nn.Sequential, body: Body):
        super().__init__()
        self.stages, self._pool = stages, body.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self.stages(x))


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def init_head(head: nn.Module, kind: str) -> nn.Module:
    """The head's Linear layers as ``kind`` initialises them: "torch" leaves PyTorch's, "keras" is Dense's."""
    if kind not in ("torch", "keras"):
        raise ConfigError(f"A head's init is torch or keras. Received: init={kind!r}")
    if kind == "keras":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # Keras' glorot_uniform: the same bound, fan_in + fan_out
                nn.init.zeros_(m.bias)
    return head
