"""NIH ChestX-ray14, as downloaded: `Data_Entry_2017.csv` (or `Data_Entry_2017_v2020.csv`) + PNGs.

The PNGs sit in `images/`, or in the `images_001/images/` ... `images_012/images/` folders the
archives unpack into; rows name files by `Image Index` alone, so files are found by name in
either layout. `Finding Labels` is multi-label, joined by `|` (`Cardiomegaly|Effusion`): an
image with several findings is no clean example of one class and is excluded as `multi_label`.
A single finding maps through the shared table (`findings.py`): `No Finding` -> normal, and
`Pneumonia` has no class by default because NIH's text-mined label does not say bacterial.

The 2017 file writes ages as plain years (`58`; very old releases `058Y`) and holds a few
impossible ones (`148`, `411`, fixed in the v2020 revision): those are read as unknown. The 2017
header ends with a comma (an unnamed last column); some copies call `Patient Gender`
`Patient Sex`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from cxrflow.io_utils import exists
from cxrflow.sources.base import Exclusion, Record, SourceAdapter, list_files, normalize_view, read_csv_rows
from cxrflow.sources.dicom import age_in_years
from cxrflow.sources.findings import class_for_finding, parse_finding_map

# The v2020 revision first: it corrects the 2017 file's ages.
ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
_IMAGE_FOLDER = re.compile(r"^images(_\d+)?$")
MAX_AGE = 120  # older "ages" in the 2017 file are typing errors


def nih_age(value: str) -> str:
    """Years as a plain number ("58"), or "" when missing or impossible."""
    years = age_in_years(value)
    return years if years and float(years) <= MAX_AGE else ""


class NihSource(SourceAdapter):
    kind = "nih"

    def entry_file(self) -> str:
        for name in ENTRY_FILES:
            path = posixpath.join(self.root, name)
            if exists(path):
                return path
        raise ValueError(f"{self.root} holds neither {' nor '.join(ENTRY_FILES)}: is it the ChestX-ray14 download?")

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        entries = self.entry_file()
        columns, rows = read_csv_rows(entries)
        missing = {"image index", "finding labels", "patient id"} - columns
        if missing:
            raise ValueError(f"{entries} lacks the column(s) {sorted(missing)}")
        # Every PNG under images/ or images_NNN/ (at any depth: images_001/images/x.png), by name.
        present: dict[str, str] = {}
        for path in list_files(self.root):
            if _IMAGE_FOLDER.match(self.relative(path).split("/")[0]):
                present.setdefault(posixpath.basename(path), path)
        views = self.views()
        user_rules = parse_finding_map(self.options.get("finding_map", ""), self.kind)
        seen: set[str] = set()
        for row in rows:
            name = row.get("image index", "")
            where = present.get(name) or posixpath.join(self.root, "images", name)
            view = row.get("view position", "")
            if normalize_view(view) not in views:
                yield Exclusion(source, where, "view")
                continue
            findings = [f.strip() for f in row.get("finding labels", "").split("|") if f.strip()]
            if len(findings) > 1:
                yield Exclusion(source, where, "multi_label")
                continue
            finding = findings[0] if findings else ""
            label = class_for_finding(finding, user_rules)
            if label not in self.classes:
                yield Exclusion(source, where, f"finding:{finding or 'empty'}")
                continue
            if name not in present:
                yield Exclusion(source, where, "missing_file")
                continue
            yield self.row_record(
                where, seen, label=label, patient=row["patient id"], view=view,
                sex=row.get("patient gender") or row.get("patient sex", ""),
                age=nih_age(row.get("patient age", "")),
            )
