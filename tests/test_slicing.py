"""TFMA slicing: per-source slices hold exactly that source's examples, with the right metrics."""

import numpy as np
import pytest

from cxrflow import features as fk
from cxrflow.metrics import metrics_from_probabilities
from cxrflow.stages.evaluator import eval_config, read_tfma_results, write_prediction_examples

CLASSES = ("covid", "bacterial", "normal")


def test_source_slices_separate_sources(tmp_path):
    import tensorflow_model_analysis as tfma

    rng = np.random.default_rng(3)
    n = 90
    labels = rng.integers(0, 3, n)
    # Source "kaggle" is predicted well, "ieee" badly: their slices must show it.
    sources = np.array(["kaggle"] * 45 + ["ieee"] * 45)
    logits = rng.normal(size=(n, 3)) + np.eye(3)[labels] * np.where(sources == "kaggle", 3.0, 0.2)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    extras = {fk.LABEL_KEY: [CLASSES[i] for i in labels], fk.SOURCE_KEY: list(sources),
              fk.VIEW_KEY: ["PA"] * n, fk.SEX_KEY: ["F"] * n, fk.AGE_GROUP_KEY: ["adult"] * n,
              fk.PATIENT_ID_KEY: [f"p{i}" for i in range(n)]}
    path = str(tmp_path / "predictions.tfrecord")
    write_prediction_examples(path, labels, probs.astype(np.float32), extras)
    tfma.run_model_analysis(eval_shared_model=None, eval_config=eval_config(3), data_location=path,
                            output_path=str(tmp_path / "tfma"))
    results = read_tfma_results(str(tmp_path / "tfma"), 3)
    assert {"overall", "source=kaggle", "source=ieee", "label=covid"} <= set(results)
    for source in ("kaggle", "ieee"):
        mask = sources == source
        expected = metrics_from_probabilities(labels[mask], probs[mask], CLASSES)
        got = results[f"source={source}"]
        assert got["confusion"].sum() == mask.sum()
        np.testing.assert_array_equal(got["confusion"], np.array(expected["confusion_matrix"]))
        for i, name in enumerate(CLASSES):
            assert got["auc"][i] == pytest.approx(expected["per_class"][name]["auc"], abs=0.01)
    assert results["source=kaggle"]["confusion"].trace() > results["source=ieee"]["confusion"].trace()
    covid = results["label=covid"]["confusion"]
    assert covid[0].sum() == (labels == 0).sum() and covid[1:].sum() == 0


def test_missing_metadata_slices_read_unknown():
    from cxrflow.stages.evaluator import _slice_name

    assert _slice_name(()) == "overall"
    assert _slice_name((("sex", ""),)) == "sex=(unknown)"
    assert _slice_name((("source", "kaggle"), ("view", "PA"))) == "source=kaggle;view=PA"
