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


# --- patients: --patient-map and --patient-pattern ------------------------------------------


def patient_tree(root: str) -> None:
    for rel in ("covid/P001_1.png", "covid/P001_2.png", "train/normal/P002_1.png", "normal/scan7.png"):
        write(os.path.join(root, *rel.split("/")), b"not read while listing")


def patients(root: str, **options: str) -> dict[str, tuple[str, bool]]:
    items = FolderSource(root, CLASSES, options).scan()
    return {os.path.relpath(r.path, root): (r.patient_id.rpartition(":")[2], r.patient_known)
            for r in items if isinstance(r, Record)}


def test_without_patient_options_each_file_is_its_own_patient(tmp_path):
    root = str(tmp_path / "site")
    patient_tree(root)
    assert patients(root) == {"covid/P001_1.png": ("P001_1", False), "covid/P001_2.png": ("P001_2", False),
                              "train/normal/P002_1.png": ("P002_1", False), "normal/scan7.png": ("scan7", False)}


@pytest.mark.parametrize("pattern", [r"^(P\d+)_", r"(?P<visit>_\d)|^(?P<patient>P\d+)", r"P\d+"])
def test_patient_pattern(tmp_path, pattern):
    root = str(tmp_path / "site")
    patient_tree(root)
    assert patients(root, patient_pattern=pattern) == {
        "covid/P001_1.png": ("P001", True), "covid/P001_2.png": ("P001", True),
        "train/normal/P002_1.png": ("P002", True),
        "normal/scan7.png": ("scan7", False),  # no match: its own patient, counted in the report
    }


def test_patient_map_wins_over_the_pattern(tmp_path):
    root = str(tmp_path / "site")
    patient_tree(root)
    csv_path = write(str(tmp_path / "patients.csv"),
                     b"file,patient\n./covid/P001_1.png,alice\ncovid\\P001_2.png,alice\nnormal/scan7.png,bob\n")
    assert patients(root, patient_map=csv_path, patient_pattern=r"^(P\d+)_") == {
        "covid/P001_1.png": ("alice", True), "covid/P001_2.png": ("alice", True),  # ./ and \ normalised
        "train/normal/P002_1.png": ("P002", True),  # not in the map: the pattern
        "normal/scan7.png": ("bob", True),
    }
    assert patients(root, patient_map=csv_path)["train/normal/P002_1.png"] == ("P002_1", False)


@pytest.mark.parametrize(("text", "match"), [
    (b"name,patient\na.png,1\n", "columns file,patient"),
    (b"file,patient\ncovid/a.png,1\ncovid/a.png,2\n", "two patients"),
])
def test_bad_patient_map_is_refused(tmp_path, text, match):
    root = str(tmp_path / "site")
    patient_tree(root)
    with pytest.raises(ValueError, match=match):
        patients(root, patient_map=write(str(tmp_path / "p.csv"), text))


def test_bad_patient_pattern_is_refused(tmp_path):
    root = str(tmp_path / "site")
    patient_tree(root)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        patients(root, patient_pattern="(P\\d+")


def test_ingest_report_says_how_each_source_was_split(tmp_path):
    from cxrflow.config import PipelineConfig
    from cxrflow.stages.example_gen import run_example_gen
    from tests.source_trees import image_bytes

    named, bare = str(tmp_path / "named"), str(tmp_path / "bare")
    for i, label in enumerate(CLASSES * 4):
        # Two films per patient in `named`; `bare`'s files name no patient; one `named` file misses the pattern.
        name = f"P{i // 2}_{i % 2}.png" if i != 11 else "odd.png"
        write(os.path.join(named, label, name), image_bytes(label, 1500 + i, size=48))
        write(os.path.join(bare, label, f"img{i}.png"), image_bytes(label, 1600 + i, size=48))
    config = PipelineConfig(data=(f"folders:{named}", f"folders:{bare}"), patient_pattern=r"^(P\d+)_", min_recall=())
    report = run_example_gen(config, str(tmp_path / "examples"))
    unit = {name: (s["split_unit"], s["images_without_patient"]) for name, s in report["sources"].items()}
    assert unit == {"folders:named": ("patient", 1), "folders:bare": ("image", 12)}
