"""The Kaggle chest-xray-pneumonia adapter: labels and patients from file names, provided splits."""

from __future__ import annotations

import os

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import ADAPTERS, Exclusion, Record
from cxrflow.sources.kaggle import KaggleSource, parse_filename
from tests.source_trees import KAGGLE_FILES, write, write_kaggle_tree

CLASSES = ("covid", "bacterial", "normal")
SOURCE = "kaggle:chest_xray"


def scan(root: str, classes: tuple[str, ...] = CLASSES, **config) -> tuple[list[Record], list[Exclusion]]:
    config.setdefault("min_recall", ())
    config.setdefault("operating_point", ())  # likewise the default operating point
    options = PipelineConfig(data=(f"kaggle:{root}",), classes=classes, **config).source_options()
    items = list(KaggleSource(root, classes, options).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


@pytest.fixture
def tree(tmp_path) -> str:
    root = str(tmp_path / "chest_xray")
    write_kaggle_tree(root)
    return root


def test_registered():
    assert ADAPTERS["kaggle"] is KaggleSource


def test_labels_patients_and_splits(tree):
    records, exclusions = scan(tree)
    got = {os.path.relpath(r.path, tree): (r.label, r.patient_id, r.provided_split) for r in records}
    expected = {
        rel: (label, f"{SOURCE}:{patient}", split)
        for rel, (label, patient, split) in KAGGLE_FILES.items()
        if not label.startswith("finding:")
    }
    assert got == expected
    assert [(os.path.basename(e.path), e.reason) for e in exclusions] == [("person3_virus_15.jpeg", "finding:viral")]
    assert all(r.image_id == f"{SOURCE}:{os.path.relpath(r.path, tree)}" for r in records)
    # No file carries an age, but the whole set is paediatric: the source declares it.
    assert {(r.age, r.age_group) for r in records} == {("", "child")}


def test_val_kept_apart_when_not_merged(tree):
    records, _ = scan(tree, kaggle_merge_val=False)
    splits = {os.path.relpath(r.path, tree).split("/")[0]: r.provided_split for r in records}
    assert splits == {"train": "train", "val": "eval", "test": "test"}


def test_viral_kept_when_a_class_or_mapped(tree):
    records, _ = scan(tree, classes=("viral", "bacterial", "normal"))
    assert {r.label for r in records} == {"viral", "bacterial", "normal"}
    records, _ = scan(tree, classes=("pneumonia", "normal"), class_map="viral=pneumonia,bacterial=pneumonia")
    assert sum(r.label == "pneumonia" for r in records) == 6


def test_files_outside_the_layout(tree):
    write(os.path.join(tree, "README.txt"), b"about")
    write(os.path.join(tree, "train", "PNEUMONIA", "scan 7.jpeg"), b"x")
    write(os.path.join(tree, "extra", "NORMAL", "IM-0001-0001.jpeg"), b"x")
    _, exclusions = scan(tree)
    reasons = {os.path.relpath(e.path, tree): e.reason for e in exclusions}
    assert reasons["README.txt"] == "not_in_layout"
    assert reasons["extra/NORMAL/IM-0001-0001.jpeg"] == "not_in_layout"
    assert reasons["train/PNEUMONIA/scan 7.jpeg"] == "unparsed_filename"


@pytest.mark.parametrize(
    ("folder", "name", "expected"),
    [
        ("pneumonia", "person1_bacteria_1.jpeg", ("bacterial", "person1")),
        ("pneumonia", "person1946_virus_3375.jpeg", ("viral", "person1946")),
        ("pneumonia", "PERSON12_BACTERIA_9.JPEG", ("bacterial", "person12")),
        ("normal", "IM-0115-0001.jpeg", ("normal", "IM-0115")),
        ("normal", "NORMAL2-IM-1427-0001.jpeg", ("normal", "NORMAL2-IM-1427")),
        ("normal", "person1_bacteria_1.jpeg", None),  # a pneumonia name in NORMAL is not guessed
        ("other", "IM-0115-0001.jpeg", None),
    ],
)
def test_parse_filename(folder, name, expected):
    assert parse_filename(folder, name) == expected


def test_nested_copy_and_macos_leftovers_are_not_ingested_twice(tree):
    # Some downloads of the archive hold a second copy under chest_xray/ plus __MACOSX/.
    before = scan(tree)[0]
    write(os.path.join(tree, "chest_xray", "train", "NORMAL", "IM-0115-0001.jpeg"), b"x")
    write(os.path.join(tree, "__MACOSX", "train", "NORMAL", "._IM-0115-0001.jpeg"), b"x")
    records, exclusions = scan(tree)
    assert records == before
    reasons = {os.path.relpath(e.path, tree): e.reason for e in exclusions}
    assert reasons["chest_xray/train/NORMAL/IM-0115-0001.jpeg"] == "not_in_layout"
    assert not any("__MACOSX" in p for p in reasons)  # `._` files are hidden: skipped
