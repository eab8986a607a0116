"""The IEEE8023 covid-chestxray-dataset, as cloned: `metadata.csv` plus its image folder.

One row per image. Findings are hierarchical in current releases (`Pneumonia/Viral/COVID-19`,
`Pneumonia/Bacterial/Streptococcus`, `No Finding`) and flat in older ones (`COVID-19`,
`COVID-19, ARDS`, `Streptococcus`); both map through the shared table in `findings.py`.
Older releases also lack the `folder`, `modality` and `RT_PCR_positive` columns. Rows are
matched by column name, so either layout works. Names are matched without case and surrounding
blanks: the first release (February 2020) spells `Patientid` and ` url`, and a patient column
missed by spelling would make every image its own patient (a leak).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from cxrflow.sources.base import (
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
DEFAULT_FOLDER = "images"  # releases before the `folder` column kept every image here


class IeeeSource(SourceAdapter):
    kind = "ieee"

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        metadata = posixpath.join(self.root, METADATA_FILE)
        views = self.views()
        user_rules = parse_finding_map(self.options.get("finding_map", ""), self.kind)
        listed: dict[str, set[str]] = {}  # folder -> files present, listed once per folder
        seen: set[str] = set()
        columns, rows = read_csv_rows(metadata)
        missing = {"patientid", "finding", "filename"} - columns
        if missing:
            # Without patient ids the split cannot keep a patient's films together: refuse
            # rather than silently treat every image as its own patient.
            raise ValueError(f"{metadata} lacks the column(s) {sorted(missing)}: is it the IEEE metadata.csv?")
        for row in rows:
            folder = row.get("folder") or DEFAULT_FOLDER
            filename = row.get("filename", "")
            where = posixpath.join(self.root, folder, filename)
            # Older releases have no modality column and hold X-rays only; an empty cell there
            # means the same. "X-ray", "X-Ray" and "xray" all occur.
            modality = re.sub(r"[^a-z]", "", (row.get("modality") or "X-ray").lower())
            view = normalize_view(row.get("view", ""))
            # ... except that the first release put CT slices under `view` ("CT").
            if modality != "xray" or (not row.get("modality") and view == "ct"):
                yield Exclusion(source, where, "modality")
                continue
            if view not in views:
                yield Exclusion(source, where, "view")
                continue
            finding = row.get("finding", "")
            label = class_for_finding(finding, user_rules)
            if label not in self.classes:
                yield Exclusion(source, where, f"finding:{finding or 'empty'}")
                continue
            if not filename:
                yield Exclusion(source, where, "no_filename")
                continue
            path = self.resolve_inside_root(posixpath.join(folder, filename))
            if path is None:
                yield Exclusion(source, where, "path_escape")
                continue
            # Checked here rather than left to ExampleGen, whose read would report the same
            # file again: a row without its file is a metadata problem, counted once.
            if folder not in listed:
                listed[folder] = {normpath(p) for p in list_files(posixpath.join(self.root, folder))}
            if path not in listed[folder]:
                yield Exclusion(source, path, "missing_file")
                continue
            yield self.row_record(
                path, seen, label=label, patient=row["patientid"], view=row.get("view", ""),
                sex=row.get("sex", ""), age=row.get("age", ""),
            )
