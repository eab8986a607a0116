"""Operating point: the decision rule for one screening class, set on the eval split.

A model trained with balanced class weights calls the most probable class. A screening tool
wants a chosen sensitivity for one class (COVID-19 by default) and accepts more false alarms
for it. After training, the Trainer finds the smallest logit offset for that class that reaches
the target recall on the eval split and adds it to the output layer's bias. Every consumer
(TF Serving, the Evaluator, `cxrflow predict`, Grad-CAM) then makes the same decision from the
SavedModel alone, with no threshold file to lose. Adding an offset to one class's logit keeps
the order of that class's probabilities (its one-vs-rest AUC is unchanged); the probabilities
become those of a model whose prior favours the class by exp(offset).

The eval split is small (a few dozen films of a class), so the offset chosen there is noisy:
`max_offset` bounds what a single hard eval film can do to every other decision.
"""

from __future__ import annotations

import math

import numpy as np

HEAD_LAYER = "probabilities"  # the output Dense layer of every cxrflow model (trainer/models.py)
_MARGIN = 1e-4  # past the tie, so argmax picks the class even after float32 rounding


def needed_offsets(probs: np.ndarray, labels: np.ndarray, class_index: int) -> np.ndarray:
    """For each example of the class: the logit offset that would make the class its argmax
    (log of the best other class's probability over the class's own; <= 0 when already called)."""
    rows = np.clip(np.asarray(probs, dtype=np.float64)[np.asarray(labels) == class_index], 1e-12, 1.0)
    others = np.delete(rows, class_index, axis=1).max(axis=1)
    return np.log(others) - np.log(rows[:, class_index])


def shifted(probs: np.ndarray, class_index: int, offset: float) -> np.ndarray:
    """The probabilities after adding `offset` to the class's logit (what the new bias gives)."""
    p = np.asarray(probs, dtype=np.float64).copy()
    p[:, class_index] *= math.exp(offset)
    return p / p.sum(axis=1, keepdims=True)


def _recalls(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> list[float | None]:
    called = np.asarray(probs).argmax(axis=1)
    labels = np.asarray(labels)
    return [float(np.mean(called[labels == k] == k)) if np.any(labels == k) else None for k in range(n_classes)]


def choose(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], class_name: str, target_recall: float, max_offset: float
) -> dict:
    """The offset that reaches `target_recall` for `class_name` on these (eval) predictions.

    Returns what the Trainer records: the offset applied (0 when the target is already met or
    the class has no eval examples), whether `max_offset` capped it, and every class's eval
    recall before and after.
    """
    index = classes.index(class_name)
    need = np.sort(needed_offsets(probs, labels, index))
    n = len(need)
    result = {"class": class_name, "target_recall": target_recall, "max_offset": max_offset, "eval_examples": n}
    if n == 0:
        return {**result, "offset": 0.0, "capped": False, "note": f"no eval examples of {class_name}: not set"}
    must_call = max(1, math.ceil(target_recall * n - 1e-9))
    needed = float(need[must_call - 1])  # the offset that calls the must_call easiest films
    wanted = needed + _MARGIN if needed > 0 else 0.0
    offset = min(wanted, max_offset)
    return {
        **result,
        "offset": round(offset, 6),
        "capped": wanted > max_offset,
        "recall_before": dict(zip(classes, _recalls(probs, labels, len(classes)), strict=True)),
        "recall_after": dict(zip(classes, _recalls(shifted(probs, index, offset), labels, len(classes)), strict=True)),
    }


def apply(model, class_index: int, offset: float) -> None:
    """Adds `offset` to the class's logit: the output layer's bias, in place."""
    if offset == 0:
        return
    head = model.get_layer(HEAD_LAYER)
    bias = np.array(head.bias.numpy())
    bias[class_index] += offset
    head.bias.assign(bias)
