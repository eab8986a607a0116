"""The COVID-Net team's adult sets, as cloned: `metadata.csv` plus `images/`.

- `actualmed`: agchung/Actualmed-COVID-chestxray-dataset. Each row names its file in
  `imagename` (`CR.1.2.840....png`, DICOM UIDs saved as PNG).
- `figure1`: agchung/Figure1-COVID-chestxray-dataset. No file column: the file is named after
  `patientid` (`COVID-00003a.jpg`, `COVID-00012.png`), with varying extensions. A letter after
  the number marks another film of the same patient (`COVID-00003a`, `COVID-00003b`), so the
  patient is the id without it. Its `metadata.csv` is Windows-1252, not UTF-8.

Both share the columns `patientid, offset, sex, age, finding, survival, temperature,
pO2 saturation, view, modality, ..., notes`. `finding` is `COVID-19`, `No finding`, `Pneumonia`
or blank; blank rows ("Inconclusive" in Actualmed's notes) are unlabelled and excluded as such.
Findings map through the shared table (`findings.py`), so `Pneumonia` has no class unless
`--finding-map` gives it one. Both sets are adults', but rows rarely carry an age, so nothing is
declared beyond the `age` column.
"""

from __future__ import annotations

import posixpath
import re
from abc import abstractmethod
from collections.abc import Iterator
from typing import ClassVar

from cxrflow.sources.base import (
    IMAGE_EXTENSIONS,
    Exclusion,
    Record,
    SourceAdapter,
    list_files,
    normalize_view,
    normpath,
    read_csv_rows,
)
from cxrflow.sources.findings import class_for_finding, parse_finding_map

METADATA_FILE = "metadata.csv"
IMAGE_FOLDER = "images"
_FILM_SUFFIX = re.compile(r"(?<=\d)[a-z]$")  # COVID-00003a -> COVID-00003


class CovidNetMetadataSource(SourceAdapter):
    """One row per image; subclasses say how a row names its file and its patient."""

    required_columns: ClassVar[frozenset[str]] = frozenset({"patientid", "finding"})

    @abstractmethod
    def file_for(self, row: dict[str, str], present: dict[str, str]) -> tuple[str, str]:
        """(the row's file path, "") when the file is there, else (path to report, reason).

        `present` maps each file's path relative to `images/`, lower-cased, to its full path:
        mirrors differ in the case of extensions (`.PNG`).
        """

    def patient_of(self, row: dict[str, str]) -> str:
        return row["patientid"]

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        metadata = posixpath.join(self.root, METADATA_FILE)
        columns, rows = read_csv_rows(metadata)
        missing = self.required_columns - columns
        if missing:
            raise ValueError(f"{metadata} lacks the column(s) {sorted(missing)}: is it the {self.kind} metadata.csv?")
        images = posixpath.join(self.root, IMAGE_FOLDER)
        present = {posixpath.relpath(normpath(p), normpath(images)).lower(): normpath(p) for p in list_files(images)}
        views = self.views()
        user_rules = parse_finding_map(self.options.get("finding_map", ""), self.kind)
        seen: set[str] = set()
        for row in rows:
            where, problem = self.file_for(row, present)
            modality = re.sub(r"[^a-z]", "", row.get("modality", "").lower())
            if modality and modality != "xray":
                yield Exclusion(source, where, "modality")
                continue
            # Figure1 leaves most views blank: a blank view is kept, a named one must be listed.
            view = row.get("view", "")
            if view and normalize_view(view) not in views:
                yield Exclusion(source, where, "view")
                continue
            finding = row.get("finding", "")
            if not finding:
                yield Exclusion(source, where, "unlabelled")
                continue
            label = class_for_finding(finding, user_rules)
            if label not in self.classes:
                yield Exclusion(source, where, f"finding:{finding}")
                continue
            if problem:  # missing_file, path_escape
                yield Exclusion(source, where, problem)
                continue
            yield self.row_record(
                where, seen, label=label, patient=self.patient_of(row), view=view,
                sex=row.get("sex", ""), age=row.get("age", ""),
            )


class ActualmedSource(CovidNetMetadataSource):
    kind = "actualmed"
    required_columns = frozenset({"patientid", "finding", "imagename"})

    def file_for(self, row: dict[str, str], present: dict[str, str]) -> tuple[str, str]:
        name = row.get("imagename", "")
        where = posixpath.join(self.root, IMAGE_FOLDER, name)
        if not name:
            return where, "no_filename"
        path = self.resolve_inside_root(posixpath.join(IMAGE_FOLDER, name))
        if path is None:  # `../` or an absolute path: never read
            return where, "path_escape"
        found = present.get(self.relative(path).partition("/")[2].lower())
        return (found, "") if found else (path, "missing_file")


class Figure1Source(CovidNetMetadataSource):
    kind = "figure1"

    def file_for(self, row: dict[str, str], present: dict[str, str]) -> tuple[str, str]:
        stem = row.get("patientid", "")
        # Extensions vary (.jpg, .png); the first match in a fixed order wins. Only names
        # directly in images/ are looked up, so an id cannot point elsewhere.
        for ext in IMAGE_EXTENSIONS:
            found = present.get(f"{stem}{ext}".lower())
            if stem and found:
                inside = self.resolve_inside_root(self.relative(found)) is not None  # not a symlink out
                return found, "" if inside else "path_escape"
        return posixpath.join(self.root, IMAGE_FOLDER, f"{stem}.*"), "missing_file"

    def patient_of(self, row: dict[str, str]) -> str:
        return _FILM_SUFFIX.sub("", row["patientid"])
