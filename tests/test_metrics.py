import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from cxrflow.config import PipelineConfig
from cxrflow.metrics import blessing_decision, metrics_from_confusion, metrics_from_probabilities

CLASSES = ("covid", "bacterial", "normal")


@pytest.fixture
def hand_made():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + np.eye(3)[labels] * 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_metrics_match_scikit_learn_specificity_included(hand_made):
    labels, probs = hand_made
    m = metrics_from_probabilities(labels, probs, CLASSES)
    pred = probs.argmax(1)
    for i, name in enumerate(CLASSES):
        c = m["per_class"][name]
        assert c["precision"] == pytest.approx(precision_score(labels, pred, labels=[i], average="macro"))
        assert c["recall"] == pytest.approx(recall_score(labels, pred, labels=[i], average="macro"))
        assert c["f1"] == pytest.approx(f1_score(labels, pred, labels=[i], average="macro"))
        # specificity = recall of the negative class in a one-vs-rest view
        assert c["specificity"] == pytest.approx(recall_score(labels != i, pred != i))
        assert c["auc"] == pytest.approx(roc_auc_score(labels == i, probs[:, i]))
    assert m["macro_recall"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["accuracy"] == pytest.approx((pred == labels).mean())
    assert np.array(m["confusion_matrix"]).sum() == 200


def test_tfma_confusion_path_equals_direct_path(hand_made):
    labels, probs = hand_made
    direct = metrics_from_probabilities(labels, probs, CLASSES)
    via_cm = metrics_from_confusion(direct["confusion_matrix"], CLASSES,
                                    {i: direct["per_class"][c]["auc"] for i, c in enumerate(CLASSES)})
    assert via_cm == direct


def _metrics(covid_recall, macro):
    return {"macro_recall": macro, "per_class": {"covid": {"recall": covid_recall}}}


def test_blessing_thresholds_and_regression_gate():
    config = PipelineConfig(min_recall=(("covid", 0.9),), min_macro_recall=0.8, max_regression=0.02)
    first = blessing_decision(_metrics(0.95, 0.85), config, None)
    assert first["blessed"] and any("first push" in r for r in first["reasons"])
    assert not blessing_decision(_metrics(0.85, 0.85), config, None)["blessed"]
    regressed = blessing_decision(_metrics(0.92, 0.85), config, _metrics(0.97, 0.85))
    assert not regressed["blessed"]
    improved = blessing_decision(_metrics(0.97, 0.9), config, _metrics(0.95, 0.85))
    assert improved["blessed"]
