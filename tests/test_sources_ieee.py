# ruff: noqa: E501 (verbatim CSV rows of the real metadata below)
"""The IEEE covid-chestxray-dataset adapter: listing rules only (no Beam, no pixels read)."""

from __future__ import annotations

import os
import re
from collections import Counter

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import ADAPTERS, Exclusion, Record, adapter_for
from cxrflow.sources.findings import class_for_finding, parse_finding_map
from cxrflow.sources.ieee import IeeeSource
from tests.source_trees import IEEE_HEADER, ieee_row, image_bytes, write, write_ieee_tree, write_metadata

CLASSES = ("covid", "bacterial", "normal")


def scan(root: str, classes: tuple[str, ...] = CLASSES, **config) -> tuple[list[Record], list[Exclusion]]:
    config.setdefault("min_recall", ())  # the default gate names covid, which some tests drop
    config.setdefault("operating_point", ())  # likewise the default operating point
    options = PipelineConfig(data=(f"ieee:{root}",), classes=classes, **config).source_options()
    items = list(IeeeSource(root, classes, options).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


def outcome_by_file(records: list[Record], exclusions: list[Exclusion]) -> dict[str, str]:
    got = {os.path.basename(r.path): r.label for r in records}
    for e in exclusions:
        name = "../../outside.png" if e.reason == "path_escape" else os.path.basename(e.path)
        got[name] = e.reason
    return got


@pytest.fixture
def clone(tmp_path) -> tuple[str, dict[str, str]]:
    root = str(tmp_path / "covid-chestxray-dataset")
    return root, write_ieee_tree(root)


def test_registered():
    assert ADAPTERS["ieee"] is IeeeSource


def test_current_release_rules(clone):
    root, expected = clone
    records, exclusions = scan(root)
    assert outcome_by_file(records, exclusions) == expected
    # Every row is accounted for exactly once, multi-line quoted notes notwithstanding.
    assert len(records) + len(exclusions) == len(expected)


def test_record_fields(clone):
    root, _ = clone
    records, _ = scan(root)
    by_name = {os.path.basename(r.path): r for r in records}
    first = by_name["covid-1a.png"]
    assert first.source == "ieee:covid-chestxray-dataset"
    assert first.patient_id == "ieee:covid-chestxray-dataset:1"  # namespaced by source
    assert first.image_id == "ieee:covid-chestxray-dataset:images/covid-1a.png"
    assert (first.sex, first.age, first.view) == ("F", "54", "PA")
    assert first.path == os.path.join(root, "images", "covid-1a.png")
    assert first.provided_split == ""
    assert by_name["strep-2.png"].age == ""


def test_view_option_takes_a_list(clone):
    root, _ = clone
    records, exclusions = scan(root, views=("PA", "AP", "AP Supine", "AP semi erect", "L"))
    views = {os.path.basename(r.path): r.view for r in records}
    assert (views["covid-1b.jpg"], views["covid-1c.png"]) == ("AP Supine", "L")
    assert "view" not in {e.reason for e in exclusions}
    records, exclusions = scan(root, views=("PA",))
    assert {os.path.basename(e.path) for e in exclusions if e.reason == "view"} == {"covid-1b.jpg", "covid-1c.png"}


def test_default_views_are_frontal(clone):
    root, _ = clone
    # The adapter alone (no options) keeps the config's default views: frontal, laterals out.
    items = list(IeeeSource(root, CLASSES).scan())
    kept = {os.path.basename(i.path) for i in items if isinstance(i, Record)}
    assert "covid-1b.jpg" in kept
    assert [os.path.basename(i.path) for i in items if isinstance(i, Exclusion) and i.reason == "view"] == [
        "covid-1c.png"
    ]


def test_finding_not_in_classes_is_excluded(clone):
    root, _ = clone
    records, exclusions = scan(root, classes=("covid", "normal"))
    assert "strep-2.png" not in {os.path.basename(r.path) for r in records}
    assert "finding:Pneumonia/Bacterial/Streptococcus" in {e.reason for e in exclusions}


def test_finding_map_extends_and_overrides(clone):
    root, _ = clone
    # Extends: SARS joins a new class. Overrides: the user's broad rule beats the default COVID-19 one.
    records, _ = scan(
        root, classes=("viral", "pneumonia", "normal"), finding_map="Pneumonia/Viral/SARS=viral,Pneumonia=pneumonia"
    )
    labels = {os.path.basename(r.path): r.label for r in records}
    assert labels == {
        "sars-4.png": "viral",
        "covid-1a.png": "pneumonia",
        "covid-1b.jpg": "pneumonia",
        "covid-8.png": "pneumonia",
        "strep-2.png": "pneumonia",
        "pcp-5.png": "pneumonia",
        "normal-3.png": "normal",
    }


@pytest.mark.parametrize(
    ("finding", "rules", "expected"),
    [
        ("Pneumonia/Viral/COVID-19", "", "covid"),
        ("COVID-19", "", "covid"),  # older flat value
        ("COVID-19, ARDS", "", "covid"),  # older flat value with a co-finding
        ("Pneumonia/Bacterial/Klebsiella", "", "bacterial"),
        ("Pneumonia / Bacterial / E.Coli", "", "bacterial"),
        ("Pneumonia/Bacterial", "", "bacterial"),
        ("No Finding", "", "normal"),
        ("Pneumonia/Viral/MERS-CoV", "", None),
        ("Pneumonia/Bacterialish", "", None),  # prefixes match whole path elements only
        # The 2020 releases' flat names, as spelled in their metadata.csv.
        ("Streptococcus", "", "bacterial"),
        ("Klebsiella", "", "bacterial"),
        ("E.Coli", "", "bacterial"),
        ("Legionella", "", "bacterial"),
        ("Chlamydophila", "", "bacterial"),
        ("Mycoplasma Bacterial Pneumonia", "", "bacterial"),
        ("Bacterial", "", "bacterial"),
        ("Pneumonia/Bacterial/Staphylococcus/MRSA", "", "bacterial"),
        ("Pneumonia/Bacterial/Nocardia", "", "bacterial"),
        ("No finding", "", "normal"),  # Actualmed / Figure1 spelling
        ("Pneumonia", "", None),  # cause unknown
        ("todo", "", None),
        ("Pneumocystis", "", None),
        ("SARS", "", None),
        ("ARDS", "", None),  # a syndrome alone names no class
        ("COVID-19, Streptococcus", "", None),  # two causes: no clean example of either
        ("Streptococcus, COVID-19", "", None),
        ("Pneumonia/Viral/COVID-19, ARDS", "", "covid"),
        ("Pneumonia", "Pneumonia=bacterial", "bacterial"),
        ("Pneumonia/Viral/COVID-19", "nih:Pneumonia=bacterial", "covid"),  # limited to another kind
        ("Streptococcus", "Streptococcus=atypical", "atypical"),
        ("Unknown", "", None),
        ("", "", None),
        ("Pneumonia/Viral/MERS-CoV", "pneumonia/viral=viral", "viral"),
        ("Pneumonia/Bacterial/Legionella", "Pneumonia/Bacterial/Legionella=atypical", "atypical"),
        ("Pneumonia/Bacterial/Streptococcus", "Pneumonia/Bacterial/Legionella=atypical", "bacterial"),
    ],
)
def test_class_for_finding(finding, rules, expected):
    assert class_for_finding(finding, parse_finding_map(rules, "ieee")) == expected


def test_bad_finding_map_is_refused():
    with pytest.raises(ValueError, match="FINDING_PREFIX=CLASS"):
        parse_finding_map("COVID-19")
    with pytest.raises(ValueError, match="KIND must be one of"):
        parse_finding_map("nhi:Pneumonia=bacterial")


def test_finding_map_rules_limited_to_a_kind():
    text = "Pneumonia=viral,nih:Pneumonia=bacterial,rsna:Lung Opacity=bacterial"
    assert parse_finding_map(text, "nih") == {"pneumonia": "bacterial"}
    assert parse_finding_map(text, "ieee") == {"pneumonia": "viral"}
    assert parse_finding_map(text, "rsna") == {"pneumonia": "viral", "lung opacity": "bacterial"}


def test_older_release_without_folder_modality_or_pcr_columns(tmp_path):
    root = str(tmp_path / "old-clone")
    old_header = [c for c in IEEE_HEADER if c not in ("folder", "modality", "RT_PCR_positive")]
    rows = [
        ieee_row("1", "COVID-19", "a.png"),
        ieee_row("2", "COVID-19, ARDS", "b.png"),
        ieee_row("3", "Streptococcus", "c.png"),
        ieee_row("4", "No Finding", "d.png", view="L"),
        ieee_row("5", "Mycoplasma Bacterial Pneumonia", "e.png", view="AP Supine"),
        ieee_row("6", "Pneumonia", "f.png"),
        ieee_row("7", "todo", "g.png"),
    ]
    write_metadata(root, rows, old_header)
    for i, name in enumerate("abcdefg"):
        write(os.path.join(root, "images", f"{name}.png"), image_bytes("covid", 700 + i))
    records, exclusions = scan(root)
    assert {os.path.basename(r.path): r.label for r in records} == {
        "a.png": "covid", "b.png": "covid", "c.png": "bacterial", "e.png": "bacterial"
    }
    assert Counter(e.reason for e in exclusions) == {"view": 1, "finding:Pneumonia": 1, "finding:todo": 1}


def test_two_rows_naming_one_file(tmp_path):
    root = str(tmp_path / "clone")
    write_metadata(root, [ieee_row("1", "COVID-19", "a.png"), ieee_row("1", "COVID-19", "a.png", offset="3")])
    write(os.path.join(root, "images", "a.png"), image_bytes("covid", 1))
    records, exclusions = scan(root)
    assert len(records) == 1
    assert [e.reason for e in exclusions] == ["duplicate_row"]


def test_absolute_and_symlinked_paths_escape(tmp_path):
    root = str(tmp_path / "clone")
    outside = write(str(tmp_path / "secret" / "x.png"), image_bytes("normal", 5))
    os.makedirs(os.path.join(root, "images"))
    os.symlink(outside, os.path.join(root, "images", "link.png"))
    write_metadata(root, [ieee_row("1", "No Finding", outside), ieee_row("2", "No Finding", "link.png")])
    records, exclusions = scan(root)
    assert records == []
    assert [e.reason for e in exclusions] == ["path_escape", "path_escape"]


def test_adapter_for_builds_it(clone):
    root, _ = clone
    adapter = adapter_for(f"ieee:{root}", CLASSES, {"views": "PA"})
    assert isinstance(adapter, IeeeSource)


def test_paths_under_a_bucket_keep_their_scheme():
    adapter = IeeeSource("gs://bucket/covid-chestxray-dataset", CLASSES)
    assert adapter.resolve_inside_root("images/./a.png") == "gs://bucket/covid-chestxray-dataset/images/a.png"
    assert adapter.resolve_inside_root("images/../../other/a.png") is None


# The header of the first public release (February 2020), verbatim: `Patientid`, ` url`, no
# modality or folder column, and CT slices marked in `view`. Rows are abbreviated real rows.
FIRST_RELEASE = """Patientid,offset,sex,age,finding,survival,view,date,location,filename,doi, url,license,notes
2,0,M,65,COVID-19,Y,PA,2020,,auntminnie-a-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg,10.1056/nejmc2001272,https://www.nejm.org/doi/full/10.1056/NEJMc2001272,,
2,3,M,65,COVID-19,Y,PA,2020,,auntminnie-b-2020_01_28_23_51_6665_2020_01_28_Vietnam_coronavirus.jpeg,10.1056/nejmc2001272,https://www.nejm.org/doi/full/10.1056/NEJMc2001272,,
5,,,,ARDS,,PA,2017,,ARDSSevere.png,,https://en.wikipedia.org/wiki/File:ARDSSevere.png,,Severe ARDS. Person is intubated with an OG in place.
13,4,M,35,COVID-19,Y,L,"January 19, 2020","Snohomish County, Washington, USA",nejmoa2001191_f1-L.jpeg,10.1056/NEJMoa2001191,https://www.nejm.org/doi/full/10.1056/NEJMoa2001191,,No thoracic abnormalities were noted.
17,9,M,54,COVID-19,Y,CT,2020,"Myongji Hospital, Goyang, Korea",jkms-35-e79-g001-l-d.jpg,10.3346/jkms.2020.35.e79,https://www.jkms.org/DOIx.php?id=10.3346/jkms.2020.35.e79,,"Small consolidation in right upper lobe"
"""


def _write_release(root: str, text: str) -> None:
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(text)
    for i, name in enumerate(sorted(set(re.findall(r"[\w.-]+\.(?:jpeg|jpg|png)", text)))):
        write(os.path.join(root, "images", name), image_bytes("covid", 900 + i))


def test_first_release_header_keeps_patients_together(tmp_path):
    root = str(tmp_path / "first-release")
    _write_release(root, FIRST_RELEASE)
    records, exclusions = scan(root)
    # Patient 2's two films share one patient id: the `Patientid` spelling was once missed,
    # which made each film its own patient and let one patient straddle train and test.
    assert {r.patient_id for r in records} == {"ieee:first-release:2"}
    assert len(records) == 2
    assert Counter(e.reason for e in exclusions) == {"finding:ARDS": 1, "view": 1, "modality": 1}


def test_current_header_with_trailing_comma(tmp_path):
    # The current header ends in a comma (an unnamed last column); real rows end in ",,".
    header = ",".join(IEEE_HEADER) + ","
    row = ("2,0,M,65,Pneumonia/Viral/COVID-19,Y,Y,N,N,N,N,Y,,,,,,,PA,X-ray,\"January 22, 2020\","
           "\"Cho Ray Hospital, Ho Chi Minh City, Vietnam\",images,auntminnie-a.jpeg,10.1056/nejmc2001272,"
           "https://www.nejm.org/doi/full/10.1056/NEJMc2001272,,\"a 65-year-old man,\nadmitted\",,")
    root = str(tmp_path / "current")
    _write_release(root, header + "\n" + row + "\n")
    records, exclusions = scan(root)
    assert [(r.label, r.patient_id, r.sex, r.age) for r in records] == [("covid", "ieee:current:2", "M", "65")]
    assert exclusions == []


def test_metadata_without_patient_column_is_refused(tmp_path):
    root = str(tmp_path / "clone")
    _write_release(root, "finding,view,filename\nCOVID-19,PA,a.png\n")
    with pytest.raises(ValueError, match="patientid"):
        scan(root)


def test_row_without_patient_id_is_excluded_not_guessed(tmp_path):
    root = str(tmp_path / "clone")
    write_metadata(root, [ieee_row("", "COVID-19", "a.png"), ieee_row("7", "COVID-19", "b.png")])
    for i, name in enumerate("ab"):
        write(os.path.join(root, "images", f"{name}.png"), image_bytes("covid", 950 + i))
    records, exclusions = scan(root)
    assert [os.path.basename(r.path) for r in records] == ["b.png"]
    assert [e.reason for e in exclusions] == ["no_patient_id"]


# The real 2020 metadata's findings, named as SOURCES.md lists them per class.
REAL_FINDINGS = {
    "covid": {"COVID-19", "COVID-19, ARDS"},
    "bacterial": {"Streptococcus", "Klebsiella", "Mycoplasma Bacterial Pneumonia", "E.Coli", "Legionella",
                  "Bacterial", "Chlamydophila"},
    "normal": {"No Finding"},
}


@pytest.mark.realdata
def test_real_2020_metadata(realdata):
    import csv

    root = os.path.join(realdata, "ieee")
    records, exclusions = scan(root)
    with open(os.path.join(root, "metadata.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    present = set(os.listdir(os.path.join(root, "images")))
    frontal = {"PA", "AP", "AP Supine", "AP Erect"}
    expected: dict[str, str] = {}
    for row in rows:
        label = next((c for c, names in REAL_FINDINGS.items() if row["finding"] in names), None)
        if (row["modality"] == "X-ray" and row["view"] in frontal and label and row["filename"] in present
                and row["folder"] == "images"):
            expected.setdefault(row["filename"], label)  # a file named by two rows is kept once
    assert {os.path.basename(r.path): r.label for r in records} == expected
    assert len(records) + len(exclusions) == len(rows)  # every row accounted for once
    kept = Counter(r.label for r in records)
    assert kept["bacterial"] > 0 and kept["normal"] > 0 and kept["covid"] > 100
    reasons = Counter(e.reason for e in exclusions)
    # No bacterial pathogen is left behind; `Pneumonia` alone and `todo` are.
    assert not {f"finding:{name}" for name in REAL_FINDINGS["bacterial"]} & set(reasons)
    assert reasons["finding:Pneumonia"] > 0 and reasons["finding:todo"] > 0
    assert {os.path.basename(e.path) for e in exclusions if e.reason == "view"} >= {
        r["filename"] for r in rows if r["view"] == "L" and r["filename"] in present
    }
