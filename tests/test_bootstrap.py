"""Patient-level bootstrap CIs: coverage of the point estimate, shrinkage, resampling unit."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cxrflow.metrics import metrics_from_probabilities
from cxrflow.report.bootstrap import bootstrap_ci

CLASSES = ("covid", "normal", "pneumonia")


def synthetic(n_patients: int, seed: int, accuracy: float = 0.8, max_images: int = 3):
    """Patients with 1..max_images images each, one label per patient, argmax right ~`accuracy`."""
    rng = np.random.default_rng(seed)
    labels, probs, pids = [], [], []
    for p in range(n_patients):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(int(rng.integers(1, max_images + 1))):
            predicted = label if rng.random() < accuracy else int(rng.integers(len(CLASSES)))
            row = rng.dirichlet(np.ones(len(CLASSES))) * 0.5
            row[predicted] += 1.0
            labels.append(label)
            probs.append(row / row.sum())
            pids.append(f"patient-{p}")
    return np.array(labels), np.array(probs), np.array(pids)


def width(ci: list) -> float:
    return ci[1] - ci[0]


def test_ci_contains_the_point_estimate_and_narrows_with_four_times_the_patients():
    small = synthetic(60, seed=1)
    # The same cohort four times over, as new patients: same point estimates, 4x the patients,
    # so the interval should shrink by about sqrt(4) = 2 (independent draws would make the
    # per-class comparison a coin flip for the rarer classes).
    large = (
        np.tile(small[0], 4),
        np.tile(small[1], (4, 1)),
        np.concatenate([np.char.add(small[2], f"-copy{k}") for k in range(4)]),
    )
    point = metrics_from_probabilities(small[0], small[1], CLASSES)["per_class"]
    ci_small = bootstrap_ci(*small, CLASSES)
    ci_large = bootstrap_ci(*large, CLASSES)
    for c in CLASSES:
        for metric in ("recall", "specificity"):
            for ci in (ci_small, ci_large):
                lo, hi = ci[c][metric]
                assert 0.0 <= lo <= point[c][metric] <= hi <= 1.0, (c, metric, lo, point[c][metric], hi)
            assert width(ci_large[c][metric]) < 0.7 * width(ci_small[c][metric]), (c, metric)


def test_resampling_is_by_patient_not_by_image():
    # 30 patients x 10 images; each patient's images are all right or all wrong (clustered):
    # per class, 7 of its 10 patients are classified right.
    labels, probs, pids = [], [], []
    for p in range(30):
        label = p % 3
        right = p // 3 < 7
        predicted = label if right else (label + 1) % 3
        for _ in range(10):
            row = np.full(3, 0.1)
            row[predicted] = 0.8
            labels.append(label)
            probs.append(row)
            pids.append(f"p{p}")
    labels, probs = np.array(labels), np.array(probs)
    by_patient = bootstrap_ci(labels, probs, pids, CLASSES, seed=3)
    by_image = bootstrap_ci(labels, probs, [f"img{i}" for i in range(len(labels))], CLASSES, seed=3)
    for c in CLASSES:
        # 10 perfectly correlated images carry the information of one: the honest interval is
        # ~sqrt(10) wider than the one that pretends the images are independent.
        assert width(by_patient[c]["recall"]) > 1.8 * width(by_image[c]["recall"]), c


def test_one_patient_gives_a_degenerate_interval_at_the_estimate():
    labels = np.array([0, 0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 2, 0]] * 0.9 + 0.03
    ci = bootstrap_ci(labels, probs, ["only"] * 5, CLASSES)
    point = metrics_from_probabilities(labels, probs, CLASSES)["per_class"]
    for c in CLASSES:
        for metric in ("recall", "specificity"):
            lo, hi = ci[c][metric]
            assert lo == pytest.approx(hi) == pytest.approx(point[c][metric])


def test_blank_patient_ids_count_as_separate_patients():
    labels, probs, _ = synthetic(40, seed=5, max_images=1)
    ci = bootstrap_ci(labels, probs, [""] * len(labels), CLASSES)
    assert all(width(ci[c]["recall"]) > 0 for c in CLASSES)  # pooled into one patient it would be 0


def test_seeded_locally_reproducible_and_leaves_global_state_alone():
    data = synthetic(50, seed=4)
    state = np.random.get_state()[1].copy()
    a = bootstrap_ci(*data, CLASSES, seed=7)
    assert bootstrap_ci(*data, CLASSES, seed=7) == a
    assert bootstrap_ci(*data, CLASSES, seed=8) != a
    assert np.array_equal(np.random.get_state()[1], state)


def test_unsupported_class_gets_no_recall_interval_and_json_friendly_values():
    labels = np.array([0, 0, 1, 1, 0, 1])
    probs = np.eye(3)[[0, 1, 1, 1, 0, 2]]
    ci = bootstrap_ci(labels, probs, [f"p{i}" for i in range(6)], CLASSES, n_boot=200)
    assert ci["pneumonia"]["recall"] == [None, None]
    lo, hi = ci["pneumonia"]["specificity"]
    assert isinstance(lo, float) and 0 <= lo <= hi <= 1


def test_empty_input_and_bad_shapes():
    empty = bootstrap_ci(np.zeros(0, int), np.zeros((0, 3)), [], CLASSES)
    assert empty["covid"] == {"recall": [None, None], "specificity": [None, None]}
    with pytest.raises(ValueError, match="probabilities"):
        bootstrap_ci([0, 1], np.zeros((2, 2)), ["a", "b"], CLASSES)
    with pytest.raises(ValueError):
        bootstrap_ci([0, 1], np.zeros((2, 3)), ["a"], CLASSES)


def test_a_thousand_resamples_of_a_thousand_images_is_fast():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1000)
    probs = rng.dirichlet(np.ones(3), 1000)
    pids = [f"p{i // 2}" for i in range(1000)]
    start = time.perf_counter()
    bootstrap_ci(labels, probs, pids, CLASSES, n_boot=1000)
    assert time.perf_counter() - start < 2.0
