"""The blessing: TFMA thresholds (served model as baseline) and the paired patient bootstrap.

Every expected number is recomputed with scikit-learn or numpy from the predictions."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, recall_score

from cxrflow.config import PipelineConfig
from cxrflow.stages import blessing

CLASSES = ("covid", "bacterial", "normal")


def _test_set(per_class=15, films_per_patient=1):
    labels = np.repeat(np.arange(3), per_class)
    patients = [f"p{i // films_per_patient}" for i in range(len(labels))]
    return labels, patients


def _probs(predicted, k=3):
    """Confident one-hot-ish probabilities whose argmax is `predicted`."""
    p = np.full((len(predicted), k), 0.1)
    p[np.arange(len(predicted)), predicted] = 0.8
    return p


def test_argmax_recall_from_tfma_matrix_entries_matches_scikit_learn():
    from tensorflow_model_analysis.metrics.multi_class_confusion_matrix_metrics import MatrixEntryKey

    from cxrflow.stages.tfma_metrics import recall_from_matrix

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 2, 2, 2, 0, 2])
    cm = confusion_matrix(labels, pred)
    entries = {MatrixEntryKey(a, p): float(cm[a, p]) for a in range(3) for p in range(3) if cm[a, p]}
    assert recall_from_matrix(entries) == pytest.approx(recall_score(labels, pred, average="macro"))
    for c in range(3):
        assert recall_from_matrix(entries, c) == pytest.approx(recall_score(labels == c, pred == c))
    assert np.isnan(recall_from_matrix(entries, 5))  # no film of that class: undefined, not 0


def test_paired_bootstrap_drops_match_a_direct_recount():
    labels, patients = _test_set(per_class=12, films_per_patient=2)
    rng = np.random.default_rng(3)
    cand = np.where(rng.random(len(labels)) < 0.3, (labels + 1) % 3, labels)
    served = np.where(rng.random(len(labels)) < 0.1, (labels + 2) % 3, labels)
    drops = blessing.paired_bootstrap_drops(labels, _probs(cand), _probs(served), patients, [None, 0], n_boot=50,
                                            seed=11)
    # Recount five resamples by expanding the drawn patients into their films (same draws).
    ids, index = np.unique(patients, return_inverse=True)
    draws = np.random.default_rng(11).integers(0, len(ids), size=(50, len(ids)))
    for b in range(5):
        films = np.concatenate([np.flatnonzero(index == p) for p in draws[b]])
        y = labels[films]
        present = sorted(set(y.tolist()))
        macro = (recall_score(y, served[films], labels=present, average="macro")
                 - recall_score(y, cand[films], labels=present, average="macro"))
        assert drops[b, 0] == pytest.approx(macro)
        if (y == 0).any():
            covid = recall_score(y == 0, served[films] == 0) - recall_score(y == 0, cand[films] == 0)
            assert drops[b, 1] == pytest.approx(covid)
        else:
            assert np.isnan(drops[b, 1])


def test_tfma_thresholds_with_the_served_model_as_baseline(tmp_path):
    """A clearly worse candidate: TFMA's values equal scikit-learn's, the covid floor fails for
    the candidate only, and both the point and the bootstrap change rules reject it."""
    labels, patients = _test_set()
    served = labels.copy()
    served[[15, 30]] = 0  # one bacterial, one normal film called covid
    cand = labels.copy()
    cand[:9] = 2  # 9 of 15 covid films missed
    config = PipelineConfig(min_recall=(("covid", 0.9),), min_macro_recall=0.5, max_regression=0.02)
    result = blessing.decide(config, labels, _probs(cand), patients, str(tmp_path), _probs(served),
                             {"uri": "/serving/cxrflow/4", "version": 4})
    values = result["tfma"]["values"]
    assert values["recall:covid"]["candidate"] == pytest.approx(recall_score(labels == 0, cand == 0))  # 6/15
    assert values["recall:covid"]["baseline"] == pytest.approx(1.0)
    assert values["macro_recall"]["candidate"] == pytest.approx(recall_score(labels, cand, average="macro"))
    assert values["macro_recall"]["baseline"] == pytest.approx(recall_score(labels, served, average="macro"))
    value_failures = {f["metric"] for f in result["tfma"]["failures"] if not f["change"]}
    assert value_failures == {"recall:covid"}  # 0.4 < 0.9; macro 0.8 >= 0.5
    covid = result["comparison"]["recall:covid"]
    assert covid["drop"] == pytest.approx(0.6)
    assert covid["drop_one_sided_95"][0] > 0.02 and not covid["passed_point"] and not covid["passed_bootstrap"]
    assert result["blessed"] is False and result["had_baseline"] is True
    assert result["baseline"] == {"uri": "/serving/cxrflow/4", "version": 4}
    assert any(r.startswith("recall:covid = 0.400 < 0.900") for r in result["reasons"])
    assert (tmp_path / blessing.BLESSING_FILE).exists() and (tmp_path / blessing.VALIDATION_DIR).is_dir()


def test_one_film_flips_the_point_rule_but_not_the_bootstrap(tmp_path):
    """Issue 13.2: with 15 films per class one film moves recall by 0.067 > 0.02."""
    labels, patients = _test_set()
    served = labels.copy()
    cand = labels.copy()
    cand[0] = 1  # one covid film missed
    config = PipelineConfig(min_recall=(("covid", 0.9),), min_macro_recall=0.8, max_regression=0.02)
    result = blessing.decide(config, labels, _probs(cand), patients, str(tmp_path), _probs(served))
    covid = result["comparison"]["recall:covid"]
    assert covid["drop"] == pytest.approx(1 / 15)
    assert covid["passed_point"] is False  # TFMA's change threshold on the point estimates
    assert {f["metric"] for f in result["tfma"]["failures"]} == {"recall:covid", "macro_recall"}
    assert covid["passed_bootstrap"] is True and covid["drop_one_sided_95"][0] <= 0.02
    assert result["rule"] == "bootstrap" and result["blessed"] is True
    assert result["comparison"]["macro_recall"]["passed"] is True
    # The same numbers judged by the point rule would have rejected it.
    assert not all(c["passed_point"] for c in result["comparison"].values())


def test_a_gated_class_missing_from_the_test_split_is_not_blessed(tmp_path):
    """Its recall is undefined (NaN), and TFMA lets NaN through a lower bound."""
    labels = np.repeat([1, 2], 10)  # no covid film
    config = PipelineConfig(min_recall=(("covid", 0.9),), min_macro_recall=0.5)
    result = blessing.decide(config, labels, _probs(labels), [f"p{i}" for i in range(20)], str(tmp_path))
    assert result["blessed"] is False and result["had_baseline"] is False
    assert any(r.startswith("recall:covid: the test split holds no film") for r in result["reasons"])
    assert "macro_recall = 1.000 >= 0.500" in result["reasons"]


def test_films_without_a_patient_id_are_resampled_one_by_one():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    cand, served = labels.copy(), labels.copy()
    cand[0] = 1
    blank = blessing.paired_bootstrap_drops(labels, _probs(cand, 2), _probs(served, 2), [""] * 8, [0], n_boot=400)
    own = blessing.paired_bootstrap_drops(labels, _probs(cand, 2), _probs(served, 2), [f"p{i}" for i in range(8)],
                                          [0], n_boot=400)
    np.testing.assert_array_equal(np.nan_to_num(blank), np.nan_to_num(own))  # not one pooled "" patient
    assert np.nanstd(own[:, 0]) > 0
