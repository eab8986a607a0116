"""ExampleGen on the real X-rays (ieee + kaggle + actualmed), with exact accounting.

Every expected number is worked out here from the files and the metadata (csv, os.listdir,
sha256), following the documented rules, never from the code under test: kept per class and
excluded per reason, summing to every metadata row and every file; every class in every split;
no patient in two splits; the byte-identical Kaggle pair collapsed; viral and laterals excluded.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import re
from collections import Counter, defaultdict

import pytest

from cxrflow import features as fk
from cxrflow.config import PipelineConfig

pytestmark = pytest.mark.realdata

VIEWS = ("PA", "AP", "AP Supine")
# The classes of the findings these snapshots use (issue 11 and SOURCES.md); anything else is
# excluded as finding:<value>.
COVID = {"covid-19", "covid-19, ards"}
BACTERIAL = {"streptococcus", "klebsiella", "e.coli", "legionella", "chlamydophila",
             "mycoplasma bacterial pneumonia", "bacterial"}
NORMAL = {"no finding"}
# SOURCES.md: the two IEEE files whose pixels are near-identical (the later one is the copy).
NEAR_COPIES = {"images/AR-2.jpg": "images/AR-1.jpg"}


def finding_class(finding: str) -> str | None:
    key = finding.strip().lower()
    return "covid" if key in COVID else "bacterial" if key in BACTERIAL else "normal" if key in NORMAL else None


def view_ok(view: str) -> bool:
    return " ".join(view.lower().split()) in {v.lower() for v in VIEWS}


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def expected_ieee(root: str) -> dict:
    """Rules in order: modality, view, finding, missing file, patient id, second row of a file."""
    files = set(os.listdir(os.path.join(root, "images")))
    kept, excluded, seen, patients = Counter(), Counter(), set(), {}
    with open(os.path.join(root, "metadata.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        label = finding_class(row["finding"])
        if re.sub(r"[^a-z]", "", row["modality"].lower()) != "xray":
            excluded["modality"] += 1
        elif not view_ok(row["view"]):
            excluded["view"] += 1
        elif label is None:
            excluded[f"finding:{row['finding']}"] += 1
        elif row["folder"] != "images" or row["filename"] not in files:
            excluded["missing_file"] += 1
        elif not row["patientid"]:
            excluded["no_patient_id"] += 1
        elif row["filename"] in seen:
            excluded["duplicate_row"] += 1
        else:
            seen.add(row["filename"])
            kept[label] += 1
            patients[f"images/{row['filename']}"] = (label, row["patientid"])
    return {"rows": len(rows), "kept": kept, "excluded": excluded, "images": patients, "files": files,
            "named": {r["filename"] for r in rows if r["folder"] == "images"}}


def expected_kaggle(root: str) -> dict:
    kept, excluded, images = Counter(), Counter(), {}
    files = sorted(glob.glob(os.path.join(root, "*", "*", "*")))
    for path in files:
        rel = os.path.relpath(path, root)
        name = os.path.basename(path)
        label = "normal" if "/NORMAL/" in f"/{rel}" else "bacterial" if "_bacteria_" in name else None
        if label is None:
            excluded["finding:viral"] += 1
            continue
        images[rel] = label
    # Byte-identical files: the copy with the larger path (image id) is the duplicate.
    by_hash = defaultdict(list)
    for rel in images:
        by_hash[sha256(os.path.join(root, rel))].append(rel)
    copies = {rel: sorted(group)[0] for group in by_hash.values() for rel in sorted(group)[1:]}
    for rel, label in images.items():
        if rel in copies:
            excluded["duplicate"] += 1
        else:
            kept[label] += 1
    return {"rows": len(files), "kept": kept, "excluded": excluded, "copies": copies}


def expected_actualmed(root: str) -> dict:
    files = {name.lower() for name in os.listdir(os.path.join(root, "images"))}
    kept, excluded = Counter(), Counter()
    with open(os.path.join(root, "metadata.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        label = {"covid-19": "covid", "no finding": "normal"}.get(row["finding"].strip().lower())
        if row["view"] and not view_ok(row["view"]):
            excluded["view"] += 1
        elif not row["finding"]:
            excluded["unlabelled"] += 1
        elif label is None:
            excluded[f"finding:{row['finding']}"] += 1
        elif row["imagename"].lower() not in files:
            excluded["missing_file"] += 1
        else:
            kept[label] += 1
    return {"rows": len(rows), "kept": kept, "excluded": excluded}


@pytest.fixture(scope="module")
def ingested(realdata, tmp_path_factory):
    import tensorflow as tf

    from cxrflow.stages.example_gen import run_example_gen, split_pattern

    roots = {kind: os.path.join(realdata, kind) for kind in ("ieee", "kaggle", "actualmed")}
    config = PipelineConfig(data=tuple(f"{k}:{r}" for k, r in roots.items()), views=VIEWS)
    out = str(tmp_path_factory.mktemp("realdata") / "examples")
    report = run_example_gen(config, out)
    keys = (fk.IMAGE_ID_KEY, fk.LABEL_KEY, fk.PATIENT_ID_KEY, fk.VIEW_KEY, fk.SOURCE_KEY)
    examples = {}
    for split in fk.SPLITS:
        for raw in tf.data.TFRecordDataset(tf.io.gfile.glob(split_pattern(out, split))):
            parsed = tf.io.parse_single_example(raw, fk.raw_feature_spec(keys))
            row = {k: v.numpy().decode() for k, v in parsed.items()}
            examples[row[fk.IMAGE_ID_KEY]] = dict(row, split=split)
    return {"report": report, "examples": examples, "roots": roots}


def test_every_row_and_file_is_kept_or_excluded_with_its_reason(ingested):
    report, roots = ingested["report"], ingested["roots"]
    ieee = expected_ieee(roots["ieee"])
    ieee["kept"].subtract(Counter(ingested_label(ieee, rel) for rel in NEAR_COPIES))
    ieee["excluded"]["duplicate"] += len(NEAR_COPIES)
    kaggle = expected_kaggle(roots["kaggle"])
    actualmed = expected_actualmed(roots["actualmed"])
    for name, expected in (("ieee:ieee", ieee), ("kaggle:kaggle", kaggle), ("actualmed:actualmed", actualmed)):
        got = report["sources"][name]
        assert got["rows"] == expected["rows"], name
        assert got["kept"] == +expected["kept"], name
        assert got["excluded"] == +expected["excluded"], name
        assert sum(got["kept"].values()) + sum(got["excluded"].values()) == got["rows"], name
    # The snapshot's documented totals (SOURCES.md), as a check on the rules above.
    assert ieee["rows"] == 751 and kaggle["rows"] == 408 and actualmed["rows"] == 238
    assert Counter(label for label, _ in ieee["images"].values()) == {"covid": 107, "bacterial": 31, "normal": 19}
    assert ieee_files_by_class(roots["ieee"], ieee["files"]) == {"covid": 111, "bacterial": 41, "normal": 19}
    # Every IEEE file is named by a row, so the rows account for every file too.
    assert ieee["files"] <= ieee["named"] and len(ieee["files"]) == 171
    assert len(ingested["examples"]) == sum(sum(s["kept"].values()) for s in report["sources"].values())


def ingested_label(expected: dict, rel: str) -> str:
    return expected["images"][rel][0]


def ieee_files_by_class(root: str, files: set[str]) -> Counter:
    """Files present per class, whatever their view (laterals included)."""
    with open(os.path.join(root, "metadata.csv"), newline="", encoding="utf-8") as f:
        named = {r["filename"]: finding_class(r["finding"]) for r in csv.DictReader(f) if r["filename"] in files}
    return Counter(label for label in named.values() if label)


def test_every_class_is_in_every_split_and_no_patient_in_two(ingested):
    report, examples = ingested["report"], ingested["examples"]
    counts = Counter((e["split"], e[fk.LABEL_KEY]) for e in examples.values())
    for split in fk.SPLITS:
        for label in ("covid", "bacterial", "normal"):
            assert counts[(split, label)] > 0, (split, label)
            assert report["splits"][split][label] == counts[(split, label)]
    splits_of = defaultdict(set)
    for e in examples.values():
        splits_of[e[fk.PATIENT_ID_KEY]].add(e["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert report["patient_overlap"] == 0
    # Kaggle ships train/ only: its test share is carved by patient (issue 11).
    kaggle_test = {e[fk.LABEL_KEY] for e in examples.values()
                   if e[fk.SOURCE_KEY] == "kaggle:kaggle" and e["split"] == "test"}
    assert kaggle_test == {"bacterial", "normal"}


def test_byte_identical_kaggle_pair_is_collapsed(ingested):
    kaggle = expected_kaggle(ingested["roots"]["kaggle"])
    pair = "train/PNEUMONIA/person1619_bacteria_4268.jpeg"
    assert kaggle["copies"] == {pair: "train/PNEUMONIA/person1619_bacteria_4267.jpeg"}
    assert f"kaggle:kaggle:{pair}" not in ingested["examples"]
    assert "kaggle:kaggle:train/PNEUMONIA/person1619_bacteria_4267.jpeg" in ingested["examples"]
    removed = {d["image_id"]: d for d in ingested["report"]["duplicates"]}
    assert removed[f"kaggle:kaggle:{pair}"]["match"] == "exact"


def test_viral_and_lateral_films_are_excluded(ingested):
    examples = ingested["examples"]
    assert not [i for i in examples if "_virus_" in i]
    assert {e[fk.VIEW_KEY] for e in examples.values() if e[fk.SOURCE_KEY] != "kaggle:kaggle"} <= set(VIEWS)
    ieee = expected_ieee(ingested["roots"]["ieee"])
    assert ingested["report"]["sources"]["ieee:ieee"]["excluded"]["view"] == ieee["excluded"]["view"] > 0


def test_confounding_is_reported(ingested):
    confounding = ingested["report"]["confounding"]
    assert confounding["images"] == len(ingested["examples"])
    # Kaggle declares its films paediatric; every kept Kaggle image is a child's.
    kaggle_kept = ingested["report"]["sources"]["kaggle:kaggle"]["kept"]
    for label, n in kaggle_kept.items():
        assert confounding["class_age_source"][label]["child"] == {"kaggle:kaggle": n}
    assert "covid" not in {c for c, m in confounding["age_mix"].items() if m["child"] > 0}
    assert any("Class 'covid' has a different age mix" in w for w in confounding["warnings"])
