"""The NIH ChestX-ray14 adapter on its real layouts (listing only)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import ADAPTERS, Exclusion, Record
from cxrflow.sources.nih import NihSource, nih_age
from tests.source_trees import write, write_nih_tree

CLASSES = ("covid", "bacterial", "normal")


def scan(root: str, classes: tuple[str, ...] = CLASSES, **config) -> tuple[list[Record], list[Exclusion]]:
    config.setdefault("min_recall", ())
    config.setdefault("operating_point", ())  # likewise the default operating point
    options = PipelineConfig(data=(f"nih:{root}",), classes=classes, **config).source_options()
    items = list(NihSource(root, classes, options).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


def outcomes(records: list[Record], exclusions: list[Exclusion]) -> dict[str, str]:
    got = {os.path.basename(r.path): r.label for r in records}
    got.update({os.path.basename(e.path): e.reason for e in exclusions})
    return got


def test_registered():
    assert ADAPTERS["nih"] is NihSource


@pytest.mark.parametrize("split_folders", [True, False], ids=["images_NNN", "images"])
def test_rules_in_both_layouts(tmp_path, split_folders):
    root = str(tmp_path / "nih-chest-xrays")
    expected = write_nih_tree(root, split_folders)
    records, exclusions = scan(root)
    assert outcomes(records, exclusions) == expected
    assert len(records) + len(exclusions) == len(expected)
    by_name = {os.path.basename(r.path): r for r in records}
    first = by_name["00000002_000.png"]
    assert (first.patient_id, first.view, first.age, first.sex) == ("nih:nih-chest-xrays:2", "PA", "80", "M")
    assert by_name["00000002_001.png"].patient_id == first.patient_id  # follow-up of the same patient
    assert by_name["00000004_000.png"].age == ""  # 148 years: a typing error, read as unknown
    assert first.image_id.startswith("nih:nih-chest-xrays:images")


def test_pneumonia_is_mappable_but_multi_label_stays_out(tmp_path):
    root = str(tmp_path / "nih")
    write_nih_tree(root)
    records, exclusions = scan(root, finding_map="nih:Pneumonia=bacterial")
    assert Counter(r.label for r in records) == {"normal": 3, "bacterial": 1}
    assert Counter(e.reason for e in exclusions)["multi_label"] == 2


def test_views_filter(tmp_path):
    root = str(tmp_path / "nih")
    write_nih_tree(root)
    records, exclusions = scan(root, views=("PA",))
    assert "00000002_001.png" in {os.path.basename(e.path) for e in exclusions if e.reason == "view"}
    assert {r.view for r in records} == {"PA"}


def test_v2020_file_is_preferred(tmp_path):
    root = str(tmp_path / "nih")
    write_nih_tree(root)
    # The v2020 revision, here with the age fixed and `Patient Sex` spelled as some copies do.
    write(os.path.join(root, "Data_Entry_2017_v2020.csv"),
          b"Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position\n"
          b"00000004_000.png,No Finding,0,4,48,F,PA\n")
    records, exclusions = scan(root)
    assert [(os.path.basename(r.path), r.age, r.sex) for r in records] == [("00000004_000.png", "48", "F")]
    assert exclusions == []


def test_without_entry_file_is_refused(tmp_path):
    os.makedirs(tmp_path / "nih" / "images")
    with pytest.raises(ValueError, match="Data_Entry_2017"):
        scan(str(tmp_path / "nih"))


@pytest.mark.parametrize(("value", "expected"), [("58", "58"), ("058Y", "58"), ("148", ""), ("", ""), ("x", "")])
def test_nih_age(value, expected):
    assert nih_age(value) == expected
