"""Keras metrics the Trainer can monitor for early stopping and the best checkpoint."""

from __future__ import annotations

import keras
from keras import ops


class MacroRecall(keras.metrics.Metric):
    """Mean over classes of recall (argmax decisions), from sparse integer labels.

    Keras ships per-class recall only for binary or one-hot targets. A class absent from the
    batches seen is left out of the mean (as sklearn does with the labels present): counting it
    as recall 0 would bias the mean. Per-class
    recall does not change when every example of a class is weighted alike, so class weights
    (which Keras turns into sample weights) are ignored.
    """

    def __init__(self, num_classes: int, name: str = "macro_recall", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.hits = self.add_variable((num_classes,), initializer="zeros", name="hits")
        self.totals = self.add_variable((num_classes,), initializer="zeros", name="totals")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        labels = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes)
        called = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        self.hits.assign_add(ops.sum(labels * called, axis=0))
        self.totals.assign_add(ops.sum(labels, axis=0))

    def result(self):
        present = ops.cast(self.totals > 0, "float32")
        recall = ops.divide_no_nan(self.hits, self.totals)
        return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))

    def reset_state(self) -> None:
        self.hits.assign(ops.zeros((self.num_classes,)))
        self.totals.assign(ops.zeros((self.num_classes,)))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}
