"""ExampleGen's Beam pipeline writes every kept image once, byte for byte, through the shard
writer: by default (one in-memory worker, a thread pool in each DoFn) and on the DirectRunner's
worker threads alike (several bundles, the records reshuffled). Also the shard writer's finalize step."""

from __future__ import annotations

import glob
import os

import pytest
import tensorflow as tf

from cxrflow import features as fk
from cxrflow.stages import shard_writer
from cxrflow.stages.example_gen import run_example_gen, split_pattern


def _examples(out: str) -> dict[str, list[tuple[str, bytes]]]:
    """(image id, image bytes) per split, sorted, read back from the TFRecords."""
    got = {}
    for split in fk.SPLITS:
        rows = []
        for raw in tf.data.TFRecordDataset(sorted(glob.glob(split_pattern(out, split)))):
            feats = tf.train.Example.FromString(raw.numpy()).features.feature
            rows.append((feats[fk.IMAGE_ID_KEY].bytes_list.value[0].decode(), feats[fk.IMAGE_KEY].bytes_list.value[0]))
        got[split] = sorted(rows)
    return got


@pytest.fixture(scope="module")
def both_modes(tiny_config, tmp_path_factory):
    base = tmp_path_factory.mktemp("modes")
    local = run_example_gen(tiny_config, str(base / "local"))  # default: one worker, threads in the DoFns
    beam = run_example_gen(tiny_config, str(base / "beam"), ["--runner=FnApiRunner", "--direct_num_workers=2",
                                                             "--direct_running_mode=multi_threading"])
    return (local, str(base / "local")), (beam, str(base / "beam"))


def test_default_and_multi_worker_runs_write_the_same_examples_and_report(both_modes, tiny_data):
    (local_report, local_dir), (beam_report, beam_dir) = both_modes
    assert local_report == beam_report
    local, beam = _examples(local_dir), _examples(beam_dir)
    assert local == beam
    # Every image file of the tiny set is distinct, so each is one example, stored as found.
    files = {os.path.relpath(os.path.join(dp, f), tiny_data): os.path.join(dp, f)
             for dp, _, fs in os.walk(tiny_data) for f in fs}
    stored = [row for rows in local.values() for row in rows]
    assert len(stored) == len(files) - local_report["duplicates_removed"]
    for image_id, data in stored:
        with open(files[image_id.rsplit(":", 1)[1]], "rb") as f:  # ids are "<source>:<relative path>"
            assert f.read() == data
    assert not [d for d in os.listdir(local_dir) if d.startswith(".shards-")]  # temporary files are gone


def _shard(folder, name: str, records: list[bytes]) -> str:
    path = os.path.join(folder, name)
    with tf.io.TFRecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    return path


def test_finalize_keeps_only_committed_shards_and_fills_empty_splits(tmp_path):
    tmp = tmp_path / ".shards-x"
    tmp.mkdir()
    committed = [("train", _shard(tmp, "a.tfrecord", [b"1", b"2"])), ("train", _shard(tmp, "b.tfrecord", [b"3"])),
                 ("eval", _shard(tmp, "c.tfrecord", [b"4"]))]
    _shard(tmp, "retried.tfrecord", [b"lost attempt"])  # a bundle the runner retried: never committed
    splits = {s: str(tmp_path / f"Split-{s}") for s in fk.SPLITS}
    os.makedirs(splits["train"])
    _shard(splits["train"], "data-00000-of-00009.tfrecord", [b"stale"])  # an earlier run's output

    counts = shard_writer.finalize(committed, str(tmp), splits)

    assert counts == {"train": 2, "eval": 1, "test": 1}
    assert sorted(os.listdir(splits["train"])) == ["data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    read = {s: sorted(r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(f"{d}/*.tfrecord"))))
            for s, d in splits.items()}
    assert read == {"train": [b"1", b"2", b"3"], "eval": [b"4"], "test": []}
    assert not tmp.exists()


@pytest.mark.parametrize("beam_args", [[], ["--direct_num_workers=1"]], ids=["in_process", "beam"])
def test_a_file_gone_between_the_passes_is_a_clear_error_and_leaves_no_shards(
    tiny_config, tmp_path, monkeypatch, beam_args
):
    from cxrflow.stages import example_gen

    reads: dict[str, int] = {}
    real_read = example_gen._read

    def read_once(path: str) -> bytes:  # the second read (pass two) finds the file deleted
        reads[path] = reads.get(path, 0) + 1
        if reads[path] > 1:
            raise FileNotFoundError(path)
        return real_read(path)

    monkeypatch.setattr(example_gen, "_read", read_once)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="changed during the ingest"):
        run_example_gen(tiny_config, str(out), beam_args)
    assert not [d for d in os.listdir(out) if d.startswith(".shards-")]
    assert not (out / "ingest_report.json").exists()
