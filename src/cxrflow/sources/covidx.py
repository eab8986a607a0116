"""COVID-Net's COVIDx: label lists over image folders, as on Kaggle (`andyczhao/covidx-cxr2`).

`train.txt`, `test.txt` (and `val.txt` in later releases) list one image per line, space-separated:
`patientid filename label datasource` (the first releases have no `datasource`). Files sit in the
folder named after the list: `train/<filename>`. A list named after its release
(`train_COVIDx9A.txt`, as in the COVID-Net repository's `labels/`) is read when the plain name is
absent. The lists' split is honoured (`val` becomes eval).

Labels map through the shared table (`findings.py`): `COVID-19` and `positive` -> covid,
`normal` -> normal. `pneumonia` has no class unless mapped. `negative` (the binary releases) has
none either: it means "not COVID-19" and holds non-COVID pneumonia films as well as normal ones.
Patients are namespaced by `datasource` too, because each source numbers its own patients.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from cxrflow.io_utils import exists, listdir
from cxrflow.sources.base import Exclusion, Record, SourceAdapter, list_files, normpath, read_metadata_text
from cxrflow.sources.findings import class_for_finding, parse_finding_map

SPLITS = {"train": "train", "val": "eval", "test": "test"}


class CovidxSource(SourceAdapter):
    kind = "covidx"

    def label_lists(self) -> dict[str, str]:
        """{split folder: list file path}; raises ValueError when there is none."""
        names = sorted(listdir(self.root))
        found = {}
        for split in SPLITS:
            if exists(posixpath.join(self.root, f"{split}.txt")):
                found[split] = posixpath.join(self.root, f"{split}.txt")
                continue
            versions = [n for n in names if n.startswith(f"{split}_") and n.endswith(".txt")]
            if len(versions) > 1:
                raise ValueError(f"{self.root} holds several {split} lists {versions}: keep one or name it {split}.txt")
            if versions:
                found[split] = posixpath.join(self.root, versions[0])
        if not found:
            raise ValueError(f"{self.root} holds no train.txt or test.txt: is it a COVIDx folder?")
        return found

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        user_rules = parse_finding_map(self.options.get("finding_map", ""), self.kind)
        for split, list_path in self.label_lists().items():
            folder = posixpath.join(self.root, split)
            present = {normpath(p) for p in list_files(folder)} if exists(folder) else set()
            seen: set[str] = set()
            for line in read_metadata_text(list_path).splitlines():
                fields = line.split()
                if not fields:
                    continue
                if len(fields) not in (3, 4):
                    yield Exclusion(source, f"{list_path}: {line.strip()}", "unparsed_line")
                    continue
                patient, filename, finding = fields[:3]
                where = posixpath.join(folder, filename)
                label = class_for_finding(finding, user_rules)
                if label not in self.classes:
                    yield Exclusion(source, where, f"finding:{finding}")
                    continue
                path = self.resolve_inside_root(posixpath.join(split, filename))
                if path is None:
                    yield Exclusion(source, where, "path_escape")
                    continue
                if path not in present:
                    yield Exclusion(source, path, "missing_file")
                    continue
                origin = f"{fields[3]}:" if len(fields) == 4 else ""
                # `patient` is a whitespace-split field, never empty: only duplicate_row applies.
                yield self.row_record(
                    path, seen, label=label, patient=f"{origin}{patient}", provided_split=SPLITS[split],
                )
