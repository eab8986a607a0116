"""The RSNA Pneumonia Detection Challenge adapter on the Kaggle layout (listing only)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from cxrflow.config import PipelineConfig
from cxrflow.sources import ADAPTERS, Exclusion, Record
from cxrflow.sources.rsna import RsnaSource
from tests.source_trees import write, write_rsna_tree

CLASSES = ("covid", "bacterial", "normal")
NORMAL_PA = "003d8fa0-6bf1-40ed-b54c-ac657f8495c5"


def scan(root: str, **config) -> tuple[list[Record], list[Exclusion]]:
    config.setdefault("min_recall", ())
    options = PipelineConfig(data=(f"rsna:{root}",), **config).source_options()
    items = list(RsnaSource(root, CLASSES, options).scan())
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Exclusion)]


def by_image(records: list[Record], exclusions: list[Exclusion]) -> dict[str, str]:
    got = {os.path.basename(r.path)[:-4]: r.label for r in records}
    got.update({os.path.basename(e.path)[:-4]: e.reason for e in exclusions})
    return got


@pytest.fixture
def download(tmp_path) -> tuple[str, dict[str, str]]:
    root = str(tmp_path / "rsna-pneumonia-detection-challenge")
    return root, write_rsna_tree(root)


def test_registered():
    assert ADAPTERS["rsna"] is RsnaSource


def test_rules(download):
    root, expected = download
    records, exclusions = scan(root)
    # One outcome per image, however many box rows it has; test images are not listed.
    assert by_image(records, exclusions) == expected
    assert len(records) + len(exclusions) == len(expected)


def test_fields_from_dicom_tags(download):
    root, _ = download
    records, _ = scan(root)
    r = next(r for r in records if NORMAL_PA in r.path)
    assert (r.view, r.sex, r.age) == ("PA", "F", "41")
    assert r.patient_id == f"rsna:rsna-pneumonia-detection-challenge:{NORMAL_PA}"
    assert r.image_id == f"rsna:rsna-pneumonia-detection-challenge:stage_2_train_images/{NORMAL_PA}.dcm"
    # patientId names an image: the split is by image and the report says so.
    assert not r.patient_known


def test_lung_opacity_is_mappable(download):
    root, _ = download
    records, exclusions = scan(root, finding_map="rsna:Lung Opacity=bacterial")
    assert Counter(r.label for r in records) == {"normal": 2, "bacterial": 2}
    assert Counter(e.reason for e in exclusions) == {"finding:No Lung Opacity / Not Normal": 1, "missing_file": 1}


def test_views_from_tags_are_filtered(download):
    root, _ = download
    records, exclusions = scan(root, views=("PA",))
    assert {r.view for r in records} == {"PA"}
    assert Counter(e.reason for e in exclusions)["view"] == 1


def test_class_and_target_disagreeing(download):
    root, _ = download
    with open(os.path.join(root, "stage_2_train_labels.csv"), "a") as f:
        f.write(f"{NORMAL_PA},10.0,10.0,50.0,50.0,1\n")  # a box on an image classed Normal
    records, exclusions = scan(root)
    assert NORMAL_PA not in {os.path.basename(r.path)[:-4] for r in records}
    assert [e.reason for e in exclusions if NORMAL_PA in e.path] == ["conflicting_labels"]


def test_without_class_file_is_refused(tmp_path):
    write(str(tmp_path / "rsna" / "stage_2_train_labels.csv"), b"patientId,x,y,width,height,Target\n")
    with pytest.raises(ValueError, match="detailed_class_info"):
        scan(str(tmp_path / "rsna"))
