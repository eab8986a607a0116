"""Ingest from non-local URIs: each adapter and ExampleGen on `ram://` trees, against the same tree on disk.

`ram://` goes through the same `tf.io.gfile` branch as `gs://` wherever cxrflow reads. Beam's sinks
resolve URIs through Beam's own `FileSystems` (GCSFileSystem for gs://), which has no `ram://`, so
`RamFileSystem` below maps it onto tf.io.gfile for the in-process DirectRunner.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid

import pytest
import tensorflow as tf
from apache_beam.io.filesystem import FileMetadata, FileSystem

from cxrflow import features as fk
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import read_json
from cxrflow.sources import Exclusion, Record, adapter_for
from cxrflow.stages.example_gen import REPORT_FILE, check_record, run_example_gen, split_pattern
from tests.source_trees import image_bytes, pixels, write, write_dicom, write_ieee_tree, write_kaggle_tree

gfile = tf.io.gfile
CLASSES = ("covid", "bacterial", "normal")
NAMES = {"folders": "mixed", "ieee": "covid-chestxray-dataset", "kaggle": "chest_xray", "dicom": "site"}


class RamFileSystem(FileSystem):
    """A Beam FileSystem for `ram://`, backed by tf.io.gfile (registered by being subclassed)."""

    @classmethod
    def scheme(cls) -> str:
        return "ram"

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *paths])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        gfile.makedirs(path)

    def has_dirs(self) -> bool:
        return True

    def _list(self, dir_or_prefix: str):
        for dirpath, _, files in gfile.walk(dir_or_prefix):
            yield from (self.metadata(f"{dirpath.rstrip('/')}/{name}") for name in files)

    def create(self, path: str, *args, **kwargs) -> gfile.GFile:
        return gfile.GFile(path, "wb")

    def open(self, path: str, *args, **kwargs) -> gfile.GFile:
        return gfile.GFile(path, "rb")

    def copy(self, sources: list[str], destinations: list[str]) -> None:
        for src, dst in zip(sources, destinations, strict=True):
            gfile.copy(src, dst, overwrite=True)

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        for src, dst in zip(sources, destinations, strict=True):
            gfile.rename(src, dst, overwrite=True)

    def exists(self, path: str) -> bool:
        return gfile.exists(path)

    def size(self, path: str) -> int:
        return gfile.stat(path).length

    def last_updated(self, path: str) -> float:
        return gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            if gfile.isdir(path):
                gfile.rmtree(path)
            elif gfile.exists(path):
                gfile.remove(path)


def ram_base() -> str:
    return f"ram://cxrflow-test-{uuid.uuid4().hex}"


def upload(local: str, remote: str) -> None:
    """Copies a local tree into `remote` byte for byte, hidden files included."""
    for dirpath, _, files in os.walk(local):
        rel = os.path.relpath(dirpath, local).replace(os.sep, "/")
        target = remote if rel == "." else f"{remote}/{rel}"
        gfile.makedirs(target)
        for name in files:
            gfile.copy(os.path.join(dirpath, name), f"{target}/{name}")


def write_folders_tree(root: str) -> None:
    for i, label in enumerate(CLASSES * 2):
        write(os.path.join(root, label, f"{label}-{i}.png"), image_bytes(label, 700 + i, size=48))
    write(os.path.join(root, "train", "covid", "split.jpg"), image_bytes("covid", 710, "jpeg_rgb", 48))
    write(os.path.join(root, "other", "x.png"), image_bytes("normal", 711, size=48))  # unknown_label:other
    write(os.path.join(root, "loose.png"), image_bytes("normal", 712, size=48))  # not_in_class_folder
    write(os.path.join(root, "normal", "zero.png"), b"")  # empty
    write(os.path.join(root, "normal", "truncated.png"), image_bytes("normal", 713, size=64)[:300])  # corrupt


def write_dicom_tree(root: str) -> None:
    write_dicom(os.path.join(root, "covid", "a.dcm"), pixels("covid", 800, 48), patient_id="P1", age="030Y")
    write_dicom(os.path.join(root, "train", "normal", "b.dcm"), pixels("normal", 801, 48), patient_id="P2", view="AP")
    write(os.path.join(root, "normal", "noheader.dcm"), b"not a dicom file")  # listed; patient from the stem
    write(os.path.join(root, "normal", "notes.txt"), b"x")  # not_dicom


BUILDERS = {"folders": write_folders_tree, "ieee": write_ieee_tree, "kaggle": write_kaggle_tree,
            "dicom": write_dicom_tree}


def scan(kind: str, root: str, base: str, local_base: str) -> list[Record | Exclusion]:
    """The adapter's output, with `base` in every path swapped for `local_base`, sorted."""
    items = adapter_for(f"{kind}:{root}", CLASSES, PipelineConfig().source_options()).scan()
    return sorted((dataclasses.replace(i, path=i.path.replace(base, local_base, 1)) for i in items), key=repr)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_scan_on_ram_matches_local(kind: str, tmp_path) -> None:
    local_root, base = str(tmp_path / NAMES[kind]), ram_base()
    BUILDERS[kind](local_root)
    upload(local_root, f"{base}/{NAMES[kind]}")
    remote = scan(kind, f"{base}/{NAMES[kind]}", base, str(tmp_path))
    assert remote == scan(kind, local_root, base, str(tmp_path))
    records = [r for r in remote if isinstance(r, Record)]
    assert records and any(isinstance(i, Exclusion) for i in remote)
    assert {r.image_id.partition(":")[2].partition(":")[0] for r in records} == {NAMES[kind]}
    if kind == "dicom":  # headers really read through gfile, not silently empty on both sides
        a = next(r for r in records if r.image_id.endswith("covid/a.dcm"))
        assert (a.patient_id, a.view, a.sex, a.age) == ("dicom:site:P1", "PA", "F", "30")


def test_hidden_files_are_skipped_on_ram_too(tmp_path) -> None:
    local_root, base = str(tmp_path / "mixed"), ram_base()
    write_folders_tree(local_root)
    write(os.path.join(local_root, "normal", ".DS_Store"), b"\0\0\0\1Bud1")
    write(os.path.join(local_root, ".git", "config"), b"[core]\n")
    upload(local_root, f"{base}/mixed")
    assert scan("folders", f"{base}/mixed", base, str(tmp_path)) == scan("folders", local_root, base, str(tmp_path))


@pytest.mark.parametrize("where", ["local", "ram"])
def test_file_gone_before_read_is_reported_missing(where: str, tmp_path) -> None:
    path = str(tmp_path / "gone.png") if where == "local" else f"{ram_base()}/mixed/normal/gone.png"
    record = Record(path, "folders:mixed:normal/gone.png", "normal", "folders:mixed:gone", "folders:mixed")
    assert check_record(record, 50_000_000)["reason"] == "missing_file"


def read_examples(out: str) -> dict[str, list[bytes]]:
    return {s: sorted(tf.data.TFRecordDataset(sorted(gfile.glob(split_pattern(out, s)))).as_numpy_iterator())
            for s in fk.SPLITS}


@pytest.fixture(scope="module")
def ingest(tmp_path_factory) -> dict:
    local_base, base = str(tmp_path_factory.mktemp("remote") / "in"), ram_base()
    for kind in ("folders", "ieee", "kaggle"):
        BUILDERS[kind](os.path.join(local_base, NAMES[kind]))
        upload(os.path.join(local_base, NAMES[kind]), f"{base}/{NAMES[kind]}")
    runs = {}
    for where, root, out in (("local", local_base, f"{local_base}-out"), ("ram", base, f"{base}/out")):
        config = PipelineConfig(data=tuple(f"{k}:{root}/{NAMES[k]}" for k in ("folders", "ieee", "kaggle")))
        runs[where] = {"report": run_example_gen(config, out), "examples": read_examples(out), "out": out}
    return {"base": base, "local_base": local_base, **runs}


def test_example_gen_writes_tfrecords_and_report_to_ram(ingest) -> None:
    out, report = ingest["ram"]["out"], ingest["ram"]["report"]
    assert read_json(f"{out}/{REPORT_FILE}") == report
    assert report["patient_overlap"] == 0
    files = [f"{os.path.relpath(d, out)}/{n}".removeprefix("./") for d, _, names in gfile.walk(out) for n in names]
    shard = re.compile(r"^Split-(train|eval|test)/data-\d{5}-of-\d{5}\.tfrecord$")
    assert [f for f in files if f != REPORT_FILE and not shard.match(f)] == []  # no temp files or dirs left
    for split in fk.SPLITS:
        assert len(ingest["ram"]["examples"][split]) == sum(report["splits"][split].values()) > 0, split


def test_example_gen_on_ram_matches_local_run(ingest) -> None:
    assert ingest["ram"]["examples"] == ingest["local"]["examples"]  # byte-identical examples, same splits
    remote = json.loads(json.dumps(ingest["ram"]["report"]).replace(ingest["base"], ingest["local_base"]))
    assert remote == ingest["local"]["report"]


def test_bad_files_in_ram_tree_are_reported_with_their_reason(ingest) -> None:
    base = ingest["base"]
    skipped = {row["path"]: row["reason"] for row in ingest["ram"]["report"]["skipped"]}
    assert skipped[f"{base}/mixed/normal/zero.png"] == "empty"
    assert skipped[f"{base}/mixed/normal/truncated.png"] == "corrupt"
    assert skipped[f"{base}/covid-chestxray-dataset/images/missing-9.png"] == "missing_file"
    assert skipped[f"{base}/covid-chestxray-dataset/images/../../outside.png"] == "path_escape"
    assert skipped[f"{base}/chest_xray/train/PNEUMONIA/person3_virus_15.jpeg"] == "finding:viral"
