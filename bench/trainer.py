"""trainer: steady-state training images/s through cxrflow's input pipeline + model.fit vs bare fit.

cxrflow side: trainer/data.training_dataset (TFRecords -> TFT graph -> cache -> shuffle ->
repeat -> batch -> augment -> prefetch) feeding build_cnn at image size 128.
Bare side: the same model (same builder, seed, optimizer, loss) fed by
`Dataset.from_tensor_slices` over images decoded once beforehand (same size, same batch).
Both run `epochs` epochs of `steps` steps; the first epoch (tracing, TFT decode into the cache)
is excluded and the median of the remaining epochs counts. Sides alternate `reps` times (the
side that goes first swaps every rep) and each keeps its best median; process CPU seconds per
epoch are recorded too. An extra cxrflow run with augmentation off, and both input
pipelines timed alone (no model), attribute the gap.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench import common, data
from cxrflow.config import Augmentation

IMAGE_SIZE = 128
BATCH = 16
STEPS = 12
EPOCHS = 5
CLASSES = ("covid", "bacterial", "normal")


def _callback():
    import keras  # lazy: run_all imports this; Keras only when the group runs

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self.cpu: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            self._cpu = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)
            self.cpu.append(time.process_time() - self._cpu)

    return EpochTimer()


def _fit(ds) -> tuple[list[float], list[float]]:
    import keras  # lazy (both): run_all imports this; Keras only when the group runs

    from cxrflow.trainer.models import build_cnn

    keras.utils.clear_session()
    model = build_cnn(IMAGE_SIZE, len(CLASSES), seed=0)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    timer = _callback()
    model.fit(ds, epochs=EPOCHS, steps_per_epoch=STEPS, callbacks=[timer], verbose=0)
    return timer.times, timer.cpu


def cxrflow_fit(pattern: str, layer, count: int, aug, cache_name: str):
    from cxrflow.trainer.data import training_dataset  # lazy: run_all imports this; TF only when the group runs

    cache_dir = common.fresh_dir(cache_name)
    ds = training_dataset(pattern, layer, CLASSES, count, IMAGE_SIZE, BATCH, aug, 42, cache_dir)
    return _fit(ds)


def decoded_tensors(pattern: str, layer):
    """All images and labels decoded once (numpy), for the bare side: decoding is not timed."""
    from cxrflow.trainer.data import transformed_dataset  # lazy: run_all imports this; TF only when the group runs

    xs, ys = [], []
    for x, y in transformed_dataset(pattern, layer, CLASSES).batch(64):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def bare_dataset(x, y):
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=42).repeat().batch(BATCH)
    return ds.prefetch(tf.data.AUTOTUNE)


def bare_fit(x, y):
    return _fit(bare_dataset(x, y))


def input_only(ds, epochs: int = 3) -> float:
    """Images/s of a dataset alone (no model): one warm-up epoch, then `epochs` timed ones."""
    it = iter(ds)
    for _ in range(STEPS):
        next(it)
    start = time.perf_counter()
    for _ in range(STEPS * epochs):
        next(it)
    return STEPS * BATCH * epochs / (time.perf_counter() - start)


def run(count: int, reps: int = 2) -> dict:
    import tensorflow_transform as tft  # lazy: run_all imports this; TFT only when the group runs

    common.quiet()
    root = data.ensure_set(count)
    examples = common.ensure_examples(root, f"examples_n{count}")
    xf_dir = common.ensure_transform(examples, IMAGE_SIZE, f"transform_{IMAGE_SIZE}_n{count}")
    layer = tft.TFTransformOutput(xf_dir).transform_features_layer()
    pattern = os.path.join(examples, "Split-*", "*.tfrecord")
    x, y = decoded_tensors(pattern, layer)
    n = len(x)
    per_epoch = STEPS * BATCH
    print(f"[trainer] {n} examples at {IMAGE_SIZE}px, {EPOCHS} epochs x {STEPS} steps x batch {BATCH}", flush=True)

    def steady(run):  # (wall, cpu) per epoch -> medians without the first epoch
        return common.median(run[0][1:]), common.median(run[1][1:])

    runs = {"bare": [], "cxrflow": []}
    for rep in range(reps):
        # Alternate which side goes first: the second fit of a pair ran measurably faster here.
        for side in ("bare", "cxrflow") if rep % 2 == 0 else ("cxrflow", "bare"):
            if side == "bare":
                runs[side].append(bare_fit(x, y))
            else:
                runs[side].append(cxrflow_fit(pattern, layer, n, Augmentation(), "trainer_cache"))
        print(
            f"[trainer] rep {rep} epoch wall s: "
            + ", ".join(f"{k} {[round(t, 2) for t in v[-1][0]]}" for k, v in runs.items()),
            flush=True,
        )
    wall = {k: min(steady(r)[0] for r in v) for k, v in runs.items()}
    cpu = {k: min(steady(r)[1] for r in v) for k, v in runs.items()}
    off = Augmentation(flip=False, brightness=0, contrast=0, gamma=0, translate=0, noise=0, rotation_deg=0, zoom=0)
    c_noaug = cxrflow_fit(pattern, layer, n, off, "trainer_cache_noaug")
    print(f"[trainer] cxrflow without augmentation: epochs {[round(t, 2) for t in c_noaug[0]]} s", flush=True)
    from cxrflow.trainer.data import training_dataset  # lazy: run_all imports this; TF only when the group runs

    cache = common.fresh_dir("trainer_cache_input")
    in_cxr = input_only(training_dataset(pattern, layer, CLASSES, n, IMAGE_SIZE, BATCH, Augmentation(), 42, cache))
    in_bare = input_only(bare_dataset(x, y))
    print(f"[trainer] input pipeline alone: cxrflow {in_cxr:.0f} images/s, bare {in_bare:.0f} images/s", flush=True)
    return {
        "trainer": common.result(
            per_epoch / wall["cxrflow"],
            per_epoch / wall["bare"],
            0.95,
            "images/s",
            True,
            image_size=IMAGE_SIZE,
            batch_size=BATCH,
            steps_per_epoch=STEPS,
            epochs=EPOCHS,
            examples=n,
            first_epoch_s_cxrflow=round(min(r[0][0] for r in runs["cxrflow"]), 3),
            first_epoch_s_bare=round(min(r[0][0] for r in runs["bare"]), 3),
            cpu_s_per_epoch_cxrflow=round(cpu["cxrflow"], 3),
            cpu_s_per_epoch_bare=round(cpu["bare"], 3),
            cpu_efficiency_ratio=round(cpu["bare"] / cpu["cxrflow"], 4),
            cxrflow_no_augmentation_images_per_s=round(per_epoch / steady(c_noaug)[0], 3),
            input_only_cxrflow_images_per_s=round(in_cxr, 1),
            input_only_bare_images_per_s=round(in_bare, 1),
        )
    }


def profile(count: int) -> None:
    """cProfile of one cxrflow training run (all epochs)."""
    import tensorflow_transform as tft  # lazy: run_all imports this; TFT only when the group runs

    common.quiet()
    examples = os.path.join(common.WORK_DIR, f"examples_n{count}_{common.code_version()}")
    xf_dir = os.path.join(common.WORK_DIR, f"transform_{IMAGE_SIZE}_n{count}_{common.code_version()}")
    layer = tft.TFTransformOutput(xf_dir).transform_features_layer()
    pattern = os.path.join(examples, "Split-*", "*.tfrecord")
    n = len(decoded_tensors(pattern, layer)[1])
    print(
        "[trainer] profiles:",
        common.profile("trainer_fit", cxrflow_fit, pattern, layer, n, Augmentation(), "trainer_cache_prof"),
    )
