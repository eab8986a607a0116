"""The Trainer's loss with label smoothing, against cross-entropy worked out in numpy; the no-skill
eval loss against sklearn's log loss of a constant prediction."""

import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss

from cxrflow.config import PipelineConfig
from cxrflow.trainer.losses import no_skill_loss, training_loss


def _numpy_smoothed_ce(labels, probs, eps):
    k = probs.shape[1]
    targets = np.full(probs.shape, eps / k)
    targets[np.arange(len(labels)), labels] += 1 - eps
    return -(targets * np.log(probs)).sum(axis=1)


def test_no_smoothing_by_default_is_the_plain_sparse_loss():
    assert training_loss(PipelineConfig()) == "sparse_categorical_crossentropy"


def test_smoothed_loss_per_example_matches_numpy():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]], np.float32)
    labels = np.array([0, 2, 2])
    got = np.asarray(training_loss(PipelineConfig(label_smoothing=0.1))(labels.reshape(-1, 1), probs))
    want = _numpy_smoothed_ce(labels, probs, 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Smoothing charges a confident right answer: the loss is above the plain one for example 0.
    assert got[0] > -np.log(0.7)


def test_class_weights_weigh_each_example_as_with_the_plain_loss():
    """Through compile + evaluate with sample weights, as Keras applies `class_weight`."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(loss=training_loss(PipelineConfig(label_smoothing=0.2)))
    x = np.array([[0.5, -1.0], [1.5, 0.3], [-0.7, 0.9], [0.0, 2.0]], np.float32)
    y = np.array([0, 1, 2, 1])
    w = np.array([2.0, 0.5, 1.0, 3.0], np.float32)
    probs = model.predict(x, verbose=0).astype(np.float64)
    per_example = _numpy_smoothed_ce(y, probs, 0.2)
    got = model.evaluate(x, y, sample_weight=w, batch_size=4, verbose=0)
    # Keras' default reduction: the weighted sum over the batch size.
    np.testing.assert_allclose(got, (w * per_example).sum() / len(y), rtol=1e-4)


@pytest.mark.parametrize("counts", [[22, 37, 13], [14, 38, 19], [5, 5, 5], [0, 4, 9]])
def test_no_skill_loss_is_the_log_loss_of_always_predicting_the_eval_mix(counts):
    labels = np.repeat(np.arange(3), counts)
    mix = np.asarray(counts, float) / sum(counts)
    constant = np.tile(mix, (len(labels), 1))
    assert no_skill_loss(counts) == pytest.approx(log_loss(labels, constant, labels=[0, 1, 2]), rel=1e-9)
    # ...and no other constant prediction does better (so beating it means the model learned something)
    for other in ([1 / 3] * 3, [0.5, 0.3, 0.2], mix + [0.02, -0.01, -0.01]):
        other = np.clip(np.asarray(other), 1e-9, 1)
        assert log_loss(labels, np.tile(other / other.sum(), (len(labels), 1)), labels=[0, 1, 2]) >= no_skill_loss(
            counts) - 1e-12


def test_no_skill_loss_with_label_smoothing_matches_the_smoothed_loss_of_the_best_constant():
    counts, eps = [22, 37, 13], 0.1
    labels = np.repeat(np.arange(3), counts)
    best = (1 - eps) * np.asarray(counts, float) / sum(counts) + eps / 3
    want = _numpy_smoothed_ce(labels, np.tile(best, (len(labels), 1)), eps).mean()
    assert no_skill_loss(counts, eps) == pytest.approx(want, rel=1e-9)
    worse = _numpy_smoothed_ce(labels, np.tile(np.asarray(counts, float) / sum(counts), (len(labels), 1)), eps)
    assert worse.mean() > want  # the raw mix is not the best constant once targets are smoothed


def test_no_skill_loss_refuses_an_empty_split():
    with pytest.raises(ValueError, match="no eval films"):
        no_skill_loss([0, 0, 0])
