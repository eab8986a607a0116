"""Class-per-folder trees: `root/<class>/<image>` or `root/<split>/<class>/<image>`.

A bare folder tree names no patient. `--patient-map CSV` (columns `file`, `patient`; `file`
relative to the source root) or `--patient-pattern REGEX` (on the file name; group `patient`, else
the first group) supply one. A file either leaves out is its own patient, and is counted
(`images_without_patient` in the ingest report); with neither option the report says the source
was split by image (`split_unit`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from cxrflow.sources.base import PROVIDED_SPLITS, Exclusion, Record, SourceAdapter, list_files, read_csv_rows

# Folder names people actually use, mapped to the default class names.
DEFAULT_ALIASES = {
    "covid": "covid",
    "covid-19": "covid",
    "covid19": "covid",
    "covid_19": "covid",
    "bacterial": "bacterial",
    "bacteria": "bacterial",
    "pneumonia_bac": "bacterial",
    "bacterial_pneumonia": "bacterial",
    "normal": "normal",
    "healthy": "normal",
    "no_finding": "normal",
}


def parse_class_map(text: str) -> dict[str, str]:
    """`"folderA=covid,folderB=normal"` -> {"foldera": "covid", "folderb": "normal"}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        folder, sep, label = item.partition("=")
        if not sep or not folder.strip() or not label.strip():
            raise ValueError(f"--class-map entries take FOLDER=CLASS, got {item!r}")
        mapping[folder.strip().lower()] = label.strip()
    return mapping


def label_for_name(name: str, classes: tuple[str, ...], class_map: str = "") -> str | None:
    """The class a folder (or finding) name stands for, or None when it names no configured class.

    Lookup order: the user's `class_map`, the built-in aliases, then the name itself (exact,
    then lower-cased). Case never matters, because the same dataset ships as `COVID` in one
    mirror and `covid` in another. Shared by every adapter that labels by a name.
    """
    key = name.lower()
    label = parse_class_map(class_map).get(key) or DEFAULT_ALIASES.get(key)
    if label is None:
        label = name if name in classes else key
    return label if label in classes else None


def split_class_path(parts: list[str]) -> tuple[str, list[str]]:
    """Strips a leading provided-split folder (`train/`, `test/`...); returns (split, rest)."""
    if len(parts) == 3 and parts[0].lower() in PROVIDED_SPLITS:
        return PROVIDED_SPLITS[parts[0].lower()], parts[1:]
    return "", parts


def read_patient_map(path: str) -> dict[str, str]:
    """{file relative to the source root: patient} from a CSV with columns `file` and `patient`."""
    columns, rows = read_csv_rows(path)
    if not {"file", "patient"} <= columns:
        raise ValueError(f"--patient-map {path} needs the columns file,patient; it has {sorted(columns)}")
    mapping: dict[str, str] = {}
    for row in rows:
        name = posixpath.normpath(row["file"].replace("\\", "/")) if row["file"] else ""
        if not name or not row["patient"]:
            continue  # such files fall back to their own patient, and are counted
        if mapping.setdefault(name, row["patient"]) != row["patient"]:
            raise ValueError(f"--patient-map {path} gives {name} two patients: {mapping[name]}, {row['patient']}")
    return mapping


def compile_patient_pattern(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--patient-pattern {pattern!r} is not a valid regular expression: {e}") from e


def patient_from_name(pattern: re.Pattern[str], filename: str) -> str:
    """The `patient` group of the pattern's first match in `filename`, else its first group; "" if none."""
    match = pattern.search(filename)
    if match is None:
        return ""
    if "patient" in pattern.groupindex:
        return match.group("patient") or ""
    return (match.group(1) if pattern.groups else match.group(0)) or ""


class FolderSource(SourceAdapter):
    kind = "folders"

    def class_for_folder(self, folder: str) -> str | None:
        return label_for_name(folder, self.classes, self.options.get("class_map", ""))

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        map_path, pattern_text = self.options.get("patient_map", ""), self.options.get("patient_pattern", "")
        patient_map = read_patient_map(map_path) if map_path else {}
        pattern = compile_patient_pattern(pattern_text) if pattern_text else None
        for path in list_files(self.root):
            split, parts = split_class_path(self.relative(path).split("/"))
            if len(parts) == 1 and self.options.get("label"):  # a flat folder of one class (--label)
                parts = [self.options["label"], parts[0]]
            if len(parts) != 2:
                yield Exclusion(source, path, "not_in_class_folder")
                continue
            label = self.class_for_folder(parts[0])
            if label is None:
                yield Exclusion(source, path, f"unknown_label:{parts[0]}")
                continue
            relative = self.relative(path)
            patient = patient_map.get(relative) or (patient_from_name(pattern, parts[1]) if pattern else "")
            yield Record(
                path=path,
                image_id=f"{source}:{relative}",
                label=label,
                # Without a known patient the file is its own patient: split by image.
                patient_id=f"{source}:{patient or posixpath.splitext(parts[1])[0]}",
                source=source,
                provided_split=split,
                patient_known=bool(patient),
            )
