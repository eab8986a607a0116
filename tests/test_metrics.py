"""metrics.py against scikit-learn: every number is recomputed there, never from our own output."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from cxrflow.metrics import metrics_from_confusion, metrics_from_probabilities

CLASSES = ("covid", "bacterial", "normal")


@pytest.fixture
def hand_made():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + np.eye(3)[labels] * 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def _check_against_sklearn(m: dict, labels, pred, probs=None):
    for i, name in enumerate(CLASSES):
        c = m["per_class"][name]
        assert c["precision"] == pytest.approx(precision_score(labels, pred, labels=[i], average="macro"))
        assert c["recall"] == pytest.approx(recall_score(labels, pred, labels=[i], average="macro"))
        assert c["f1"] == pytest.approx(f1_score(labels, pred, labels=[i], average="macro"))
        # specificity = recall of the negative class in a one-vs-rest view
        assert c["specificity"] == pytest.approx(recall_score(labels != i, pred != i))
        assert c["support"] == int((labels == i).sum())
        if probs is not None:
            assert c["auc"] == pytest.approx(roc_auc_score(labels == i, probs[:, i]))
    assert m["macro_recall"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["accuracy"] == pytest.approx((pred == labels).mean())
    assert m["confusion_matrix"] == confusion_matrix(labels, pred, labels=[0, 1, 2]).tolist()


def test_metrics_from_probabilities_match_scikit_learn_specificity_included(hand_made):
    labels, probs = hand_made
    _check_against_sklearn(metrics_from_probabilities(labels, probs, CLASSES), labels, probs.argmax(1), probs)


def test_metrics_from_a_confusion_matrix_match_scikit_learn(hand_made):
    """The Evaluator's path: TFMA hands over a confusion matrix (here sklearn's), not predictions."""
    labels, probs = hand_made
    pred = probs.argmax(1)
    auc = {i: roc_auc_score(labels == i, probs[:, i]) for i in range(3)}
    m = metrics_from_confusion(confusion_matrix(labels, pred, labels=[0, 1, 2]), CLASSES, auc)
    _check_against_sklearn(m, labels, pred, probs)


def test_a_class_without_support_is_left_out_of_macro_recall():
    """A slice holding two classes: the absent class's recall is 0 but does not drag the mean."""
    labels = np.array([0, 0, 0, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 2, 2, 0, 2])
    m = metrics_from_confusion(confusion_matrix(labels, pred, labels=[0, 1, 2]), CLASSES)
    assert m["per_class"]["bacterial"]["support"] == 0
    # sklearn's macro over the classes present: (2/3 + 3/4) / 2
    assert m["macro_recall"] == pytest.approx(recall_score(labels, pred, labels=[0, 2], average="macro"))
    assert m["macro_recall"] == pytest.approx((2 / 3 + 3 / 4) / 2)
