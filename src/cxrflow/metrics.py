"""Clinical metrics from a confusion matrix.

Pure functions over numbers, so they are tested against scikit-learn directly and reused by
the Evaluator (on TFMA's confusion matrices), the CLI table and the report. The blessing lives
in stages/blessing.py (TFMA thresholds and a paired bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def metrics_from_confusion(
    confusion, classes: Sequence[str], auc_by_class_id: Mapping[int, float | None] | None = None
) -> dict:
    """The metrics.json contract from a confusion matrix (rows true, columns predicted).

    A class with no support gets recall 0 and is left out of the macro recall, so a slice that
    holds one class (say, source=kaggle) reports the recall of the classes it has.
    """
    cm = np.asarray(confusion, dtype=float)
    n = float(cm.sum())
    per_class = {}
    recalls = []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = n - tp - fn - fp
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        auc = (auc_by_class_id or {}).get(i)
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * precision * recall, precision + recall),
            "auc": None if auc is None or np.isnan(auc) else float(auc),
            "support": int(tp + fn),
        }
        if tp + fn > 0:
            recalls.append(recall)
    return {
        "classes": list(classes),
        "n": int(n),
        "accuracy": _ratio(np.trace(cm), n),
        "macro_recall": float(np.mean(recalls)) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def metrics_from_probabilities(labels, probabilities, classes: Sequence[str]) -> dict:
    """The same contract computed directly (argmax + scikit-learn AUC), without TFMA."""
    from sklearn.metrics import confusion_matrix, roc_auc_score  # lazy: `cxrflow --help` imports this module

    labels = np.asarray(labels)
    probs = np.asarray(probabilities)
    k = len(classes)
    cm = confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(k))) if len(labels) else np.zeros((k, k))
    auc = {}
    for i in range(k):
        positives = labels == i
        if 0 < positives.sum() < len(labels):
            auc[i] = float(roc_auc_score(positives, probs[:, i]))
    return metrics_from_confusion(cm, classes, auc)
