"""The COVID-Net team's sets (`actualmed`, `figure1`): listing rules on their real layouts."""

from __future__ import annotations

import csv
import os
from collections import Counter

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import ADAPTERS, Exclusion, Record, adapter_for
from cxrflow.sources.covidnet import ActualmedSource, Figure1Source
from tests.source_trees import image_bytes, write, write_actualmed_tree, write_figure1_tree

CLASSES = ("covid", "bacterial", "normal")


def scan(kind: str, root: str, classes: tuple[str, ...] = CLASSES, **config) -> tuple[list[Record], list[Exclusion]]:
    config.setdefault("min_recall", ())
    config.setdefault("operating_point", ())  # likewise the default operating point
    options = PipelineConfig(data=(f"{kind}:{root}",), classes=classes, **config).source_options()
    items = list(adapter_for(f"{kind}:{root}", classes, options).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


def test_registered():
    assert ADAPTERS["actualmed"] is ActualmedSource
    assert ADAPTERS["figure1"] is Figure1Source


def test_actualmed_rules(tmp_path):
    root = str(tmp_path / "Actualmed-COVID-chestxray-dataset")
    expected = write_actualmed_tree(root)
    records, exclusions = scan("actualmed", root)
    got = {os.path.basename(r.path): r.label for r in records}
    got.update({os.path.basename(e.path): e.reason for e in exclusions})
    assert got == expected
    assert len(records) + len(exclusions) == len(expected)  # one outcome per row
    covid = next(r for r in records if r.label == "covid")
    assert covid.patient_id == "actualmed:Actualmed-COVID-chestxray-dataset:ANON100"
    assert covid.image_id == f"actualmed:Actualmed-COVID-chestxray-dataset:images/{os.path.basename(covid.path)}"
    assert (covid.view, covid.age, covid.age_group, covid.provided_split) == ("PA", "", "", "")
    # ANON56's two films are one patient.
    assert Counter(r.patient_id.rpartition(":")[2] for r in records if r.label == "normal") == {"ANON56": 2,
                                                                                                 "ANON239": 1}


def test_actualmed_pneumonia_is_mappable(tmp_path):
    root = str(tmp_path / "actualmed")
    write_actualmed_tree(root)
    records, exclusions = scan("actualmed", root, finding_map="actualmed:Pneumonia=bacterial")
    assert Counter(r.label for r in records) == {"normal": 3, "covid": 1, "bacterial": 1}
    assert "finding:Pneumonia" not in {e.reason for e in exclusions}


def test_actualmed_without_imagename_column_is_refused(tmp_path):
    root = str(tmp_path / "actualmed")
    write(os.path.join(root, "metadata.csv"), b"patientid,finding,view\nANON1,COVID-19,PA\n")
    with pytest.raises(ValueError, match="imagename"):
        scan("actualmed", root)


def test_actualmed_path_escape(tmp_path):
    root = str(tmp_path / "actualmed")
    write(str(tmp_path / "secret.png"), image_bytes("normal", 3))
    write(os.path.join(root, "metadata.csv"),
          b"patientid,finding,view,imagename\nANON1,No finding,PA,../../secret.png\n")
    os.makedirs(os.path.join(root, "images"))
    records, exclusions = scan("actualmed", root)
    assert records == [] and [e.reason for e in exclusions] == ["path_escape"]


def test_figure1_rules(tmp_path):
    root = str(tmp_path / "Figure1-COVID-chestxray-dataset")
    expected = write_figure1_tree(root)
    records, exclusions = scan("figure1", root)
    got = {os.path.splitext(os.path.basename(r.path))[0]: r.label for r in records}
    got.update({os.path.basename(e.path).split(".")[0]: e.reason for e in exclusions})
    assert got == expected
    assert len(records) + len(exclusions) == len(expected)
    by_stem = {os.path.splitext(os.path.basename(r.path))[0]: r for r in records}
    # Films a and b of one case are one patient; the suffix-free id is kept as is.
    assert by_stem["COVID-00003a"].patient_id == by_stem["COVID-00003b"].patient_id == (
        "figure1:Figure1-COVID-chestxray-dataset:COVID-00003")
    assert by_stem["COVID-00040a"].patient_id.endswith(":COVID-00040")
    assert by_stem["COVID-00012"].path.endswith("images/COVID-00012.png")  # varying extension
    assert (by_stem["COVID-00003a"].view, by_stem["COVID-00003a"].age, by_stem["COVID-00003a"].sex) == (
        "AP erect", "28", "M")
    assert by_stem["COVID-00040a"].age == "early 40s"  # as given; the age group reads the number


def test_figure1_extension_case(tmp_path):
    root = str(tmp_path / "figure1")
    write(os.path.join(root, "metadata.csv"), b"patientid,finding\nCOVID-00001,COVID-19\n")
    write(os.path.join(root, "images", "COVID-00001.JPG"), image_bytes("covid", 4, "jpeg_rgb"))
    records, _ = scan("figure1", root)
    assert [os.path.basename(r.path) for r in records] == ["COVID-00001.JPG"]


# --- the real Actualmed snapshot -----------------------------------------------------------


@pytest.mark.realdata
def test_real_actualmed(realdata):
    root = os.path.join(realdata, "actualmed")
    records, exclusions = scan("actualmed", root)
    with open(os.path.join(root, "metadata.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    present = set(os.listdir(os.path.join(root, "images")))
    names = {"COVID-19": "covid", "No finding": "normal"}
    kept = Counter(names[r["finding"]] for r in rows if r["finding"] in names and r["imagename"] in present)
    blank = sum(1 for r in rows if not r["finding"].strip())
    missing = sum(1 for r in rows if r["finding"] in names and r["imagename"] not in present)
    assert (len(rows), kept, blank) == (238, {"covid": 1, "normal": 1}, 53)  # as SOURCES.md says
    assert Counter(r.label for r in records) == kept
    assert Counter(e.reason for e in exclusions) == {"unlabelled": blank, "missing_file": missing}
    assert len(records) + len(exclusions) == len(rows)
