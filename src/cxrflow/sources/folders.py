"""Class-per-folder trees: `root/<class>/<image>` or `root/<split>/<class>/<image>`."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from cxrflow.sources.base import PROVIDED_SPLITS, Exclusion, Record, SourceAdapter, list_files

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


class FolderSource(SourceAdapter):
    kind = "folders"

    def class_for_folder(self, folder: str) -> str | None:
        return label_for_name(folder, self.classes, self.options.get("class_map", ""))

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        for path in list_files(self.root):
            split, parts = split_class_path(self.relative(path).split("/"))
            if len(parts) != 2:
                yield Exclusion(source, path, "not_in_class_folder")
                continue
            label = self.class_for_folder(parts[0])
            if label is None:
                yield Exclusion(source, path, f"unknown_label:{parts[0]}")
                continue
            stem = posixpath.splitext(parts[1])[0]
            yield Record(
                path=path,
                image_id=f"{source}:{self.relative(path)}",
                label=label,
                # No patient information in a bare folder tree: each file is its own patient.
                patient_id=f"{source}:{stem}",
                source=source,
                provided_split=split,
            )
