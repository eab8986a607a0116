"""Patient-level bootstrap confidence intervals of per-class sensitivity and specificity.

Images of one patient are not independent (same lungs, same scanner, often the same label), so
resampling images would understate the uncertainty. Each resample draws PATIENTS with
replacement and every image of a drawn patient comes along.

Vectorised: the per-patient confusion counts are reduced once (patients x classes), each
resample is a row of patient multiplicities (how often each patient was drawn), and a single
matrix product gives the counts of every resample at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _per_patient_counts(
    labels: np.ndarray, predicted: np.ndarray, patient_index: np.ndarray, n_patients: int, k: int
) -> np.ndarray:
    """(4, patients, classes): true positives, positives, false positives, negatives per patient."""
    counts = np.zeros((4, n_patients, k))
    onehot_true = np.eye(k, dtype=float)[labels]
    onehot_pred = np.eye(k, dtype=float)[predicted]
    for row, values in enumerate(
        (onehot_true * onehot_pred, onehot_true, (1 - onehot_true) * onehot_pred, 1 - onehot_true)
    ):
        np.add.at(counts[row], patient_index, values)
    return counts


def _interval(values: np.ndarray, alpha: float) -> list[list[float] | list[None]]:
    """Percentile interval per column; [None, None] where no resample defined the metric."""
    out = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            out.append([None, None])
        else:
            lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
            out.append([float(lo), float(hi)])
    return out


def bootstrap_ci(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[Sequence[float]] | np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, list]]:
    """{class: {"recall": [lo, hi], "specificity": [lo, hi]}}, percentile CIs at level 1 - alpha.

    The predicted class is the argmax of `probabilities`, as in metrics.json. A class that has no
    positives (or no negatives) in every resample gets [None, None] for that metric. Resamples
    where a class happens to have no positives are left out of that class's recall interval
    rather than counted as 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=float)
    k = len(classes)
    if labels.ndim != 1 or probs.shape != (len(labels), k) or len(patient_ids) != len(labels):
        raise ValueError(
            f"expected labels (n,), probabilities (n, {k}) and n patient ids; got {labels.shape}, "
            f"{probs.shape} and {len(patient_ids)}"
        )
    if len(labels) == 0:
        return {c: {"recall": [None, None], "specificity": [None, None]} for c in classes}
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")

    ids = np.asarray(patient_ids).astype(str)
    # An image without a patient id is its own patient: pooling all of them into one "" patient
    # would make them move together and widen the interval for no reason.
    blank = ids == ""
    ids = np.where(blank, np.char.add("\0image:", np.arange(len(ids)).astype(str)), ids)
    _, patient_index = np.unique(ids, return_inverse=True)
    n_patients = int(patient_index.max()) + 1
    tp, pos, fp, neg = _per_patient_counts(labels, probs.argmax(axis=1), patient_index, n_patients, k)

    # A local Generator: the result depends on `seed` only, and no global state is touched.
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    # multiplicity[b, p] = how often patient p was drawn in resample b (one bincount for all rows).
    offsets = (np.arange(n_boot) * n_patients)[:, None]
    multiplicity = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_patients)
    multiplicity = multiplicity.reshape(n_boot, n_patients).astype(float)

    b_tp, b_pos, b_fp, b_neg = (multiplicity @ m for m in (tp, pos, fp, neg))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(b_pos > 0, b_tp / b_pos, np.nan)
        specificity = np.where(b_neg > 0, (b_neg - b_fp) / b_neg, np.nan)
    rec_ci, spec_ci = _interval(recall, alpha), _interval(specificity, alpha)
    return {c: {"recall": rec_ci[i], "specificity": spec_ci[i]} for i, c in enumerate(classes)}
