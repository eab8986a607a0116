"""Trainer input: TFRecords -> (transformed image, label id) batches, augmented for training only.

The TFT graph runs once per image: decoded tensors are cached (in memory when they fit, else in
a cache file in the working dir), so later epochs cost no decoding. One repeated dataset and
`steps_per_epoch` keep a single iterator alive; a new iterator per epoch stalls TF 2.21's
autotuner for seconds at every epoch start.
"""

from __future__ import annotations

import math
import os

import tensorflow as tf

from cxrflow import features as fk
from cxrflow.config import Augmentation

MEMORY_CACHE_LIMIT_BYTES = 2 * 1024**3
DECODE_BATCH = 16


def label_table(classes: tuple[str, ...]) -> tf.lookup.StaticHashTable:
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(classes)), tf.range(len(classes), dtype=tf.int64)),
        default_value=-1,
    )


def transformed_dataset(pattern: str, tft_layer, classes: tuple[str, ...], extra_keys: tuple[str, ...] = ()):
    """Unbatched (image_xf, label_id[, extras]) from TFRecords, through the TFT layer."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")
    table = label_table(classes)
    spec = fk.raw_feature_spec((fk.IMAGE_KEY, fk.LABEL_KEY, *extra_keys))

    def transform(serialized):
        raw = tf.io.parse_example(serialized, spec)
        images = tft_layer({fk.IMAGE_KEY: raw[fk.IMAGE_KEY]})[fk.IMAGE_XF_KEY]
        out = (images, table.lookup(raw[fk.LABEL_KEY]))
        return out + tuple(raw[k] for k in extra_keys)

    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.batch(DECODE_BATCH).map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.unbatch()


def cache(ds, num_examples: int, image_size: int, cache_dir: str | None):
    """Caches decoded images in memory when they fit, else in a file under `cache_dir`."""
    if num_examples * image_size * image_size * 4 <= MEMORY_CACHE_LIMIT_BYTES or not cache_dir:
        return ds.cache()
    os.makedirs(cache_dir, exist_ok=True)
    return ds.cache(os.path.join(cache_dir, "decoded"))


def make_augmenter(aug: Augmentation, seed: int):
    """A function batch->batch applying the configured augmentations (training input only).

    Rotation and zoom are one affine warp (one ImageProjectiveTransformV3 op per batch rather
    than one per Keras layer): augmentation shares the CPU with the train step, and on 2 cores
    a second full-image resample per batch cost ~6% of training throughput (bench/).
    """
    import math

    rng = tf.random.Generator.from_seed(seed)
    max_angle = math.radians(aug.rotation_deg)

    def augment(images, labels):
        batch = tf.shape(images)[0]
        if aug.flip:
            flip = rng.uniform([batch, 1, 1, 1]) < 0.5
            images = tf.where(flip, tf.reverse(images, axis=[2]), images)
        if max_angle > 0 or aug.zoom > 0:
            images = _rotate_and_zoom(images, rng.uniform([batch], -max_angle, max_angle),
                                      1.0 + rng.uniform([batch], -aug.zoom, aug.zoom))
        if aug.brightness > 0:
            images = images + rng.uniform([batch, 1, 1, 1], -aug.brightness, aug.brightness)
        if aug.contrast > 0:
            factor = rng.uniform([batch, 1, 1, 1], 1.0 - aug.contrast, 1.0 + aug.contrast)
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = (images - mean) * factor + mean
        if aug.noise > 0:
            images = images + rng.normal(tf.shape(images), stddev=aug.noise)
        return images, labels

    return augment


def _rotate_and_zoom(images, angles, scales):
    """Rotates each image by `angles` (radians) and zooms by `scales` (>1 = in) about its centre."""
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # The transform maps each output pixel back to the input point it samples.
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zeros, zeros],
                          axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT",
    )


def training_dataset(pattern, tft_layer, classes, num_examples, image_size, batch_size, aug, seed, cache_dir=None):
    """Shuffled, repeated, augmented batches: iterate with steps_per_epoch."""
    ds = cache(transformed_dataset(pattern, tft_layer, classes), num_examples, image_size, cache_dir)
    ds = ds.shuffle(min(max(num_examples, 1), 2048), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(make_augmenter(aug, seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(pattern, tft_layer, classes, num_examples, image_size, batch_size, cache_dir=None):
    """Deterministic, un-augmented batches, repeated: iterate with validation_steps.

    Batching before repeating makes each pass exactly the same batches.
    """
    ds = cache(transformed_dataset(pattern, tft_layer, classes), num_examples, image_size, cache_dir)
    return ds.batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE)


def steps(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))
