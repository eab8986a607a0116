"""The COVIDx adapter: label lists over image folders (listing only)."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import ADAPTERS, Exclusion, Record
from cxrflow.sources.covidx import CovidxSource
from tests.source_trees import write, write_covidx_tree

CLASSES = ("covid", "bacterial", "normal")


def scan(root: str, **config) -> tuple[list[Record], list[Exclusion]]:
    config.setdefault("min_recall", ())
    options = PipelineConfig(data=(f"covidx:{root}",), **config).source_options()
    items = list(CovidxSource(root, CLASSES, options).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


@pytest.fixture
def covidx(tmp_path) -> tuple[str, dict]:
    root = str(tmp_path / "covidx-cxr2")
    return root, write_covidx_tree(root)


def test_registered():
    assert ADAPTERS["covidx"] is CovidxSource


def test_rules_and_split(covidx):
    root, expected = covidx
    records, exclusions = scan(root)
    items = sorted([(r.path, r.label) for r in records] + [(e.path, e.reason) for e in exclusions])
    want = sorted(
        (f"{root}/{split}/{name}" if outcome != "unparsed_line" else f"{root}/{split}.txt: {name}", outcome)
        for split, rows in expected.items() for name, outcome in rows
    )
    assert items == want  # one outcome per listed line, blank lines aside
    assert {r.provided_split for r in records if "/train/" in r.path} == {"train"}
    assert {r.provided_split for r in records if "/test/" in r.path} == {"test"}


def test_patients_namespaced_by_datasource(covidx):
    root, _ = covidx
    records, _ = scan(root)
    patients = {os.path.basename(r.path): r.patient_id for r in records}
    assert patients["covid-19-pneumonia-5.jpg"] == "covidx:covidx-cxr2:cohen:5"
    assert patients["streptococcus-pneumoniae-pneumonia-1.jpg"] == "covidx:covidx-cxr2:29"  # 3-column line
    # ANON56's train film and its test copy are one patient: the splitter must see the leak.
    anon56 = {r.patient_id for r in records if "actmed" in r.patient_id}
    assert anon56 == {"covidx:covidx-cxr2:actmed:ANON56"}


def test_negative_and_pneumonia_are_mappable(covidx):
    root, _ = covidx
    records, _ = scan(root, finding_map="covidx:pneumonia=bacterial,covidx:negative=normal")
    labels = Counter(r.label for r in records)
    assert labels == {"normal": 4, "covid": 3, "bacterial": 2}


def test_val_list_and_release_named_lists(covidx, tmp_path):
    root, _ = covidx
    os.rename(os.path.join(root, "train.txt"), os.path.join(root, "train_COVIDx9A.txt"))
    write(os.path.join(root, "val.txt"), b"ANON7 a.png normal actmed\n")
    os.makedirs(os.path.join(root, "val"))
    shutil.copy(os.path.join(root, "test", "47c78742-4998-4878-aec4-37b11b1354ac.png"),
                os.path.join(root, "val", "a.png"))
    records, _ = scan(root)
    assert Counter(r.provided_split for r in records) == {"train": 5, "eval": 1, "test": 2}
    write(os.path.join(root, "train_COVIDx8A.txt"), b"")
    with pytest.raises(ValueError, match="several train lists"):
        scan(root)


def test_folder_without_lists_is_refused(tmp_path):
    os.makedirs(tmp_path / "covidx" / "train")
    with pytest.raises(ValueError, match="train.txt"):
        scan(str(tmp_path / "covidx"))
