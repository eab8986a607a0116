"""ExampleGen: source adapters -> checked, de-duplicated, patient-split tf.Example TFRecords.

Two passes over the files, as one Beam pipeline (any runner; locally Beam's in-memory batch
runner, with a thread per core inside the DoFns). Pass one reads and checks every image and
keeps only small metadata (hashes, labels, reasons); the split plan is computed from that
metadata alone. Pass two streams the kept files into TFRecord shards (shard_writer.py). Pixels are never grouped or
held in memory, so memory stays flat as the dataset grows, on any runner.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence

from cxrflow import features as fk
from cxrflow import progress, tf_example
from cxrflow.beam_options import one_local_worker, with_local_defaults
from cxrflow.config import PipelineConfig
from cxrflow.images import ImageRejected, check_image, check_size
from cxrflow.io_utils import join, makedirs, read_json, read_text, write_json_atomic, write_text_atomic
from cxrflow.sources import Exclusion, Record, adapter_for
from cxrflow.stages import check_cache
from cxrflow.stages.confounding import age_group, confounding_report, file_traits
from cxrflow.stages.splitting import ImageMeta, assign_splits, deduplicate, patient_overlap, resolve_source

log = logging.getLogger(__name__)

REPORT_FILE = "ingest_report.json"
# The sources' listing, in the run's temporary folder, for the pipeline steps that need it.
LISTING_FILE = "listing.json"


def split_dir(examples_dir: str, split: str) -> str:
    return join(examples_dir, f"Split-{split}")


def split_pattern(examples_dir: str, split: str) -> str:
    return join(split_dir(examples_dir, split), "*.tfrecord")


def _read(path: str) -> bytes:
    if "://" in path:
        import tensorflow as tf  # lazy: only gs:// data needs TF's gfile

        # gfile raises TF's own errors, not OSError: map them so that a file gone from the
        # bucket is a counted `missing_file` skip and not a crash of the whole run.
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                return f.read()
        except tf.errors.NotFoundError as e:
            raise FileNotFoundError(path) from e
        except tf.errors.OpError as e:
            raise OSError(f"{path}: {e.message}") from e
    with open(path, "rb") as f:
        return f.read()


def write_listing(path: str, records: Sequence[Record], exclusions: Sequence[Exclusion]) -> None:
    """Writes what the sources listed to `path`, for `read_listing` (plain JSON rows)."""
    rows = {"records": [[getattr(r, f) for f in _RECORD_FIELDS] for r in records],
            "exclusions": [[getattr(e, f) for f in _EXCLUSION_FIELDS] for e in exclusions]}
    write_text_atomic(path, json.dumps(rows, separators=(",", ":")))


def read_listing(path: str) -> tuple[list[Record], list[Exclusion]]:
    rows = json.loads(read_text(path))
    return [Record(*r) for r in rows["records"]], [Exclusion(*e) for e in rows["exclusions"]]


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))
_EXCLUSION_FIELDS = tuple(f.name for f in dataclasses.fields(Exclusion))


def check_record(record: Record, max_pixels: int, cache_dir: str = "") -> dict:
    """Pass one: reads and checks one file; returns metadata, or a skip with its reason.

    With `cache_dir`, a file whose bytes were checked by an earlier run is not decoded again
    (check_cache.py); `cache_entry` carries a newly checked image's result to be remembered.
    """
    try:
        data = _read(record.path)
    except FileNotFoundError:
        return {"skip": True, "source": record.source, "path": record.path, "reason": "missing_file"}
    except OSError as e:
        return {"skip": True, "source": record.source, "path": record.path, "reason": "unreadable", "detail": str(e)}
    sha256 = hashlib.sha256(data).hexdigest()
    cached = check_cache.lookup(cache_dir, sha256)
    try:
        if cached is not None:
            check_size(cached["width"], cached["height"], max_pixels)
            pixel_hash, thumbnail = cached["pixel_hash"], bytes.fromhex(cached["thumbnail"])
            reencoded, entry = cached["reencoded"], None
        else:
            checked = check_image(data, max_pixels, sha256)
            pixel_hash, thumbnail, reencoded = checked.pixel_hash, checked.thumbnail, checked.reencoded
            entry = check_cache.entry(checked) if cache_dir else None
    except ImageRejected as e:
        return {"skip": True, "source": record.source, "path": record.path, "reason": e.reason, "detail": e.detail}
    return {
        "skip": False,
        "meta": ImageMeta(record.image_id, record.patient_id, record.label, record.source,
                          record.provided_split, sha256, pixel_hash, thumbnail),
        "reencoded": reencoded,
        "cached": cached is not None,
        "cache_entry": entry,
    }


def remember_checks(checks: list[dict], cache_dir: str) -> None:
    """Adds this run's newly checked images to the check cache (one new file, atomically)."""
    check_cache.save(cache_dir, {c["meta"].file_sha256: c["cache_entry"] for c in checks if c.get("cache_entry")})


def to_example(record: Record, image_bytes: bytes, original: bytes | None = None) -> bytes:
    """One tf.Example: the image bytes to train on, the record's metadata and the file traits
    of `original`, the file as found (before any re-encode; `image_bytes` when not given)."""
    values = {
        fk.IMAGE_KEY: image_bytes,
        fk.LABEL_KEY: record.label.encode(),
        fk.PATIENT_ID_KEY: record.patient_id.encode(),
        fk.SOURCE_KEY: record.source.encode(),
        fk.VIEW_KEY: record.view.encode(),
        fk.SEX_KEY: record.sex.encode(),
        fk.AGE_KEY: record.age.encode(),
        fk.AGE_GROUP_KEY: age_group(record.age, record.age_group).encode(),
        fk.IMAGE_ID_KEY: record.image_id.encode(),
    }
    traits = file_traits(image_bytes if original is None else original)
    values.update({k: traits[k].encode() for k in fk.TRAIT_STR_KEYS})
    # Written straight in the wire format: the image bytes are copied once, not five times.
    return tf_example.serialize(values, {k: traits[k] for k in fk.TRAIT_INT_KEYS})


def make_plan(
    checks: list[dict], exclusions: list[Exclusion], records: list[Record], config: PipelineConfig,
    unreadable_cache_files: Sequence[str] = (),
) -> dict:
    """Dedup + split over pass-one metadata; returns the assignment and the ingestion report."""
    ok = [c for c in checks if not c["skip"]]
    kept, duplicates = deduplicate(c["meta"] for c in ok)
    test_source = _test_source(config, records, exclusions)
    assignment, split_notes = assign_splits(
        kept, config.classes, config.eval_fraction, config.test_fraction, config.seed, test_source
    )
    reencode = {c["meta"].image_id for c in ok if c["reencoded"]}
    by_id = {r.image_id: r for r in records}

    sources: dict[str, dict] = defaultdict(
        lambda: {"rows": 0, "kept": Counter(), "excluded": Counter(), "listed": 0, "no_patient": 0})
    for r in records:
        sources[r.source]["rows"] += 1
        sources[r.source]["listed"] += 1
        sources[r.source]["no_patient"] += not r.patient_known  # the file stands in for its patient
    skipped = []
    for e in exclusions:
        sources[e.source]["rows"] += 1
        sources[e.source]["excluded"][e.reason] += 1
        skipped.append({"path": e.path, "reason": e.reason})
    for c in checks:
        if c["skip"]:
            sources[c["source"]]["excluded"][c["reason"]] += 1
            skipped.append({"path": c["path"], "reason": c["reason"], "detail": c.get("detail", "")})
    for d in duplicates:
        r = by_id[d["image_id"]]
        sources[r.source]["excluded"]["duplicate"] += 1
        skipped.append({"path": r.path, "reason": "duplicate", "detail": f"{d['match']} copy of {d['kept']}"})

    # (split, class, source, age group) per kept image: what confounding.py weighs.
    nuisance = [(assignment[m.image_id], m.label, m.source,
                 age_group(by_id[m.image_id].age, by_id[m.image_id].age_group)) for m in kept]
    splits = {s: Counter() for s in fk.SPLITS}
    by_source: dict[str, dict] = {s: defaultdict(Counter) for s in fk.SPLITS}
    for meta in kept:
        split = assignment[meta.image_id]
        splits[split][meta.label] += 1
        by_source[split][meta.source][meta.label] += 1
        sources[meta.source]["kept"][meta.label] += 1

    report = {
        "classes": list(config.classes),
        "sources": {name: {"rows": s["rows"], "kept": dict(s["kept"]), "excluded": dict(s["excluded"]),
                           # "image" when no listed image names its patient; else the count that fell back.
                           "split_unit": "image" if s["listed"] and s["no_patient"] == s["listed"] else "patient",
                           "images_without_patient": s["no_patient"]}
                    for name, s in sorted(sources.items())},
        "duplicates_removed": len(duplicates),
        "duplicates": duplicates,
        "splits": {s: {c: splits[s].get(c, 0) for c in config.classes} for s in fk.SPLITS},
        "by_source": {s: {src: dict(cnt) for src, cnt in sorted(v.items())} for s, v in by_source.items()},
        "patient_overlap": patient_overlap(kept, assignment),
        "test_source": test_source,
        "confounding": confounding_report(nuisance, config.classes, test_source=test_source),
        "skipped": sorted(skipped, key=lambda x: (x["reason"], x["path"])),
        **split_notes,
    }
    if config.ingest_cache:
        report["check_cache"] = {
            "dir": config.ingest_cache,
            "reused": sum(1 for c in ok if c["cached"]),
            "decoded": sum(1 for c in ok if not c["cached"]),
            "unreadable_cache_files": list(unreadable_cache_files),
        }
    return {"assignment": assignment, "reencode": reencode, "report": report}


def write_examples(record: Record, plan: dict, max_pixels: int):
    """Pass two: emits (split, serialized example) for each planned image."""
    split = plan["assignment"].get(record.image_id)
    if split is None:
        return
    try:
        data = _read(record.path)
    except OSError as e:  # it was read in pass one: the data changed while the ingest ran
        raise RuntimeError(f"{record.path} was checked but cannot be read again ({e}); "
                           "was the data changed during the ingest? Run it again.") from e
    encoded = check_image(data, max_pixels).data if record.image_id in plan["reencode"] else data
    yield split, to_example(record, encoded, original=data)


def finalize_output(shards: list[tuple[str, str]], tmp_dir: str, output_dir: str, plan: dict) -> None:
    """Moves the committed shards into Split-*/, then writes the report: a report on disk
    means that every split's examples are in place."""
    from cxrflow.stages import shard_writer  # lazy: imports Beam and TF

    shard_writer.finalize(shards, tmp_dir, {s: split_dir(output_dir, s) for s in fk.SPLITS})
    write_json_atomic(join(output_dir, REPORT_FILE), plan["report"])


def _test_source(config: PipelineConfig, records: list[Record], exclusions: list[Exclusion]) -> str:
    """The full name of `--test-source` among the sources listed ("" when not given)."""
    if not config.test_source:
        return ""
    return resolve_source(config.test_source, {r.source for r in records} | {e.source for e in exclusions})


def scan_sources(config: PipelineConfig) -> tuple[list[Record], list[Exclusion]]:
    """Lists every configured source; raises ValueError on duplicate image ids, no data or an
    unknown `--test-source`."""
    if not config.data:
        raise ValueError("no data given: pass --data KIND:PATH at least once")
    records: list[Record] = []
    exclusions: list[Exclusion] = []
    for entry in config.data:
        adapter = adapter_for(entry, config.classes, config.source_options())
        root = entry.partition(":")[2]
        if "://" not in root and not os.path.isdir(root):
            raise ValueError(f"data folder not found: {root}")
        for item in adapter.scan():
            (records if isinstance(item, Record) else exclusions).append(item)
    ids = Counter(r.image_id for r in records)
    clashes = [i for i, n in ids.items() if n > 1]
    if clashes:
        raise ValueError(f"two --data entries list the same images (e.g. {clashes[0]}); pass each folder once")
    _test_source(config, records, exclusions)  # an unknown name fails here, before any Beam work
    return records, exclusions


def run_example_gen(config: PipelineConfig, output_dir: str, beam_args: Sequence[str] = ()) -> dict:
    """Runs ExampleGen; writes `Split-<split>/*.tfrecord` and `ingest_report.json`; returns the report.

    Always a Beam pipeline, on the runner the Beam arguments name (locally Beam's in-memory batch
    runner; beam_options.py). An in-process thread pool without Beam was measured and not kept:
    it made ExampleGen a second, home-made runner (bench/README.md).
    """
    records, exclusions = scan_sources(config)
    if not records:
        raise ValueError(f"no usable images found in {list(config.data)} for classes {list(config.classes)}")
    makedirs(output_dir)
    # Read here, before any worker can add to it: the report names the cache files this run
    # could not use, which a worker's rewrite of the same file must not hide.
    check_cache.load.cache_clear()  # a long-lived process must see what other runs added since
    unreadable_cache_files = check_cache.load(config.ingest_cache)[1] if config.ingest_cache else ()
    # Workers write shards here; only the finalize step moves committed ones into Split-*/.
    tmp_dir = join(output_dir, f".shards-{uuid.uuid4().hex}")
    makedirs(tmp_dir)
    args = list(beam_args or config.beam_args)
    progress.start("files checked", len(records), "files")  # the console's bar (progress.py)
    try:
        _run_beam(records, exclusions, config, output_dir, tmp_dir, unreadable_cache_files, args)
    except BaseException:
        from cxrflow.stages import shard_writer  # lazy: imports Beam and TF

        shard_writer.discard(tmp_dir)  # a failed run leaves no half-written shards behind
        raise
    progress.flush("files checked")
    report = read_json(join(output_dir, REPORT_FILE))
    if report["patient_overlap"]:
        raise RuntimeError(f"{report['patient_overlap']} patients cross splits: refusing to continue")
    return report


def _run_beam(
    records: list[Record], exclusions: list[Exclusion], config: PipelineConfig, output_dir: str, tmp_dir: str,
    unreadable_cache_files: Sequence[str], beam_args: list[str],
) -> None:
    import apache_beam as beam  # lazy (these two): Beam only for a run, not for the helpers others import
    from apache_beam.options.pipeline_options import PipelineOptions

    from cxrflow.stages import shard_writer  # lazy: imports Beam and TF
    from cxrflow.stages.beam_threads import ThreadedDoFn  # lazy: imports Beam

    max_pixels = config.max_image_pixels
    # Few transforms on purpose: Beam's cost to build and translate a pipeline grows with their
    # number (DoFn signature inspection, options parsing), and on a cached re-ingest it is most
    # of the run. Collections reach the one-element steps as side inputs, not through combiners.
    options = PipelineOptions(with_local_defaults(beam_args))
    # The listing reaches the steps as a file in the run's temporary folder, not as arguments of
    # their functions: Beam pickles a DoFn's arguments and bz2-compresses them (level 9), and the
    # local runner unpickles and re-pickles each one three more times per run (0.2 s of CPU for
    # 470 records and 927 exclusions); a remote runner would carry them in its job graph.
    listing = join(tmp_dir, LISTING_FILE)
    write_listing(listing, records, exclusions)
    with beam.Pipeline(options=options) as p:
        recs = p | "Start" >> beam.Impulse() | "ListImages" >> beam.FlatMap(_listed, listing)
        if not one_local_worker(options):  # spread the files over the workers (a no-op for one)
            recs = recs | "Spread" >> beam.Reshuffle()
        check = functools.partial(_check_counted, max_pixels=max_pixels, cache_dir=config.ingest_cache)
        checks = recs | "ReadAndCheck" >> beam.ParDo(ThreadedDoFn(check))
        once = p | "Once" >> beam.Impulse()  # one element: the steps that run once, after their side inputs
        plan = once | "PlanSplits" >> beam.Map(
            _plan_step, beam.pvalue.AsList(checks), listing, config, unreadable_cache_files)
        emit = functools.partial(write_examples, max_pixels=max_pixels)
        shards = recs | "WriteExamples" >> beam.ParDo(shard_writer.WriteShards(tmp_dir, emit),
                                                      beam.pvalue.AsSingleton(plan))
        # The plan as the main input: each side input read costs Beam a deep-size walk of it.
        _ = plan | "Finalize" >> beam.Map(_finalize_step, beam.pvalue.AsList(shards), tmp_dir, output_dir)


def _listed(_, listing: str) -> list[Record]:
    return read_listing(listing)[0]


def _check_counted(record: Record, max_pixels: int, cache_dir: str) -> dict:
    check = check_record(record, max_pixels, cache_dir)
    progress.add("files checked")
    return check


def _plan_step(_, checks: list[dict], listing: str, config: PipelineConfig, unreadable_cache_files) -> dict:
    records, exclusions = read_listing(listing)
    if config.ingest_cache:
        remember_checks(checks, config.ingest_cache)
    return make_plan(checks, exclusions, records, config, unreadable_cache_files)


def _finalize_step(plan: dict, shards: list[tuple[str, str]], tmp_dir: str, output_dir: str) -> None:
    finalize_output(shards, tmp_dir, output_dir, plan)
