"""Multi-label metrics against values computed by hand and by scikit-learn; the thresholds chosen on validation;
the multi-label losses against PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.evaluation.multilabel import average_precisions, best_f1_thresholds, compute_multilabel, mean_ap
from headstart.training.losses import BinaryCrossEntropy, positive_weights

# Four images, two classes. Class a: scores .9 .4 .6 .1, positives images 0 and 2. Class b: .2 .7 .3 .6,
# positives 1 and 2.
TARGETS = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
PROBS = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.3], [0.1, 0.6]])


def test_the_metrics_by_hand():
    thresholds = best_f1_thresholds(TARGETS, PROBS)
    # a: at 0.6 both positives and nothing else (F1 1). b: at 0.3 two positives and one negative (F1 0.8),
    # better than 0.6 (F1 0.5) or 0.7 (F1 0.667).
    assert thresholds.tolist() == pytest.approx([0.6, 0.3])
    ev = compute_multilabel(TARGETS, PROBS, ["a", "b"], thresholds)
    # AP of b: ranked .7 (+) .6 (-) .3 (+) .2 (-): (1/1 + 2/3) / 2
    assert [r["ap"] for r in ev.per_class] == pytest.approx([1.0, 5 / 6])
    assert ev.map == pytest.approx((1 + 5 / 6) / 2)
    # predicted: a on images 0, 2; b on 1, 2, 3 -> TP 4, FP 1, FN 0
    assert ev.predicted.tolist() == [[True, False], [False, True], [True, True], [False, True]]
    assert ev.micro_f1 == pytest.approx(2 * 4 / (2 * 4 + 1))
    assert ev.macro_f1 == pytest.approx((1.0 + 0.8) / 2)
    assert [r["precision"] for r in ev.per_class] == pytest.approx([1.0, 2 / 3])
    assert [r["recall"] for r in ev.per_class] == pytest.approx([1.0, 1.0])
    assert (ev.correct, ev.total, ev.accuracy) == (3, 4, 0.75)  # image 3 has an extra b
    assert ev.hamming_loss == pytest.approx(1 / 8)
    assert ev.confusion.tolist() == [[2, 1], [1, 2]]  # true a: both given a, one given b; true b: ...
    expected_loss = -np.mean(TARGETS * np.log(PROBS) + (1 - TARGETS) * np.log(1 - PROBS))
    assert ev.loss == pytest.approx(expected_loss, rel=1e-5)
    assert ev.wrong_labels() == [(3, 1, pytest.approx(0.6))]
    assert ev.wrong_shown()[0][2] == "extra: b (60%)\ntrue: none"
    saved = ev.to_dict()
    assert saved["task"] == "multi" and saved["thresholds"] == pytest.approx([0.6, 0.3])
    assert saved["cooccurrence_matrix"] == [[2, 1], [1, 2]]


def test_a_class_without_a_positive_image_is_left_out_of_the_mean():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.8, 0.1], [0.3, 0.9], [0.7, 0.2]])
    ap = average_precisions(targets, probs)
    assert ap[0] == 1.0 and np.isnan(ap[1])
    assert mean_ap(targets, probs) == 1.0
    assert best_f1_thresholds(targets, probs)[1] == 0.5  # nothing to choose it on
    assert compute_multilabel(targets, probs, ["a", "b"]).per_class[1]["ap"] is None


def test_map_and_thresholds_agree_with_scikit_learn_and_a_brute_force_search():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(0)
    targets = (rng.random((200, 5)) < [0.1, 0.3, 0.5, 0.2, 0.6]).astype(int)
    probs = np.clip(0.35 * targets + 0.65 * rng.random((200, 5)), 0, 1).astype(np.float32)  # as models give them
    assert mean_ap(targets, probs) == pytest.approx(average_precision_score(targets, probs, average="macro"), abs=1e-5)
    thresholds = best_f1_thresholds(targets, probs)
    for c in range(5):
        best = max(f1_score(targets[:, c], probs[:, c] >= t) for t in np.unique(probs[:, c]))
        assert f1_score(targets[:, c], probs[:, c] >= thresholds[c]) == pytest.approx(best, abs=1e-6)


def test_binary_cross_entropy_is_pytorchs_with_positive_weights_and_keras_numerics():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), (torch.rand(6, 4) < 0.4).float()
    y[0] = 1  # every class has a positive
    w = positive_weights(y)
    assert w.tolist() == pytest.approx(((6 - y.sum(0)) / y.sum(0)).tolist())
    loss = BinaryCrossEntropy(w)(logits, y)
    reference = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=w, reduction="none")
    assert loss.shape == (6,) and torch.allclose(loss, reference.mean(1))
    # Keras' numerics (clipped probabilities) match on logits whose sigmoid is far from 0 and 1
    assert torch.allclose(BinaryCrossEntropy(w, keras=True)(logits, y), loss, atol=1e-5)
    smoothed = BinaryCrossEntropy(label_smoothing=0.2)(logits, y)
    target = y * 0.8 + 0.1
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    assert torch.allclose(smoothed, expected)
