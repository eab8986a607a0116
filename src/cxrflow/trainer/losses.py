"""The Trainer's loss: cross-entropy on integer labels, with optional label smoothing; and the
loss a model that learned nothing reaches on the eval split."""

from __future__ import annotations

import keras
import numpy as np
import scipy.stats
from keras import ops

from cxrflow.config import PipelineConfig


def training_loss(config: PipelineConfig):
    """What the Trainer's `model.compile(loss=...)` gets for `config.label_smoothing`.

    0: Keras' plain sparse cross-entropy. Otherwise, with s = label_smoothing and K classes,
    the one-hot targets are softened to 1 - s + s/K for the true class and s/K for each other.
    Keras' sparse cross-entropy has no `label_smoothing`, so the integer labels are one-hot
    encoded first. The function returns one loss per example, unreduced: Keras then applies the
    class weights (as sample weights) and the batch mean itself, exactly as for the plain loss.
    """
    label_smoothing, num_classes = config.label_smoothing, len(config.classes)
    if not label_smoothing:
        return "sparse_categorical_crossentropy"

    def smoothed_crossentropy(y_true, y_pred):
        labels = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes)
        return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=label_smoothing)

    return smoothed_crossentropy


def no_skill_loss(class_counts, label_smoothing: float = 0.0) -> float:
    """The eval loss of the best constant prediction: the eval split's class mix for every film.

    `class_counts` are the eval split's films per class, in class order. Cross-entropy of a
    constant prediction c against targets q_i, averaged, is -sum_k mean(q)_k log c_k, lowest at
    c = mean(q), where it equals the entropy of mean(q). With label smoothing s over K classes,
    mean(q) = (1 - s) * mix + s / K. The eval loss is unweighted (class weights apply to
    training only), so this is the level a model's eval loss must beat to have learned anything.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError(f"no eval films to compute a no-skill loss from: {list(class_counts)}")
    mean_target = (1 - label_smoothing) * counts / counts.sum() + label_smoothing / len(counts)
    return float(scipy.stats.entropy(mean_target))  # natural log, as Keras' cross-entropy; 0 log 0 = 0
