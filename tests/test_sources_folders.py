"""The class-per-folder adapter: folder-name aliases, `class_map` overrides, provided splits."""

from __future__ import annotations

import os

import pytest

from cxrflow.sources import ADAPTERS, Exclusion, Record
from cxrflow.sources.folders import FolderSource, label_for_name, parse_class_map
from tests.source_trees import write

CLASSES = ("covid", "bacterial", "normal")


def scan(root: str, classes: tuple[str, ...] = CLASSES, class_map: str = "") -> tuple[list[Record], list[Exclusion]]:
    items = list(FolderSource(root, classes, {"class_map": class_map}).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


def make_tree(root: str, folders: list[str]) -> None:
    for i, folder in enumerate(folders):
        write(os.path.join(root, *folder.split("/"), f"img{i}.png"), b"not read while listing")


def test_registered():
    assert ADAPTERS["folders"] is FolderSource


def test_aliases(tmp_path):
    root = str(tmp_path / "mirror")
    folders = ["covid", "covid-19", "COVID", "bacterial", "bacteria", "pneumonia_bac", "normal", "NORMAL", "other"]
    make_tree(root, folders)
    records, exclusions = scan(root)
    labels = {os.path.basename(os.path.dirname(r.path)): r.label for r in records}
    assert labels == {
        "covid": "covid",
        "covid-19": "covid",
        "COVID": "covid",
        "bacterial": "bacterial",
        "bacteria": "bacterial",
        "pneumonia_bac": "bacterial",
        "normal": "normal",
        "NORMAL": "normal",
    }
    assert [e.reason for e in exclusions] == ["unknown_label:other"]
    # Each file is its own patient, namespaced by source.
    assert len({r.patient_id for r in records}) == len(records)
    assert all(r.patient_id.startswith("folders:mirror:") for r in records)


def test_class_map_overrides_and_extends(tmp_path):
    root = str(tmp_path / "site")
    make_tree(root, ["Sick", "bacteria", "covid", "ok"])
    records, exclusions = scan(root, class_map="sick=covid, Bacteria=normal, ok=normal, covid=viral")
    labels = {os.path.basename(os.path.dirname(r.path)): r.label for r in records}
    assert labels == {"Sick": "covid", "bacteria": "normal", "ok": "normal"}
    # A mapping onto a class the run does not have excludes rather than inventing the class.
    assert [e.reason for e in exclusions] == ["unknown_label:covid"]


def test_custom_classes_by_folder_name(tmp_path):
    root = str(tmp_path / "two")
    make_tree(root, ["Pneumonia", "normal", "covid"])
    records, exclusions = scan(root, classes=("pneumonia", "normal"), class_map="covid=pneumonia")
    assert sorted(r.label for r in records) == ["normal", "pneumonia", "pneumonia"]
    assert exclusions == []


def test_provided_splits_and_layout(tmp_path):
    root = str(tmp_path / "split")
    make_tree(root, ["train/covid", "val/normal", "validation/normal", "test/bacterial", "deep/er/normal"])
    write(os.path.join(root, "loose.png"), b"x")
    records, exclusions = scan(root)
    splits = {os.path.relpath(r.path, root).split("/")[0]: r.provided_split for r in records}
    assert splits == {"train": "train", "val": "train", "validation": "eval", "test": "test"}
    assert sorted(e.reason for e in exclusions) == ["not_in_class_folder", "not_in_class_folder"]


@pytest.mark.parametrize(
    ("name", "class_map", "expected"),
    [
        ("COVID-19", "", "covid"),
        ("covid19", "", "covid"),
        ("Bacterial_Pneumonia", "", "bacterial"),
        ("Healthy", "", "normal"),
        ("viral", "", None),
        ("viral", "viral=bacterial", "bacterial"),
        ("covid", "covid=normal", "normal"),
    ],
)
def test_label_for_name(name, class_map, expected):
    assert label_for_name(name, CLASSES, class_map) == expected


def test_bad_class_map_is_refused():
    with pytest.raises(ValueError, match="FOLDER=CLASS"):
        parse_class_map("covid")
