"""Ingest benchmarks: ExampleGen (+ the TFT graph applied to its examples) against bare loops.

Each runs on two datasets: the synthetic pool (`--count` images of 1-3 MP, PNG 8/16-bit and
JPEG) and the real X-rays in `../shared/realdata` (`_realdata` entries; JPEG-heavy, mixed
sizes; skipped with the reason where absent). The bare sides get the same files ExampleGen
reads (the records its source adapters list).

- ingest_vs_decode: images/s of ExampleGen (every check and fingerprint, TFRecords written) vs a
  bare decode of every file on every core, the way a user's script would do it, with the faster
  of two decoders: `tf.data` (read_file -> decode_image, AUTOTUNE) and PIL (open + load) in a
  thread pool of one thread per core.
- ingest_rerun_cached: a re-ingest of unchanged files with `--ingest-cache` (no pixel decoding:
  scheduled retraining on an unchanged dataset) vs a bare loop that reads each file, hashes it
  with SHA-256 and writes its bytes to a TFRecord file.
- ingest_only: ExampleGen vs a bare read + SHA-256 loop. Information only: it never decodes,
  and a validating ingest must decode every pixel (bench/README.md).
- ingest_transform: images/s of ExampleGen + applying the TFT graph (decode -> gray -> resize
  512 -> normalise, through trainer/data.transformed_dataset) vs bare tf.data (read file ->
  decode_image -> rgb_to_grayscale -> resize 512 -> /255, AUTOTUNE). Synthetic pool only.
- disk_per_1000_images: bytes the intermediate artifacts take (value only, no target).

Files are read once before timing so both sides see a warm page cache. Sides alternate within
each repetition and the best run of each counts (noise on a shared machine only ever slows a
run down). Process CPU seconds and the machine's load average are recorded with each entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from bench import common, data
from cxrflow import features as fk
from cxrflow.config import DEFAULT_CLASSES, PipelineConfig
from cxrflow.stages.transform import run_transform

IMAGE_SIZE = 512


def bare_hash(paths: list[str]) -> int:
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            total += len(hashlib.sha256(f.read()).digest())
    return total


def bare_hash_write(paths: list[str], out_path: str) -> int:
    """Read, SHA-256 and append the bytes to one TFRecord file: what a cached re-ingest must do."""
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    n = 0
    with tf.io.TFRecordWriter(out_path) as writer:
        for p in paths:
            with open(p, "rb") as f:
                raw = f.read()
            hashlib.sha256(raw).digest()
            writer.write(raw)
            n += 1
    return n


def bare_decode_tfdata(paths: list[str]) -> int:
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

    def load(path):
        return tf.shape(tf.io.decode_image(tf.io.read_file(path), expand_animations=False))

    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return sum(1 for _ in ds.prefetch(tf.data.AUTOTUNE))


def _pil_decode(path: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
        img.load()
    return img.size


def bare_decode_pil(paths: list[str]) -> int:
    with ThreadPoolExecutor(common.cpu_count()) as pool:
        return sum(1 for _ in pool.map(_pil_decode, paths))


def bare_tfdata(paths: list[str], antialias: bool = False) -> int:
    import tensorflow as tf  # lazy: run_all imports this; TF only when the group runs

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


def run_example_gen(config, out_name: str) -> str:
    from cxrflow.stages.example_gen import run_example_gen as eg  # lazy: keeps scipy off run_all

    out = common.fresh_dir(out_name)
    eg(config, out)
    return out


def apply_transform(examples_dir: str, transform_dir: str) -> int:
    """Every example of every split through the TFT graph, as the Trainer's input does it."""
    import tensorflow_transform as tft  # lazy (both): run_all imports this; TFT and TF only when the group runs

    from cxrflow.trainer.data import transformed_dataset

    layer = tft.TFTransformOutput(transform_dir).transform_features_layer()
    n = 0
    for split in fk.SPLITS:
        pattern = os.path.join(examples_dir, f"Split-{split}", "*.tfrecord")
        for images, _ in transformed_dataset(pattern, layer, DEFAULT_CLASSES).batch(16):
            n += int(images.shape[0])
    return n


def skipped(why: str) -> dict:
    """A results.json entry for a benchmark that could not run here, and why."""
    return {"value": None, "baseline": None, "ratio": None, "target": 0.8, "ok": None, "unit": "images/s",
            "skipped": why}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _dataset(name: str, config, clock: common.Clock, reps: int, transform: bool) -> dict:
    """Times every side on one dataset; returns the entries (suffix `_<name>` unless synthetic)."""
    from cxrflow.stages.example_gen import scan_sources, split_pattern  # lazy: keeps scipy off run_all

    paths = [r.path for r in scan_sources(config)[0]]
    print(f"[ingest:{name}] {data.describe(paths)}", flush=True)
    bare_hash(paths)  # warm the page cache for everyone
    bare_decode_tfdata(paths[:4])  # build tf.data/TF kernels once
    cache_config = dataclasses.replace(config, ingest_cache=common.fresh_dir(f"ingest_check_cache_{name}"))
    run_example_gen(cache_config, f"ingest_examples_cached_{name}")  # fills the cache, untimed
    load_start = _load()
    xf_dir = None

    def k(side: str) -> str:
        return f"{name}:{side}"

    for rep in range(reps):
        # Alternate which side goes first, so that a burst of other work hurts both alike.
        order = ["tfdata", "pil", "eg", "hash_write", "eg_cached", "hash"]
        for side in order if rep % 2 == 0 else order[::-1]:
            if side == "tfdata":
                clock.run(k(side), bare_decode_tfdata, paths)
            elif side == "pil":
                clock.run(k(side), bare_decode_pil, paths)
            elif side == "eg":
                examples = clock.run(k(side), run_example_gen, config, f"ingest_examples_{name}")
            elif side == "hash_write":
                os.makedirs(common.fresh_dir(f"bare_{name}"))
                target = os.path.join(common.WORK_DIR, f"bare_{name}", "all.tfrecord")
                clock.run(k(side), bare_hash_write, paths, target)
            elif side == "eg_cached":
                clock.run(k(side), run_example_gen, cache_config, f"ingest_examples_cached_{name}")
            else:
                clock.run(k(side), bare_hash, paths)
        if transform:
            clock.run("tfdata_512", bare_tfdata, paths)
            clock.run("tfdata_512_aa", bare_tfdata, paths, True)
            if xf_dir is None:
                xf_dir = common.fresh_dir("ingest_transform_graph")
                cfg = dataclasses.replace(config, image_size=IMAGE_SIZE)
                clock.run("analyze", run_transform, cfg, split_pattern(examples, "train"), xf_dir)
            n_xf = clock.run("apply", apply_transform, examples, xf_dir)
        last = {key.split(":")[-1]: round(v[-1], 2) for key, v in clock.wall.items() if key.startswith(f"{name}:")}
        print(f"[ingest:{name}] rep {rep} wall s: {last} (load {_load()})", flush=True)

    n = len(paths)
    w, c = clock.best_wall, clock.best_cpu
    loads = {"load_avg_1m_start": load_start, "load_avg_1m_end": _load(), "dataset": name, "images": n}
    decoder = "tfdata" if w(k("tfdata")) <= w(k("pil")) else "pil"
    suffix = "" if name == "synthetic" else f"_{name}"
    out = {
        f"ingest_vs_decode{suffix}": common.result(
            n / w(k("eg")), n / w(k(decoder)), 0.8, "images/s", True,
            bare_decoder=decoder,
            bare_tfdata_images_per_s=round(n / w(k("tfdata")), 2),
            bare_pil_threads_images_per_s=round(n / w(k("pil")), 2),
            example_gen_s=round(w(k("eg")), 3),
            bare_decode_s=round(w(k(decoder)), 3),
            cpu_s_cxrflow=round(c(k("eg")), 3),
            cpu_s_bare=round(c(k(decoder)), 3),
            **loads,
        ),
        f"ingest_rerun_cached{suffix}": common.result(
            n / w(k("eg_cached")), n / w(k("hash_write")), 0.8, "images/s", True,
            example_gen_cached_s=round(w(k("eg_cached")), 3),
            bare_read_hash_write_s=round(w(k("hash_write")), 3),
            cpu_s_cxrflow=round(c(k("eg_cached")), 3),
            cpu_s_bare=round(c(k("hash_write")), 3),
            **loads,
        ),
        f"ingest_only{suffix}": common.result(
            n / w(k("eg")), n / w(k("hash")), None, "images/s", True,
            ratio_info_only=round(w(k("hash")) / w(k("eg")), 4),
            note="information only: the bare side reads and hashes, it never decodes",
            bare_read_hash_s=round(w(k("hash")), 3),
            **loads,
        ),
    }
    if transform:
        out["ingest_transform"] = common.result(
            n / (w(k("eg")) + w("apply")), n / w("tfdata_512"), 0.8, "images/s", True,
            example_gen_s=round(w(k("eg")), 3),
            apply_tft_s=round(w("apply"), 3),
            apply_tft_only_images_per_s=round(n_xf / w("apply"), 3),
            bare_tfdata_s=round(w("tfdata_512"), 3),
            bare_antialias_images_per_s=round(n / w("tfdata_512_aa"), 3),
            transform_analyze_s_not_counted=round(w("analyze"), 3),
            cpu_s_cxrflow=round(c(k("eg")) + c("apply"), 3),
            cpu_s_bare=round(c("tfdata_512"), 3),
            **loads,
        )
        example_bytes = common.dir_bytes(examples)
        raw_bytes = sum(os.path.getsize(p) for p in paths)
        graph_bytes = common.dir_bytes(xf_dir)
        out["disk_per_1000_images"] = common.result(
            round((example_bytes / n * 1000 + graph_bytes) / 1e6, 2), None, None, "MB per 1000 images", True,
            examples_mb_per_1000=round(example_bytes / n * 1000 / 1e6, 2),
            transform_graph_mb_total=round(graph_bytes / 1e6, 3),
            raw_input_mb_per_1000=round(raw_bytes / n * 1000 / 1e6, 2),
            materialised_float32_512_mb_per_1000=round(IMAGE_SIZE * IMAGE_SIZE * 4 * 1000 / 1e6, 2),
        )
    return out


def run(count: int, reps: int = 2, transform: bool = True) -> dict:
    common.quiet()
    clock = common.Clock()
    out = _dataset("synthetic", common.config_for(data.ensure_set(count)), clock, reps, transform)
    root, why = data.realdata_root()
    if root is None:
        print(f"[ingest] realdata skipped: {why}", flush=True)
        for name in REALDATA_ENTRIES:
            out[name] = skipped(why)
        return out
    out.update(_dataset("realdata", PipelineConfig(data=data.realdata_entries(root)), clock, reps, False))
    return out


REALDATA_ENTRIES = ("ingest_vs_decode_realdata", "ingest_rerun_cached_realdata", "ingest_only_realdata")


def _per_image(config) -> None:
    """ExampleGen's per-image work without Beam: pass one (check) and pass two (example)."""
    from cxrflow.stages.example_gen import check_record, scan_sources, to_example  # lazy: keeps scipy off run_all

    for record in scan_sources(config)[0]:
        check_record(record, config.max_image_pixels)
        with open(record.path, "rb") as f:
            to_example(record, f.read())


def profile(count: int) -> None:
    """cProfile of whole ExampleGen runs (synthetic and real files) and of its per-image work."""
    common.quiet()
    configs = {"synthetic": common.config_for(data.ensure_set(count))}
    root, _ = data.realdata_root()
    if root is not None:
        configs["realdata"] = PipelineConfig(data=data.realdata_entries(root))
    for name, config in configs.items():
        print("[ingest] profiles:", common.profile(f"example_gen_{name}", run_example_gen, config, f"prof_{name}"))
        print("[ingest] profiles:", common.profile(f"example_gen_per_image_{name}", _per_image, config))
