"""Resample: class balancing of the training split, confound-aware balancing, and class weights.

Modes:
- none: training data passes through untouched (the output points at ExampleGen's files
  instead of copying them);
- under: every class is cut to the smallest class's count;
- over: every class grows to `oversample_ratio` x the largest class's count, by repeating
  examples (random over-sampling with replacement, stratified so repeats spread evenly).

`balance_by` (age_group | source) first over-samples the under-represented (class, group) cells
of each class so that every class has the same mix of that nuisance variable: the mix of the
whole training split (see `balance_targets`). A class with no example in some group cannot be
given that group; `resample.json` names every such cell. The class-level mode then applies to
the balanced class totals, scaling each class's cells alike so the mix is kept.

Which examples are dropped or repeated is decided by a seeded hash of the image id, never by a
global RNG, so a run is deterministic for a given seed on any runner and any worker count.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from cxrflow import features as fk
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import join, read_json, write_json_atomic

RESAMPLE_FILE = "resample.json"
CELL_COUNTS_FILE = "cell_counts.json"
# Nuisance variables Resample can balance, by the example feature that holds them.
BALANCE_FEATURES = {"age_group": fk.AGE_GROUP_KEY, "source": fk.SOURCE_KEY}
UNKNOWN_GROUP = "unknown"  # an empty age group (or source) is a group of its own


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


def balance_targets(cells: dict[str, dict[str, int]]) -> tuple[dict[str, dict[str, int]], dict[str, float], list]:
    """Over-samples each class's cells toward one common mix of the nuisance groups.

    `cells` is {class: {group: count}}. The common mix p is the whole split's (every class
    pooled). A class c present in groups S gets target t[c][g] = T_c * p[g] / p(S) for g in S,
    with T_c the smallest total at which no cell of c shrinks: max over g of n[c][g] * p(S) / p[g].
    Only repeats are added, never examples dropped. Groups of p that c lacks are reported as
    (class, group) pairs that could not be balanced. Returns (targets, p, unbalanced).
    """
    groups = sorted({g for by_group in cells.values() for g, n in by_group.items() if n > 0})
    total = sum(n for by_group in cells.values() for n in by_group.values())
    mix = {g: sum(by_group.get(g, 0) for by_group in cells.values()) / total for g in groups} if total else {}
    targets: dict[str, dict[str, int]] = {}
    unbalanced = []
    for c, by_group in cells.items():
        present = [g for g in groups if by_group.get(g, 0) > 0]
        unbalanced += [{"class": c, "group": g, "reason": "no training example of this class in this group"}
                       for g in groups if g not in present and present]
        share = sum(mix[g] for g in present)
        scale = max((by_group[g] * share / mix[g] for g in present), default=0.0)
        # max(): rounding must never put a cell below what it has.
        targets[c] = {g: (max(by_group[g], round(scale * mix[g] / share)) if g in present else 0) for g in groups}
    return targets, mix, unbalanced


def scale_cells(cells: dict[str, dict[str, int]], class_targets: dict[str, int]) -> dict[str, dict[str, int]]:
    """Scales each class's cells to its class target, keeping the mix (largest remainders)."""
    out = {}
    for c, by_group in cells.items():
        n, want = sum(by_group.values()), class_targets.get(c, 0)
        if n == 0 or want == n:
            out[c] = dict(by_group)
            continue
        exact = {g: k * want / n for g, k in by_group.items()}
        got = {g: int(v) for g, v in exact.items()}
        for g in sorted(exact, key=lambda g: (got[g] - exact[g], g))[: want - sum(got.values())]:
            got[g] += 1
        out[c] = got
    return out


def mix_of(cells: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """{class: {group: share of the class}}, rounded for the report."""
    out = {}
    for c, by_group in cells.items():
        n = sum(by_group.values())
        out[c] = {g: (round(k / n, 4) if n else 0.0) for g, k in by_group.items()}
    return out


def plan_cells(cells: dict[str, dict[str, int]], config: PipelineConfig) -> dict:
    """Per-cell targets for the whole stage: balance_by first, then the class-level mode."""
    summary: dict = {}
    after = cells
    if config.balance_by:
        after, mix, unbalanced = balance_targets(cells)
        summary.update(target_mix={g: round(p, 4) for g, p in mix.items()}, unbalanced=unbalanced)
    totals = {c: sum(by_group.values()) for c, by_group in after.items()}
    after = scale_cells(after, target_counts(totals, config.resample, config.oversample_ratio))
    summary["cells_after"] = after
    return summary


def group_of(feats, group_key: str) -> str:
    if not group_key:
        return ""
    values = feats[group_key].bytes_list.value if group_key in feats else []
    return (values[0].decode() if values else "") or UNKNOWN_GROUP


def example_key(seed: int, serialized: bytes, group_key: str = "") -> tuple[tuple[str, str], float]:
    """((label, group), a uniform [0,1) number fixed by seed and image id) for one example.

    group is "" when no nuisance variable is balanced, so the cells are then the classes.
    """
    import tensorflow as tf  # lazy: no TF unless the train split is rebalanced

    example = tf.train.Example.FromString(serialized)
    feats = example.features.feature
    label = feats[fk.LABEL_KEY].bytes_list.value[0].decode()
    image_id = feats[fk.IMAGE_ID_KEY].bytes_list.value[0]
    digest = hashlib.sha256(str(seed).encode() + b":" + image_id).digest()
    return (label, group_of(feats, group_key)), int.from_bytes(digest[:8], "big") / 2**64


def copies_for(cell, key: float, counts: dict, targets: dict, thresholds: dict) -> int:
    """How many times one example of `cell` appears in the output (0 = dropped)."""
    n, target = counts[cell], targets[cell]
    if target <= n:  # under-sampling (or unchanged): keep the `target` smallest keys
        return 1 if target == n or key <= thresholds.get(cell, -1.0) else 0
    base, extra = divmod(target, n)  # over-sampling: everyone `base` times, some once more
    return base + (1 if extra and key <= thresholds.get(cell, -1.0) else 0)


def count_cells(train_pattern: str, group_key: str, output_dir: str, beam_args: Sequence[str]) -> dict:
    """A Beam pass counting training examples per (class, group): {class: {group: n}}."""
    import apache_beam as beam  # lazy (both): no Beam unless the train split is rebalanced
    from apache_beam.options.pipeline_options import PipelineOptions

    path = join(output_dir, CELL_COUNTS_FILE)

    def write(pairs):
        cells: dict[str, dict[str, int]] = {}
        for (label, group), n in pairs:
            cells.setdefault(label, {})[group] = n
        write_json_atomic(path, cells)

    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
        _ = (
            p
            | "ReadForCells" >> beam.io.ReadFromTFRecord(train_pattern)
            | "Cell" >> beam.Map(lambda s: example_key(0, s, group_key)[0])
            | "Count" >> beam.combiners.Count.PerElement()
            | "AllCells" >> beam.combiners.ToList()
            | "WriteCells" >> beam.Map(write)
        )
    cells = read_json(path)
    if "://" not in path:
        os.remove(path)  # folded into resample.json below
    return cells


def _describe(summary: dict) -> str:
    """The one line printed for people: the mix before and after, and what stayed unbalanced."""
    def fmt(mix):
        return "; ".join(f"{c} " + ", ".join(f"{g} {v:.0%}" for g, v in sorted(m.items())) for c, m in mix.items())

    line = f"resample: balance by {summary['balance_by']}: before {fmt(summary['mix_before'])} -> after " \
           f"{fmt(summary['mix_after'])}"
    missing = [f"{u['class']} has no {u['group']}" for u in summary["unbalanced"]]
    return line + (f"; could not balance: {', '.join(missing)}" if missing else "; every class balanced")


def run_resample(
    config: PipelineConfig, train_pattern: str, train_counts: dict[str, int], output_dir: str,
    beam_args: Sequence[str] = (),
) -> dict:
    """Writes the resampled train split (unless nothing changes) and `resample.json`."""
    beam_args = list(beam_args or config.beam_args)
    group_key = BALANCE_FEATURES[config.balance_by] if config.balance_by else ""
    if group_key:
        found = count_cells(train_pattern, group_key, output_dir, beam_args)
        groups = sorted({g for by_group in found.values() for g in by_group})
        cells = {c: {g: found.get(c, {}).get(g, 0) for g in groups} for c in config.classes}
        unknown = sorted(set(found) - set(config.classes))
        if unknown:
            raise ValueError(f"training examples with labels outside {list(config.classes)}: {unknown}")
    else:
        cells = {c: ({"": int(train_counts.get(c, 0))} if train_counts.get(c, 0) else {}) for c in config.classes}
    plan = plan_cells(cells, config)
    after = plan["cells_after"]
    counts = {c: sum(cells[c].values()) for c in config.classes}
    targets = {c: sum(after[c].values()) for c in config.classes}
    summary = {
        "mode": config.resample,
        "counts_before": counts,
        "counts_after": targets,
        "class_weights": class_weights(targets),
        "use_class_weights": config.class_weights,
        "balance_by": config.balance_by,
    }
    if group_key:
        summary.update(cells_before=cells, cells_after=after, mix_before=mix_of(cells), mix_after=mix_of(after),
                       target_mix=plan["target_mix"], unbalanced=plan["unbalanced"])
        print(_describe(summary), flush=True)
    if after == cells:
        # No copy: the Trainer reads ExampleGen's train split. Recorded by role, not by path,
        # so a reused (cached) artifact never points at another run's files.
        summary["train_from"] = "examples"
        write_json_atomic(join(output_dir, RESAMPLE_FILE), summary)
        return summary

    import apache_beam as beam  # lazy (both): no Beam unless the train split is rebalanced
    from apache_beam.options.pipeline_options import PipelineOptions

    cell_counts = {(c, g): n for c, by_group in cells.items() for g, n in by_group.items()}
    cell_targets = {(c, g): n for c, by_group in after.items() for g, n in by_group.items()}
    # k smallest keys needed per cell: the kept ones (under) or the extra copies (over).
    need = {cell: (cell_targets[cell] if cell_targets[cell] <= n else cell_targets[cell] % n)
            for cell, n in cell_counts.items() if n}
    top_n = max(max(need.values()), 1)
    seed = config.seed

    def thresholds_from(smallest: list) -> dict:
        out = {}
        for cell, keys in smallest:
            k = need.get(cell, 0)
            if k:
                out[cell] = sorted(keys)[k - 1]
        return out

    def expand(kv, thresholds):
        serialized, (cell, key) = kv
        for _ in range(copies_for(cell, key, cell_counts, cell_targets, thresholds)):
            yield serialized

    out_pattern = join(output_dir, "Split-train", "data")
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        # The training split is read twice on purpose: the first pass keeps only (cell, key)
        # pairs to find the thresholds; the second streams examples through once those are
        # known. One shared read would make the runner hold every example until the side
        # input is ready, so memory would grow with the dataset.
        thresholds = (
            p
            | "ReadForKeys" >> beam.io.ReadFromTFRecord(train_pattern)
            | "CellKeys" >> beam.Map(lambda s: example_key(seed, s, group_key))
            | "Smallest" >> beam.combiners.Top.SmallestPerKey(top_n)
            | "AllCells" >> beam.combiners.ToList()
            | "Thresholds" >> beam.Map(thresholds_from)
        )
        _ = (
            p
            | "ReadTrain" >> beam.io.ReadFromTFRecord(train_pattern)
            | "Key" >> beam.Map(lambda s: (s, example_key(seed, s, group_key)))
            | "Resample" >> beam.FlatMap(expand, beam.pvalue.AsSingleton(thresholds))
            | "Write" >> beam.io.WriteToTFRecord(out_pattern, file_name_suffix=".tfrecord")
        )
    summary["train_from"] = "resampled"
    write_json_atomic(join(output_dir, RESAMPLE_FILE), summary)
    return summary


def train_pattern_for(summary: dict, examples_dir: str, resample_dir: str) -> str:
    """Where the Trainer reads training examples after this stage."""
    from cxrflow.stages.example_gen import split_pattern  # lazy: scipy (~1 s), which Resample itself never needs

    if summary["train_from"] == "examples":
        return split_pattern(examples_dir, "train")
    return join(resample_dir, "Split-train", "*.tfrecord")
