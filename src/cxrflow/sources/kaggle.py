"""Kermany's chest-xray-pneumonia on Kaggle: `{train,val,test}/{NORMAL,PNEUMONIA}/<image>`.

Pneumonia files name the patient and the cause (`person1_bacteria_1.jpeg`,
`person1_virus_6.jpeg`); normal files are `IM-<patient>-<image>.jpeg` or, for the second
batch, `NORMAL2-IM-<patient>-<image>.jpeg`. The shipped `val` folder holds 16 images, too few
to steer early stopping, so by default it joins train and eval is carved by patient instead.

Files carry no age, but the set is paediatric (ages 1-5, Guangzhou Women and Children's Medical
Center): every record declares the age group `child`, so age confounding shows in the report.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from cxrflow.sources.base import Exclusion, Record, SourceAdapter, list_files
from cxrflow.sources.folders import label_for_name

_PNEUMONIA_FILE = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL_FILE = re.compile(r"^((?:normal2-)?im-\d+)-\d+", re.IGNORECASE)
_CAUSES = {"bacteria": "bacterial", "virus": "viral"}
_SPLITS = {"train": "train", "test": "test"}  # `val` depends on kaggle_merge_val
AGE_GROUP = "child"  # the whole set is paediatric


def parse_filename(class_folder: str, filename: str) -> tuple[str, str] | None:
    """(finding, patient key) for one file, e.g. ("bacterial", "person1"); None if unparseable."""
    stem = posixpath.splitext(filename)[0]
    if class_folder == "pneumonia":
        match = _PNEUMONIA_FILE.match(stem)
        return (_CAUSES[match.group(2).lower()], match.group(1).lower()) if match else None
    if class_folder == "normal":
        match = _NORMAL_FILE.match(stem)
        # Upper-cased as shipped, so patient ids read like the file names.
        return ("normal", match.group(1).upper()) if match else None
    return None


class KaggleSource(SourceAdapter):
    kind = "kaggle"

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        splits = dict(_SPLITS, val="train" if self.options.get("kaggle_merge_val", "1") else "eval")
        class_map = self.options.get("class_map", "")
        for path in list_files(self.root):
            parts = self.relative(path).split("/")
            if len(parts) != 3 or parts[0].lower() not in splits:
                yield Exclusion(source, path, "not_in_layout")
                continue
            parsed = parse_filename(parts[1].lower(), parts[2])
            if parsed is None:
                yield Exclusion(source, path, "unparsed_filename")
                continue
            finding, patient = parsed
            # Through the shared alias logic so `--class-map viral=pneumonia,...` can merge causes.
            label = label_for_name(finding, self.classes, class_map)
            if label is None:
                yield Exclusion(source, path, f"finding:{finding}")
                continue
            yield Record(
                path=path,
                image_id=f"{source}:{self.relative(path)}",
                label=label,
                # Not namespaced by split: one patient in train and test is leakage the
                # splitter must see (and resolve), not two patients.
                patient_id=f"{source}:{patient}",
                source=source,
                provided_split=splits[parts[0].lower()],
                age_group=AGE_GROUP,
            )
