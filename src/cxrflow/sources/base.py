"""The contract every data source adapter follows (after torchxrayvision's dataset classes).

An adapter only *lists* its source: it maps the source's own columns and folder conventions to
shared names and yields one `Record` per candidate image, or one `Exclusion` per row or file it
rejects with a reason. Reading, checking, de-duplicating and splitting happen later, in the
ExampleGen Beam pipeline, so they scale with the runner instead of with the laptop.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from cxrflow.config import PipelineConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
PROVIDED_SPLITS = {"train": "train", "training": "train", "val": "train", "valid": "train",
                   "validation": "eval", "eval": "eval", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Record:
    """One candidate image, with every column mapped to the shared names."""

    path: str  # file to read (local path or gs:// URI)
    image_id: str  # unique and stable: "<source>:<path relative to the source root>"
    label: str  # a class name from the config
    patient_id: str  # namespaced by source, so two sources' "1" never merge
    source: str
    view: str = ""
    sex: str = ""
    age: str = ""
    provided_split: str = ""  # "train" / "eval" / "test" when the source ships a split
    # An age group the source declares for all its images when rows carry no age (Kaggle's
    # paediatric set: "child"); it wins over the group derived from `age`.
    age_group: str = ""
    # False when the source names no patient and the file stands in for one: such images are
    # split one by one, and the ingest report says so.
    patient_known: bool = True


@dataclass(frozen=True)
class Exclusion:
    """A row or file not emitted, with a countable reason code (e.g. "view", "finding:SARS")."""

    source: str
    path: str
    reason: str


class SourceAdapter(ABC):
    """Lists one dataset as Records and Exclusions."""

    kind: ClassVar[str]

    def __init__(self, root: str, classes: tuple[str, ...], options: Mapping[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.classes = classes
        self.options = dict(options or {})
        self._real_dirs: dict[str, str] = {}  # folder -> os.path.realpath(folder), see _realpath

    @property
    def source_name(self) -> str:
        """The `source` feature value: the kind plus the folder name, e.g. `folders:sample`."""
        return f"{self.kind}:{posixpath.basename(self.root) or self.root}"

    @abstractmethod
    def scan(self) -> Iterator[Record | Exclusion]:
        """Yields every candidate image or rejected row of the source."""

    # --- helpers shared by adapters -----------------------------------------------------------
    def resolve_inside_root(self, relative: str) -> str | None:
        """Joins `relative` to the root; None when it would escape it (`../`, absolute paths)."""
        if not relative or relative.startswith(("/", "\\")) or "://" in relative:
            return None
        joined = normpath(posixpath.join(self.root, relative.replace("\\", "/")))
        root = normpath(self.root)
        if joined != root and not joined.startswith(root + "/"):
            return None
        if "://" not in self.root:
            if root not in self._real_dirs:
                self._real_dirs[root] = os.path.realpath(root)
            real_root = self._real_dirs[root]
            real = self._realpath(joined)
            if real != real_root and not real.startswith(real_root + os.sep):
                return None  # a symlink pointing outside the dataset
        return joined

    def _realpath(self, path: str) -> str:
        """os.path.realpath of a normalised local path, each folder resolved once per adapter.

        realpath lstat()s every component of every path: 7,263 calls for the real set's 470
        files, ~15% of a cached re-ingest (bench/README.md). A file that is not a symlink
        resolves to its resolved folder plus its name, which is what realpath computes too.
        """
        if os.path.islink(path):
            return os.path.realpath(path)
        folder, name = os.path.split(path)
        if folder not in self._real_dirs:
            self._real_dirs[folder] = os.path.realpath(folder)
        return os.path.join(self._real_dirs[folder], name)

    def relative(self, path: str) -> str:
        return posixpath.relpath(path, self.root)

    def claim_image_id(self, path: str, seen: set[str]) -> str | None:
        """`<source>:<relative path>` for a file's first row; None when an earlier row already
        named it (counted `duplicate_row`: two records of one file would make ExampleGen refuse
        the whole run)."""
        image_id = f"{self.source_name}:{self.relative(path)}"
        if image_id in seen:
            return None
        seen.add(image_id)
        return image_id

    def row_record(
        self, path: str, seen: set[str], *, label: str, patient: str,
        view: str = "", sex: str = "", age: str = "", provided_split: str = "",
    ) -> Record | Exclusion:
        """The Record of a metadata row whose file was found, or why the row is excluded.

        The last checks every metadata adapter makes, in this order: a patient id, then the
        file's first row (`claim_image_id`). `patient` is the source's own id, namespaced here.
        """
        source = self.source_name
        if not patient:
            return Exclusion(source, path, "no_patient_id")  # cannot be split leak-free
        image_id = self.claim_image_id(path, seen)
        if image_id is None:
            return Exclusion(source, path, "duplicate_row")
        return Record(
            path=path,
            image_id=image_id,
            label=label,
            patient_id=f"{source}:{patient}",
            source=source,
            view=view,
            sex=sex,
            age=age,
            provided_split=provided_split,
        )

    def views(self) -> set[str]:
        """The `views` option, normalised; the config's default (frontal views) when unset."""
        text = self.options.get("views") or ",".join(PipelineConfig.views)
        return {normalize_view(v) for v in text.split(",") if v.strip()}


def normalize_view(view: str) -> str:
    """`AP  supine` == `AP Supine`: sources differ in case and spacing."""
    return " ".join(view.lower().split())


def open_binary(path: str) -> BinaryIO:
    if "://" in path:
        import tensorflow as tf  # lazy: only remote paths need TF's filesystems

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def read_metadata_text(path: str) -> str:
    """A metadata file's text: UTF-8 (a BOM dropped), else Windows-1252.

    Figure1's `metadata.csv` is Windows-1252 (`°`, curly quotes): reading it as UTF-8 would fail
    on the first such note. Latin-1 is the last resort because it decodes any byte.
    """
    with open_binary(path) as f:
        data = f.read()
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def read_csv_rows(path: str) -> tuple[set[str], list[dict[str, str]]]:
    """(column names, rows) of a CSV file, names lower-cased and every value stripped.

    Names are matched without case or blanks because releases of one dataset differ in both.
    StringIO(newline="") hands csv the text untouched, so quoted notes keep their line breaks.
    Rows as csv.DictReader gives them: blank lines skipped, a short row's missing cells "" and a
    long row's extra cells dropped.
    """
    reader = csv.reader(io.StringIO(read_metadata_text(path), newline=""))
    header = next(reader, [])
    # Names cleaned once, not once per row (IEEE's metadata: 30 columns, ~1,000 rows). Each
    # name's cells come from the column DictReader + cleaning would pick: a repeated name's
    # last column; of names equal once cleaned, the one first seen last.
    last = {name: i for i, name in enumerate(header)}  # keys stay in first-seen order
    source = {}
    for name, i in last.items():
        source[name.strip().lower()] = i
    keys, columns = list(source), list(source.values())
    plain = columns == list(range(len(header)))
    rows = []
    for row in reader:
        if not row:
            continue
        cells = [v.strip() for v in row[: len(header)]]
        cells += [""] * (len(header) - len(cells))
        rows.append(dict(zip(keys, cells if plain else [cells[i] for i in columns], strict=True)))
    return set(source), rows


def normpath(path: str) -> str:
    """posixpath.normpath that keeps a URI's `scheme://` (plain normpath makes it `gs:/`)."""
    scheme, sep, rest = path.partition("://")
    return f"{scheme}://{posixpath.normpath(rest)}" if sep else posixpath.normpath(path)


def list_files(root: str) -> Iterator[str]:
    """All files under `root` in a stable order, local or remote, hidden ones (`.git`,
    `.DS_Store`) left out alike: a bucket copy of a tree must list what the disk copy lists."""
    remote = "://" in root
    if remote:
        import tensorflow as tf

        walk, join_path = tf.io.gfile.walk(root), posixpath.join
    else:
        walk, join_path = os.walk(root), os.path.join
    for dirpath, dirnames, files in walk:  # top-down: pruning `dirnames` skips those folders
        dirnames[:] = sorted(d.rstrip("/") for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield join_path(dirpath, name)
