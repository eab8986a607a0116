"""ExampleGen's two passes run in this process on a thread pool: the default for local runs.

Beam's DirectRunner spends about 1 s of CPU per pipeline on building, translating and
scheduling it, whatever the data. On the real development set (470 files), that was two
thirds of a re-ingest answered from the check cache and a third of a first ingest
(bench/README.md). Here the very functions of the Beam pipeline (check_record, make_plan,
write_examples, the shard writer's files and finalize) run on one thread per core instead:
PIL's decoders, SHA-256, file reads and TFRecord writes release the GIL, so the threads use
every core. Any `--beam-arg` selects the Beam pipeline (run_example_gen).

Memory stays flat as on Beam: pass one keeps only metadata, and pass two streams each file
from disk to its shard; nothing holds more than one image per thread.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cxrflow import progress
from cxrflow.config import PipelineConfig
from cxrflow.sources import Exclusion, Record
from cxrflow.stages import shard_writer
from cxrflow.stages.example_gen import check_record, finalize_output, make_plan, remember_checks, write_examples


def run(
    records: list[Record], exclusions: list[Exclusion], config: PipelineConfig, output_dir: str, tmp_dir: str,
    workers: int, unreadable_cache_files: Sequence[str] = (),
) -> None:
    """Checks every record, plans the splits, writes the examples and the report."""
    max_pixels = config.max_image_pixels

    def check(record: Record) -> dict:
        return progress.passthrough(check_record(record, max_pixels, config.ingest_cache), "files checked")

    with ThreadPoolExecutor(workers) as pool:
        checks = list(pool.map(check, records))
    if config.ingest_cache:
        remember_checks(checks, config.ingest_cache)
    plan = make_plan(checks, exclusions, records, config, unreadable_cache_files)

    # Listing order groups files by source and class; a seeded shuffle spreads them over the
    # shards as Beam's reshuffle does, so a bounded shuffle buffer later still mixes classes.
    order = random.Random(config.seed).sample(records, len(records))

    def write_part(part: int) -> list[tuple[str, str]]:
        files = shard_writer.ShardFiles(tmp_dir)
        try:
            for record in order[part::workers]:
                for split, example in write_examples(record, plan, max_pixels):
                    files.write(split, example)
        finally:
            shards = files.close()
        return shards

    with ThreadPoolExecutor(workers) as pool:
        shards = [shard for part in pool.map(write_part, range(workers)) for shard in part]
    finalize_output(shards, tmp_dir, output_dir, plan)
