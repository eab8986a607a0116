"""The Trainer's loss with label smoothing, against cross-entropy worked out in numpy."""

import keras
import numpy as np

from cxrflow.config import PipelineConfig
from cxrflow.trainer.losses import training_loss


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
