"""serving_p50_single / serving_p50_batch16: latency of the exported SavedModel vs a bare call.

cxrflow side: an untrained build_cnn(512) exported by trainer/export.export_serving_model with
a transform graph written by stages/transform.run_transform, loaded back with
tf.saved_model.load and called through its `serving_default` signature on encoded bytes.
Bare side: a tf.function over the same in-memory Keras model: decode_image -> rgb_to_grayscale
-> resize 512 -> /255 -> model, mapped over the request. A third function (bare + antialiased
resize, as cxrflow's graph does) is timed too, to attribute the gap. The functions are called
in rotation, request by request, so machine noise hits them alike. Requests cycle through one
image of each encoding (8-bit PNG, 16-bit PNG, RGB JPEG).
"""

from __future__ import annotations

import os
import time

from bench import common, data

IMAGE_SIZE = 512
CLASSES = ("covid", "bacterial", "normal")


def bare_function(model, antialias: bool):
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    def one(b):
        image = tf.io.decode_image(b, channels=3, expand_animations=False)
        image = tf.image.rgb_to_grayscale(image)
        return tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], antialias=antialias) / 255.0

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(images):
        x = tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32))
        return model(x, training=False)

    return lambda batch: serve(batch).numpy()


def export_model(examples_dir: str, count: int):
    """Untrained CNN + TFT graph -> SavedModel (fresh each run); returns (keras model, export dir)."""
    import tensorflow_transform as tft  # lazy (these three): run_all imports this; TF only when the group runs

    from cxrflow.trainer.export import export_serving_model
    from cxrflow.trainer.models import build_cnn

    xf_dir = common.ensure_transform(examples_dir, IMAGE_SIZE, f"transform_{IMAGE_SIZE}_n{count}")
    layer = tft.TFTransformOutput(xf_dir).transform_features_layer()
    model = build_cnn(IMAGE_SIZE, len(CLASSES), seed=0)
    export_dir = common.fresh_dir("serving_model")
    export_serving_model(model, layer, CLASSES, IMAGE_SIZE, "unit", 1, export_dir)
    return model, export_dir


def _pick_images(paths: list[str]) -> list[bytes]:
    picked = {}
    for p in paths:
        picked.setdefault(os.path.basename(p).split("_", 1)[1].rsplit(".", 1)[0], p)
    out = []
    for key in sorted(picked):
        with open(picked[key], "rb") as f:
            out.append(f.read())
    return out


def _measure(fns: dict, images: list[bytes], batch: int, iters: int, warmup: int = 2):
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    requests = [tf.constant([images[(i * batch + j) % len(images)] for j in range(batch)]) for i in range(iters)]
    for fn in fns.values():
        for r in requests[:warmup]:
            fn(r)
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in requests:
        for name, fn in fns.items():
            start, c0 = time.perf_counter(), time.process_time()
            fn(r)
            times[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - c0) * 1000)
    return times, cpu


def run(count: int, iters_single: int = 30, iters_batch: int = 8) -> dict:
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    common.quiet()
    root = data.ensure_set(count)
    examples = common.ensure_examples(root, f"examples_n{count}")
    model, export_dir = export_model(examples, count)
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    fns = {
        "cxrflow": lambda batch: signature(images=batch)["probabilities"].numpy(),
        "bare": bare_function(model, antialias=False),
        "bare_antialias": bare_function(model, antialias=True),
    }
    images = _pick_images(data.list_set(root))
    out = {}
    for name, batch, iters in (("serving_p50_single", 1, iters_single), ("serving_p50_batch16", 16, iters_batch)):
        times, cpu = _measure(fns, images, batch, iters)
        cpu50 = {k: common.percentile(v, 50) for k, v in cpu.items()}
        p50 = {k: common.percentile(v, 50) for k, v in times.items()}
        p99 = {k: common.percentile(v, 99) for k, v in times.items()}
        print(
            f"[serving] batch {batch}: p50 ms "
            + ", ".join(f"{k} {v:.1f}" for k, v in p50.items())
            + " | p99 ms "
            + ", ".join(f"{k} {v:.1f}" for k, v in p99.items()),
            flush=True,
        )
        out[name] = common.result(
            p50["cxrflow"],
            p50["bare"],
            1.1,
            "ms",
            False,
            batch=batch,
            requests=iters,
            p99=round(p99["cxrflow"], 3),
            baseline_p99=round(p99["bare"], 3),
            p99_ratio=round(p99["cxrflow"] / p99["bare"], 4),
            bare_antialias_p50=round(p50["bare_antialias"], 3),
            ratio_vs_bare_antialias=round(p50["cxrflow"] / p50["bare_antialias"], 4),
            cpu_ms_p50=round(cpu50["cxrflow"], 3),
            baseline_cpu_ms_p50=round(cpu50["bare"], 3),
            cpu_p50_ratio=round(cpu50["cxrflow"] / cpu50["bare"], 4),
        )
    return out


def profile(count: int, iters: int = 10) -> None:
    """cProfile of cxrflow's signature calls (single image): shows where Python time goes."""
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    common.quiet()
    export_dir = os.path.join(common.WORK_DIR, "serving_model")
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    images = _pick_images(data.list_set(data.ensure_set(count)))
    batch = tf.constant(images[:1])

    def calls():
        for _ in range(iters):
            signature(images=batch)["probabilities"].numpy()

    calls()
    print("[serving] profiles:", common.profile("serving_single", calls))
