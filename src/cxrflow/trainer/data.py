"""Trainer input: TFRecords -> (transformed image, label id) batches, augmented for training only.

The TFT graph runs once per image: decoded tensors are cached (in memory when they fit, else in
a cache file in the working dir), so later epochs cost no decoding. One repeated dataset and
`steps_per_epoch` keep a single iterator alive; a new iterator per epoch stalls TF 2.21's
autotuner for seconds at every epoch start.
"""

from __future__ import annotations

import hashlib
import math
import os

import tensorflow as tf

from cxrflow import features as fk
from cxrflow.config import Augmentation

MEMORY_CACHE_LIMIT_BYTES = 2 * 1024**3
DECODE_BATCH = 16
CANONICAL_BUCKET_BYTES = 512 * 1024**2  # records sorted in memory at once (canonical_order)


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
    """A function (images, labels, step) -> (images, labels) applying the configured augmentations
    to training batch number `step` (training input only).

    Random numbers are stateless, drawn from (seed, step): a shared stateful generator inside a
    parallel map hands its numbers to whichever batch asks first, so two runs with one seed
    augmented differently; and under op determinism it would force the map to run serially.
    Rotation, zoom and translation are one affine warp (one ImageProjectiveTransformV3 op per
    batch rather than one per Keras layer): on 2 cores a second full-image resample per batch
    cost ~6% of training throughput (bench/).
    """
    max_angle = math.radians(aug.rotation_deg)

    def augment(images, labels, step=0):
        batch = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]), num=8)

        def uniform(i, shape, low=0.0, high=1.0):
            return tf.random.stateless_uniform(shape, seeds[i], low, high)

        if aug.flip:
            flip = uniform(0, [batch, 1, 1, 1]) < 0.5
            images = tf.where(flip, tf.reverse(images, axis=[2]), images)
        if aug.gamma > 0:
            # A per-image intensity curve, applied over the image's own range so it works for unit
            # and zscore input. Unlike brightness and contrast it is not linear, so per-image
            # standardisation (the CNN's first layer) cannot undo it.
            images = _gamma(images, tf.exp(uniform(1, [batch, 1, 1, 1], -aug.gamma, aug.gamma)))
        if max_angle > 0 or aug.zoom > 0 or aug.translate > 0:
            shifts = uniform(2, [batch, 2], -aug.translate, aug.translate) * tf.cast(tf.shape(images)[1:3], tf.float32)
            images = _rotate_and_zoom(images, uniform(3, [batch], -max_angle, max_angle),
                                      1.0 + uniform(4, [batch], -aug.zoom, aug.zoom), shifts)
        if aug.brightness > 0:
            images = images + uniform(5, [batch, 1, 1, 1], -aug.brightness, aug.brightness)
        if aug.contrast > 0:
            factor = uniform(6, [batch, 1, 1, 1], 1.0 - aug.contrast, 1.0 + aug.contrast)
            mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
            images = (images - mean) * factor + mean
        if aug.noise > 0:
            images = images + tf.random.stateless_normal(tf.shape(images), seeds[7], stddev=aug.noise)
        return images, labels

    return augment


def _gamma(images, gammas):
    """Maps each image's [min, max] onto itself through x ** gamma (per image)."""
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    span = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True) - low
    unit = tf.math.divide_no_nan(images - low, span)
    return low + span * tf.pow(tf.clip_by_value(unit, 0.0, 1.0), gammas)


def _rotate_and_zoom(images, angles, scales, shifts=None):
    """Rotates each image by `angles` (radians), zooms by `scales` (>1 = in) about its centre and
    moves it by `shifts` ([batch, 2] pixels, y then x)."""
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # The transform maps each output pixel back to the input point it samples.
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    zeros = tf.zeros_like(cos)
    dy, dx = (zeros, zeros) if shifts is None else (-shifts[:, 0], -shifts[:, 1])
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy + dx, sin, cos, cy - sin * cx - cos * cy + dy,
                           zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT",
    )


def training_dataset(pattern, tft_layer, classes, num_examples, image_size, batch_size, aug, seed, cache_dir=None,
                     deterministic=True):
    """Shuffled, repeated, augmented batches: iterate with steps_per_epoch.

    With `deterministic`, every parallel stage keeps its input order, so a seed gives the same
    batches (given the same file order: see `canonical_order`).
    """
    ds = cache(transformed_dataset(pattern, tft_layer, classes), num_examples, image_size, cache_dir)
    ds = ds.shuffle(min(max(num_examples, 1), 2048), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=False).enumerate()
    augment = make_augmenter(aug, seed)
    ds = ds.map(lambda step, batch: augment(*batch, step), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def canonical_order(pattern: str, out_dir: str, bucket_bytes: int = CANONICAL_BUCKET_BYTES) -> str:
    """Copies the records of `pattern` into `out_dir` sorted by their SHA-256; returns the new pattern.

    Beam writes a split's records in whatever order its workers finish, so two ingests of the
    same files give the same examples in different orders, and a seeded shuffle of them gives
    different batches. Sorting by content makes the order a function of the data alone. Sets
    larger than `bucket_bytes` are first spread over hash buckets, each sorted in memory.
    """
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")
    total = sum(tf.io.gfile.stat(f).length for f in files)
    buckets = max(1, math.ceil(total / bucket_bytes))
    os.makedirs(out_dir, exist_ok=True)
    records = tf.data.TFRecordDataset(files).as_numpy_iterator()
    if buckets == 1:
        parts = [records]
    else:
        spill = [os.path.join(out_dir, f"bucket-{b:05d}.tmp") for b in range(buckets)]
        writers = [tf.io.TFRecordWriter(path) for path in spill]
        for record in records:
            writers[int.from_bytes(hashlib.sha256(record).digest()[:8], "big") % buckets].write(record)
        for writer in writers:
            writer.close()
        parts = [tf.data.TFRecordDataset(path).as_numpy_iterator() for path in spill]
    for b, part in enumerate(parts):
        with tf.io.TFRecordWriter(os.path.join(out_dir, f"sorted-{b:05d}.tfrecord")) as writer:
            for record in sorted(part, key=lambda r: hashlib.sha256(r).digest()):
                writer.write(record)
    for b in range(buckets if buckets > 1 else 0):
        os.remove(os.path.join(out_dir, f"bucket-{b:05d}.tmp"))
    return os.path.join(out_dir, "sorted-*.tfrecord")


def evaluation_dataset(pattern, tft_layer, classes, num_examples, image_size, batch_size, cache_dir=None):
    """Deterministic, un-augmented batches, repeated: iterate with validation_steps.

    Batching before repeating makes each pass exactly the same batches.
    """
    ds = cache(transformed_dataset(pattern, tft_layer, classes), num_examples, image_size, cache_dir)
    return ds.batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE)


def steps(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))
