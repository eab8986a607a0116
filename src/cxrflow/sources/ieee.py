"""The IEEE8023 covid-chestxray-dataset, as cloned: `metadata.csv` plus its image folder.

One row per image. Findings are hierarchical in current releases (`Pneumonia/Viral/COVID-19`,
`Pneumonia/Bacterial/Streptococcus`, `No Finding`) and flat in older ones (`COVID-19`,
`COVID-19, ARDS`); older releases also lack the `folder`, `modality` and `RT_PCR_positive`
columns. Rows are matched by column name, so either layout works. Names are matched without
case and surrounding blanks: the first release (February 2020) spells `Patientid` and ` url`,
and a patient column missed by spelling would make every image its own patient (a leak).
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections.abc import Iterator

from cxrflow.io_utils import read_text
from cxrflow.sources.base import Exclusion, Record, SourceAdapter, list_files, normpath

METADATA_FILE = "metadata.csv"
DEFAULT_FOLDER = "images"  # releases before the `folder` column kept every image here

# Default finding -> class rules, matched on whole path elements (see `finding_rule_matches`).
# Only bacterial pneumonia as a group: its species are too few per class to learn.
DEFAULT_FINDING_RULES = {
    "pneumonia/bacterial": "bacterial",
    "no finding": "normal",
}


def normalize_finding(value: str) -> str:
    """Lower-cased, with blanks around `/` removed: `Pneumonia / Viral` == `pneumonia/viral`."""
    return "/".join(part.strip() for part in value.strip().lower().split("/"))


def parse_finding_map(text: str) -> dict[str, str]:
    """`"Pneumonia/Viral=viral,SARS=viral"` -> {"pneumonia/viral": "viral", "sars": "viral"}."""
    rules: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, sep, label = item.partition("=")
        if not sep or not prefix.strip() or not label.strip():
            raise ValueError(f"--finding-map entries take FINDING_PREFIX=CLASS, got {item!r}")
        rules[normalize_finding(prefix)] = label.strip()
    return rules


def _longest_prefix(finding: str, rules: dict[str, str]) -> str | None:
    # Whole path elements only: "pneumonia/bac" must not match "pneumonia/bacterial/...".
    hits = [p for p in rules if finding == p or finding.startswith(p + "/")]
    return rules[max(hits, key=len)] if hits else None


def class_for_finding(finding: str, user_rules: dict[str, str]) -> str | None:
    """The class name a finding maps to (maybe one not configured), or None when unmapped.

    The user's rules win over the defaults whatever their length, so `Pneumonia=pneumonia`
    really does put every pneumonia, COVID-19 included, into one class.
    """
    key = normalize_finding(finding)
    label = _longest_prefix(key, user_rules)
    if label is not None:
        return label
    # COVID-19 is the last path element in current releases and the whole (flat) value in
    # older ones, where co-findings follow after a comma ("COVID-19, ARDS").
    if key.split("/")[-1].split(",")[0].strip() == "covid-19":
        return "covid"
    return _longest_prefix(key, DEFAULT_FINDING_RULES)


def _normalize_view(view: str) -> str:
    return " ".join(view.lower().split())


class IeeeSource(SourceAdapter):
    kind = "ieee"

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        metadata = posixpath.join(self.root, METADATA_FILE)
        # StringIO(newline="") hands csv the text untouched, so quoted notes keep their line breaks.
        text = read_text(metadata).lstrip("\ufeff")
        views = {_normalize_view(v) for v in (self.options.get("views") or "PA").split(",") if v.strip()}
        user_rules = parse_finding_map(self.options.get("finding_map", ""))
        listed: dict[str, set[str]] = {}  # folder -> files present, listed once per folder
        seen: set[str] = set()
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = {(name or "").strip().lower() for name in reader.fieldnames or ()}
        missing = {"patientid", "finding", "filename"} - columns
        if missing:
            # Without patient ids the split cannot keep a patient's films together: refuse
            # rather than silently treat every image as its own patient.
            raise ValueError(f"{metadata} lacks the column(s) {sorted(missing)}: is it the IEEE metadata.csv?")
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
            folder = row.get("folder") or DEFAULT_FOLDER
            filename = row.get("filename", "")
            where = posixpath.join(self.root, folder, filename)
            # Older releases have no modality column and hold X-rays only; an empty cell there
            # means the same. "X-ray", "X-Ray" and "xray" all occur.
            modality = re.sub(r"[^a-z]", "", (row.get("modality") or "X-ray").lower())
            view = _normalize_view(row.get("view", ""))
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
            if not row.get("patientid"):
                yield Exclusion(source, path, "no_patient_id")  # cannot be split leak-free
                continue
            image_id = f"{source}:{self.relative(path)}"
            if image_id in seen:
                # Two rows naming one file would make ExampleGen refuse the whole run.
                yield Exclusion(source, path, "duplicate_row")
                continue
            seen.add(image_id)
            yield Record(
                path=path,
                image_id=image_id,
                label=label,
                patient_id=f"{source}:{row['patientid']}",
                source=source,
                view=row.get("view", ""),
                sex=row.get("sex", ""),
                age=row.get("age", ""),
            )
