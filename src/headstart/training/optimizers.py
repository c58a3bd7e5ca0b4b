"""The optimizers a run trains with (``make_optimizer``): PyTorch's Adam, AdamW and SGD; L-BFGS for a
linear head on cached features; and Keras' Adam for the seed recipe.

Keras' Adam for the seed recipe: epsilon 1e-7 added to sqrt(v) *before* the bias correction is folded
into the step size. PyTorch's Adam adds its 1e-8 after it: in PyTorch's terms Keras' epsilon is
1e-7 / sqrt(1 - 0.999^t), 3e-6 at the first step, still 3e-7 after 100, so no fixed ``eps`` of
``torch.optim.Adam`` gives Keras' steps. ``tests/training/test_keras_parity.py`` checks it against Keras itself.
"""

from __future__ import annotations

import math

import torch

EPSILON = 1e-7  # keras.backend.epsilon(): Adam's default epsilon and the loss's clipping
# L-BFGS (a head on cached features, the whole training split one batch): iterations an epoch, and the
# curvature pairs it keeps. 20 an epoch: a logistic regression on 1,280 features converges in a few epochs.
LBFGS_ITERATIONS, LBFGS_HISTORY = 20, 20


def make_optimizer(groups: list[dict], name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` over parameter ``groups`` (each with its own ``lr``). ``lbfgs`` takes full
    steps with a strong-Wolfe line search (``lr`` scales them; 1 is L-BFGS' own) and has no weight decay of
    its own: its ``weight_decay`` is an L2 penalty in the loss (``l2_penalty``), as a logistic regression's."""
    if name == "lbfgs":
        params = [p for g in groups for p in g["params"]]
        return torch.optim.LBFGS(
            params, lr=lr, max_iter=LBFGS_ITERATIONS, history_size=LBFGS_HISTORY, line_search_fn="strong_wolfe"
        )
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "keras_adam": KerasAdam}[name]
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    return kind(groups, lr=lr, weight_decay=weight_decay, **kwargs)


def l2_penalty(module: torch.nn.Module, weight_decay: float) -> torch.Tensor:
    """``weight_decay / 2 · Σ w²`` over the weight matrices of ``module`` that train (biases are not
    penalised, as in scikit-learn's ``LogisticRegression``): L-BFGS' regularisation."""
    weights = [p for p in module.parameters() if p.requires_grad and p.dim() > 1]
    return weight_decay / 2 * sum(w.pow(2).sum() for w in weights)


class KerasAdam(torch.optim.Optimizer):
    """Adam as ``keras.optimizers.Adam`` steps (beta 0.9 and 0.999, epsilon 1e-7):

    ``m += (1 - b1) (g - m)``, ``v += (1 - b2) (g² - v)``,
    ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) · m / (sqrt(v) + eps)``.

    ``weight_decay`` is Keras' too: decoupled, ``w -= lr · wd · w`` before the step.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = EPSILON,
        weight_decay: float = 0.0,
    ):
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
