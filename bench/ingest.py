"""Ingest benchmarks: ExampleGen (+ the TFT graph applied to its examples) against bare loops.

- ingest_only: images/s of cxrflow's ExampleGen vs a bare loop that reads and sha256-hashes
  the same files (the least any ingest must do: touch every byte once).
- ingest_rerun_cached: the same, for a re-ingest of unchanged files with `--ingest-cache`
  (no pixel decoding: the case of scheduled retraining on a mostly unchanged dataset).
- ingest_transform: images/s of ExampleGen + applying the TFT graph (decode -> gray -> resize
  512 -> normalise, through trainer/data.transformed_dataset) vs bare tf.data (read file ->
  decode_image -> rgb_to_grayscale -> resize 512 -> /255, AUTOTUNE).
- disk_per_1000_images: bytes the intermediate artifacts take (value only, no target).

Files are read once before timing so both sides see a warm page cache; each side runs
`reps` times and the best run counts (noise on a shared machine only ever slows a run down).
Process CPU seconds are recorded too (`cpu_*` fields): less sensitive to other users' load.
"""

from __future__ import annotations

import hashlib
import os

from bench import common, data
from cxrflow import features as fk

IMAGE_SIZE = 512


def bare_hash(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(hashlib.sha256(f.read()).digest())
    return total


def bare_tfdata(paths: list[str], antialias: bool = False) -> int:
    import tensorflow as tf

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.rgb_to_grayscale(image)
        image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], antialias=antialias)
        return image / 255.0

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    n = 0
    for batch in ds.batch(16).prefetch(tf.data.AUTOTUNE):
        n += int(batch.shape[0])
    return n


def run_example_gen(root: str, out_name: str, ingest_cache: str = "") -> str:
    from cxrflow.stages.example_gen import run_example_gen as eg

    out = common.fresh_dir(out_name)
    eg(common.config_for(root, ingest_cache=ingest_cache), out)
    return out


def apply_transform(examples_dir: str, transform_dir: str) -> int:
    """Every example of every split through the TFT graph, as the Trainer's input does it."""
    import tensorflow_transform as tft

    from cxrflow.config import DEFAULT_CLASSES
    from cxrflow.trainer.data import transformed_dataset

    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
    n = 0
    for split in fk.SPLITS:
        pattern = os.path.join(examples_dir, f"Split-{split}", "*.tfrecord")
        for images, _ in transformed_dataset(pattern, layer, DEFAULT_CLASSES).batch(16):
            n += int(images.shape[0])
    return n


def against_hash(clock: common.Clock, key: str, n: int, **extra) -> dict:
    """A timed ExampleGen variant `key` against the bare read + sha256 loop, both best of reps."""
    w, c = clock.best_wall, clock.best_cpu
    return common.result(
        n / w(key), n / w("hash"), 0.8, "images/s", True,
        images=n,
        example_gen_s=round(w(key), 3),
        bare_hash_s=round(w("hash"), 3),
        cpu_s_cxrflow=round(c(key), 3),
        cpu_s_bare=round(c("hash"), 3),
        cpu_efficiency_ratio=round(c("hash") / c(key), 4),
        **extra,
    )


def run(count: int, reps: int = 2) -> dict:
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.transform import run_transform

    common.quiet()
    root = data.ensure_set(count)
    paths = data.list_set(root)
    print(f"[ingest] {data.describe(paths)}", flush=True)
    bare_hash(paths)  # warm the page cache for everyone
    bare_tfdata(paths[:4])  # build tf.data/TF kernels once

    clock = common.Clock()
    xf_dir = None
    for rep in range(reps):
        clock.run("hash", bare_hash, paths)
        clock.run("tfdata", bare_tfdata, paths)
        clock.run("tfdata_aa", bare_tfdata, paths, True)
        examples = clock.run("eg", run_example_gen, root, "ingest_examples")
        # A re-ingest of unchanged files with the check cache (scheduled retraining): the cache
        # is filled by an untimed run, so the timed one decodes nothing.
        cache = common.fresh_dir("ingest_check_cache")
        run_example_gen(root, "ingest_examples_cached", cache)
        clock.run("eg_cached", run_example_gen, root, "ingest_examples_cached", cache)
        if xf_dir is None:
            xf_dir = common.fresh_dir("ingest_transform_graph")
            cfg = common.config_for(root, image_size=IMAGE_SIZE)
            clock.run("analyze", run_transform, cfg, split_pattern(examples, "train"), xf_dir)
        n_xf = clock.run("apply", apply_transform, examples, xf_dir)
        last = {k: round(v[-1], 2) for k, v in clock.wall.items()}
        print(f"[ingest] rep {rep} wall s: {last} ({n_xf} examples)", flush=True)

    n = len(paths)
    w, c = clock.best_wall, clock.best_cpu
    out = {
        "ingest_only": against_hash(clock, "eg", n),
        "ingest_rerun_cached": against_hash(
            clock, "eg_cached", n,
            note="ExampleGen with --ingest-cache over files an earlier run checked (no decoding); "
            "ingest_only is the first ingest and the issue's measure",
        ),
        "ingest_transform": common.result(
            n / (w("eg") + w("apply")),
            n / w("tfdata"),
            0.8,
            "images/s",
            True,
            images=n,
            example_gen_s=round(w("eg"), 3),
            apply_tft_s=round(w("apply"), 3),
            apply_tft_only_images_per_s=round(n_xf / w("apply"), 3),
            bare_tfdata_s=round(w("tfdata"), 3),
            bare_antialias_images_per_s=round(n / w("tfdata_aa"), 3),
            transform_analyze_s_not_counted=round(w("analyze"), 3),
            cpu_s_cxrflow=round(c("eg") + c("apply"), 3),
            cpu_s_apply_tft=round(c("apply"), 3),
            cpu_s_bare=round(c("tfdata"), 3),
            cpu_s_bare_antialias=round(c("tfdata_aa"), 3),
            cpu_efficiency_ratio=round(c("tfdata") / (c("eg") + c("apply")), 4),
        ),
    }
    example_bytes = common.dir_bytes(examples)
    raw_bytes = sum(os.path.getsize(p) for p in paths)
    graph_bytes = common.dir_bytes(xf_dir)
    out["disk_per_1000_images"] = common.result(
        round((example_bytes / n * 1000 + graph_bytes) / 1e6, 2),
        None,
        None,
        "MB per 1000 images",
        True,
        examples_mb_per_1000=round(example_bytes / n * 1000 / 1e6, 2),
        transform_graph_mb_total=round(graph_bytes / 1e6, 3),
        raw_input_mb_per_1000=round(raw_bytes / n * 1000 / 1e6, 2),
        materialised_float32_512_mb_per_1000=round(IMAGE_SIZE * IMAGE_SIZE * 4 * 1000 / 1e6, 2),
    )
    return out


def _per_image(root: str) -> None:
    """ExampleGen's per-image work without Beam: pass one (check) and pass two (example)."""
    from cxrflow.sources import adapter_for
    from cxrflow.stages.example_gen import check_record, to_example

    config = common.config_for(root)
    adapter = adapter_for(config.data[0], config.classes, config.source_options())
    for record in adapter.scan():
        check_record(record, config.max_image_pixels)
        with open(record.path, "rb") as f:
            to_example(record, f.read())


def profile(count: int) -> None:
    """cProfile of a whole ExampleGen run, of its per-image work alone, and of the TFT apply."""
    common.quiet()
    root = data.ensure_set(count)
    print("[ingest] profiles:", common.profile("example_gen", run_example_gen, root, "ingest_examples_prof"))
    print("[ingest] profiles:", common.profile("example_gen_per_image", _per_image, root))
    examples = os.path.join(common.WORK_DIR, "ingest_examples")
    xf_dir = os.path.join(common.WORK_DIR, "ingest_transform_graph")
    print("[ingest] profiles:", common.profile("apply_tft", apply_transform, examples, xf_dir))
