"""The bare baseline of the quality benchmark: the plain Keras script a user would write.

It reads the same ExampleGen split TFRecords as cxrflow (so the same patients and images) and
does what a tutorial does: tf.data decode -> grayscale -> resize (stretch) to the input size ->
[0,1], four conv blocks, class weights, light augmentation (rotation, zoom, translation, as Keras
layers), Adam, early stopping on eval loss with the best weights restored. Nothing of cxrflow's
Transform, Trainer or Evaluator is used. Every random op takes the seed explicitly (no global
seeding), so the baseline is as repeatable as TF on CPU allows.
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np

from cxrflow import features as fk


def _dataset(examples_dir: str, split: str, classes, image_size: int):
    import tensorflow as tf  # lazy: bench.quality imports this; TF only when the baseline trains

    files = sorted(glob.glob(os.path.join(examples_dir, f"Split-{split}", "*.tfrecord")))
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in (fk.IMAGE_KEY, fk.LABEL_KEY)}
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(classes)), tf.range(len(classes), dtype=tf.int64)), -1)

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(ex[fk.IMAGE_KEY], channels=1, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [image_size, image_size])
        return image, table.lookup(ex[fk.LABEL_KEY])

    return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE).cache()


def _model(image_size: int, num_classes: int, seed: int):
    import keras  # lazy: bench.quality imports this; Keras only when the baseline trains

    layers = keras.layers
    init = keras.initializers
    x = inputs = keras.Input((image_size, image_size, 1))
    x = layers.RandomRotation(0.03, seed=seed)(x)  # light: +-11 degrees
    x = layers.RandomZoom(0.1, seed=seed + 1)(x)
    x = layers.RandomTranslation(0.05, 0.05, seed=seed + 2)(x)
    for i, filters in enumerate((32, 64, 128, 256)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          kernel_initializer=init.GlorotUniform(seed=seed + 10 + i))(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(128, activation="relu", kernel_initializer=init.GlorotUniform(seed=seed + 20))(x)
    x = layers.Dropout(0.3, seed=seed + 21)(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=init.GlorotUniform(seed=seed + 22))(x)
    return keras.Model(inputs, outputs)


def train_and_predict(examples_dir: str, classes, image_size: int, epochs: int, seed: int,
                      patience: int = 5, batch_size: int = 16) -> dict:
    """Trains on train (early stopping on eval) and returns test labels, probabilities, seconds."""
    import keras  # lazy (both): bench.quality imports this; Keras and sklearn only when the baseline trains
    from sklearn.utils.class_weight import compute_class_weight

    train = _dataset(examples_dir, "train", classes, image_size)
    labels = np.array([int(y) for _, y in train])
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    model = _model(image_size, len(classes), seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    fit = model.fit(
        train.shuffle(len(labels), seed=seed).batch(batch_size),
        validation_data=_dataset(examples_dir, "eval", classes, image_size).batch(batch_size),
        epochs=epochs, class_weight={int(c): float(w) for c, w in zip(present, weights, strict=True)},
        callbacks=[keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)], verbose=0,
    )
    train_s = time.perf_counter() - start
    test = _dataset(examples_dir, "test", classes, image_size).batch(32)
    probs = model.predict(test.map(lambda x, y: x), verbose=0)
    test_labels = np.array([int(y) for _, y in test.unbatch()])
    keras.backend.clear_session()
    return {"labels": test_labels, "probabilities": probs, "train_s": train_s, "epochs_run": len(fit.history["loss"])}
