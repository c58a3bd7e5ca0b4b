"""Keras' numerics, where they differ from PyTorch's, for the seed recipe (the tutorial's Keras code).

- ``init_head(head, "keras")``: Dense layers start Glorot-uniform (kernel in ±sqrt(6 / (fan_in +
  fan_out))) with zero biases; PyTorch's Linear draws both from ±1/sqrt(fan_in). On VGG16's 512
  features that made the tutorial's head start at a loss of 5.3 where PyTorch's started at 2.5.
- ``KerasAdam``: Keras' Adam, epsilon 1e-7 added to sqrt(v) *before* the bias correction is folded
  into the step size. PyTorch's Adam adds its 1e-8 after it: in PyTorch's terms Keras' epsilon is
  1e-7 / sqrt(1 - 0.999^t), 3e-6 at the first step, still 3e-7 after 100. No fixed ``eps`` of
  ``torch.optim.Adam`` gives Keras' steps.
- ``KerasCrossEntropy``: ``categorical_crossentropy`` on a softmax layer's output: probabilities
  clipped to [1e-7, 1 - 1e-7], then -sum(y log p). Only a probability below 1e-7 tells it apart
  from PyTorch's cross-entropy on logits (the loss of one image stops at -log 1e-7 = 16.1, and
  its gradient at 0).

``tests/test_keras_parity.py`` checks them step for step against Keras itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from headstart.errors import ConfigError

EPSILON = 1e-7  # keras.backend.epsilon(): Adam's default epsilon and the loss's clipping


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


class KerasAdam(torch.optim.Optimizer):
    """Adam as ``keras.optimizers.Adam`` steps (beta 0.9 and 0.999, epsilon 1e-7):

    ``m += (1 - b1) (g - m)``, ``v += (1 - b2) (g² - v)``,
    ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) · m / (sqrt(v) + eps)``.

    ``weight_decay`` is Keras' too: decoupled, ``w -= lr · wd · w`` before the step.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = EPSILON,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:  # frozen, or not opened yet (gradual): no state, as in Keras
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                state["step"] += 1
                t, m, v, g = state["step"], state["m"], state["v"], p.grad
                if wd:
                    p.sub_(p * (wd * lr))
                m.add_((g - m) * (1 - b1))
                v.add_((g * g - v) * (1 - b2))
                alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.sub_(m * alpha / (v.sqrt() + eps))
        return loss


class KerasCrossEntropy(nn.Module):
    """Keras' categorical cross-entropy, one loss per image (``reduction="none"``), from logits:
    softmax, clip to [1e-7, 1 - 1e-7], -sum(y log p). Label smoothing as Keras': y (1 - s) + s / C.
    ``weight``: per-class weights, each image's loss times its class's (Keras' ``class_weight``)."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1).clamp(EPSILON, 1 - EPSILON)
        y = nn.functional.one_hot(target, logits.shape[1]).to(probs.dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
        loss = -(y * probs.log()).sum(1)
        return loss * self.weight[target] if self.weight is not None else loss


def train_loss(kind: str, weight: torch.Tensor | None, label_smoothing: float) -> nn.Module:
    """Each image's training loss: "torch" is ``nn.CrossEntropyLoss`` on logits, "keras" is Keras' on probabilities."""
    if kind == "keras":
        return KerasCrossEntropy(weight, label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction="none")
