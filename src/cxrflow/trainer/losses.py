"""The Trainer's loss: cross-entropy on integer labels, with optional label smoothing."""

from __future__ import annotations

import keras
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
