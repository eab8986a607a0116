"""Resample: class balancing of the training split, and class weights.

Modes:
- none: training data passes through untouched (the output points at ExampleGen's files
  instead of copying them);
- under: every class is cut to the smallest class's count;
- over: every class grows to `oversample_ratio` x the largest class's count, by repeating
  examples (random over-sampling with replacement, stratified so repeats spread evenly).

Which examples are dropped or repeated is decided by a seeded hash of the image id, never by a
global RNG, so a run is deterministic for a given seed on any runner and any worker count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cxrflow import features as fk
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import join, write_json_atomic

RESAMPLE_FILE = "resample.json"


def target_counts(counts: dict[str, int], mode: str, oversample_ratio: float = 1.0) -> dict[str, int]:
    present = {c: n for c, n in counts.items() if n > 0}
    if mode == "none" or not present:
        return dict(counts)
    if mode == "under":
        low = min(present.values())
        return {c: (low if n > 0 else 0) for c, n in counts.items()}
    if mode == "over":
        high = round(max(present.values()) * oversample_ratio)
        return {c: (max(n, high) if n > 0 else 0) for c, n in counts.items()}
    raise ValueError(f"unknown resample mode {mode!r}")


def class_weights(counts: dict[str, int]) -> dict[str, float]:
    """Inverse-frequency weights (sklearn's "balanced"): total / (classes x count)."""
    present = {c: n for c, n in counts.items() if n > 0}
    total = sum(present.values())
    return {c: (total / (len(present) * n) if n > 0 else 0.0) for c, n in counts.items()}


def example_key(seed: int, serialized: bytes) -> tuple[str, float]:
    """(label, a uniform [0,1) number fixed by seed and image id) for one example."""
    import tensorflow as tf

    example = tf.train.Example.FromString(serialized)
    feats = example.features.feature
    label = feats[fk.LABEL_KEY].bytes_list.value[0].decode()
    image_id = feats[fk.IMAGE_ID_KEY].bytes_list.value[0]
    digest = hashlib.sha256(str(seed).encode() + b":" + image_id).digest()
    return label, int.from_bytes(digest[:8], "big") / 2**64


def copies_for(label: str, key: float, counts: dict, targets: dict, thresholds: dict) -> int:
    """How many times one example appears in the output (0 = dropped)."""
    n, target = counts[label], targets[label]
    if target <= n:  # under-sampling (or unchanged): keep the `target` smallest keys
        return 1 if target == n or key <= thresholds.get(label, -1.0) else 0
    base, extra = divmod(target, n)  # over-sampling: everyone `base` times, some once more
    return base + (1 if extra and key <= thresholds.get(label, -1.0) else 0)


def run_resample(
    config: PipelineConfig, train_pattern: str, train_counts: dict[str, int], output_dir: str,
    beam_args: Sequence[str] = (),
) -> dict:
    """Writes the resampled train split (unless mode is none) and `resample.json`."""
    counts = {c: int(train_counts.get(c, 0)) for c in config.classes}
    targets = target_counts(counts, config.resample, config.oversample_ratio)
    summary = {
        "mode": config.resample,
        "counts_before": counts,
        "counts_after": targets,
        "class_weights": class_weights(targets),
        "use_class_weights": config.class_weights,
    }
    if config.resample == "none" or targets == counts:
        # No copy: the Trainer reads ExampleGen's train split. Recorded by role, not by path,
        # so a reused (cached) artifact never points at another run's files.
        summary["train_from"] = "examples"
        write_json_atomic(join(output_dir, RESAMPLE_FILE), summary)
        return summary

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    # k smallest keys needed per class: the kept ones (under) or the extra copies (over).
    need = {c: (targets[c] if targets[c] <= counts[c] else targets[c] % counts[c]) for c in counts if counts[c]}
    top_n = max(max(need.values()), 1)
    seed = config.seed

    def thresholds_from(smallest: list) -> dict:
        out = {}
        for label, keys in smallest:
            k = need.get(label, 0)
            if k:
                out[label] = sorted(keys)[k - 1]
        return out

    def expand(kv, thresholds):
        serialized, (label, key) = kv
        for _ in range(copies_for(label, key, counts, targets, thresholds)):
            yield serialized

    out_pattern = join(output_dir, "Split-train", "data")
    with beam.Pipeline(options=PipelineOptions(list(beam_args or config.beam_args))) as p:
        # The training split is read twice on purpose: the first pass keeps only (label, key)
        # pairs to find the thresholds; the second streams examples through once those are
        # known. One shared read would make the runner hold every example until the side
        # input is ready, so memory would grow with the dataset.
        thresholds = (
            p
            | "ReadForKeys" >> beam.io.ReadFromTFRecord(train_pattern)
            | "LabelKeys" >> beam.Map(lambda s: example_key(seed, s))
            | "Smallest" >> beam.combiners.Top.SmallestPerKey(top_n)
            | "AllClasses" >> beam.combiners.ToList()
            | "Thresholds" >> beam.Map(thresholds_from)
        )
        _ = (
            p
            | "ReadTrain" >> beam.io.ReadFromTFRecord(train_pattern)
            | "Key" >> beam.Map(lambda s: (s, example_key(seed, s)))
            | "Resample" >> beam.FlatMap(expand, beam.pvalue.AsSingleton(thresholds))
            | "Write" >> beam.io.WriteToTFRecord(out_pattern, file_name_suffix=".tfrecord")
        )
    summary["train_from"] = "resampled"
    write_json_atomic(join(output_dir, RESAMPLE_FILE), summary)
    return summary


def train_pattern_for(summary: dict, examples_dir: str, resample_dir: str) -> str:
    """Where the Trainer reads training examples after this stage."""
    from cxrflow.stages.example_gen import split_pattern

    if summary["train_from"] == "examples":
        return split_pattern(examples_dir, "train")
    return join(resample_dir, "Split-train", "*.tfrecord")
