"""The RSNA Pneumonia Detection Challenge, as downloaded from Kaggle.

`stage_2_detailed_class_info.csv` (`patientId,class`) labels each image; `stage_2_train_labels.csv`
(`patientId,x,y,width,height,Target`) holds its boxes, one row per box, and is read only to
check that `Target` agrees with the class. Images are `stage_2_train_images/<patientId>.dcm`.
The stage 1 files (`stage_1_...`) are read when stage 2 is absent.

Classes map through the shared table (`findings.py`): `Normal` -> normal; `Lung Opacity` has no
class unless mapped (`--finding-map rsna:Lung Opacity=bacterial`); `No Lung Opacity / Not Normal`
is excluded and counted. Sex, age and view come from the DICOM tags.

RSNA's `patientId`, and the DICOM `PatientID` tag with it, names an image, not a person: the
challenge dropped the NIH patient ids its films came from. Images are therefore split one by one,
and the ingest report says so.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterator

from cxrflow.io_utils import exists
from cxrflow.sources.base import Exclusion, Record, SourceAdapter, list_files, normalize_view, normpath, read_csv_rows
from cxrflow.sources.dicom import age_in_years, read_header
from cxrflow.sources.findings import class_for_finding, parse_finding_map

STAGES = ("stage_2", "stage_1")
# The class whose boxes make Target 1; every other class has one row with Target 0.
OPACITY_CLASS = "lung opacity"


class RsnaSource(SourceAdapter):
    kind = "rsna"

    def stage(self) -> str:
        for stage in STAGES:
            if exists(posixpath.join(self.root, f"{stage}_detailed_class_info.csv")):
                return stage
        raise ValueError(f"{self.root} holds no stage_2_detailed_class_info.csv (nor stage_1_...): "
                         "is it the RSNA Pneumonia Detection Challenge download?")

    def _read(self, name: str, columns: set[str]) -> dict[str, set[str]]:
        """patientId -> the set of values of the one other column, over all its rows."""
        path = posixpath.join(self.root, name)
        found, rows = read_csv_rows(path)
        if not {"patientid", *columns} <= found:
            raise ValueError(f"{path} lacks the column(s) {sorted({'patientid', *columns} - found)}")
        (column,) = columns
        values: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            values[row["patientid"]].add(row[column])
        return values

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        stage = self.stage()
        classes = self._read(f"{stage}_detailed_class_info.csv", {"class"})
        targets = {}
        if exists(posixpath.join(self.root, f"{stage}_train_labels.csv")):
            targets = self._read(f"{stage}_train_labels.csv", {"target"})
        images = posixpath.join(self.root, f"{stage}_train_images")
        present = {normpath(p) for p in list_files(images)}
        views = self.views()
        user_rules = parse_finding_map(self.options.get("finding_map", ""), self.kind)
        for image, names in classes.items():  # one outcome per image, however many box rows
            path = normpath(posixpath.join(images, f"{image}.dcm"))
            expected_target = {"1" if n.lower() == OPACITY_CLASS else "0" for n in names}
            if len(names) != 1 or (image in targets and targets[image] != expected_target):
                yield Exclusion(source, path, "conflicting_labels")
                continue
            (finding,) = names
            label = class_for_finding(finding, user_rules)
            if label not in self.classes:
                yield Exclusion(source, path, f"finding:{finding or 'empty'}")
                continue
            if "/" in image or path not in present:
                yield Exclusion(source, path, "missing_file")
                continue
            header = read_header(path)
            # An unreadable header is left to ExampleGen's image check, which reports the file.
            view = header.get("ViewPosition", "")
            if header and normalize_view(view) not in views:
                yield Exclusion(source, path, "view")
                continue
            yield Record(
                path=path,
                image_id=f"{source}:{self.relative(path)}",
                label=label,
                patient_id=f"{source}:{header.get('PatientID') or image}",
                source=source,
                view=view,
                sex=header.get("PatientSex", ""),
                age=age_in_years(header.get("PatientAge", "")),
                patient_known=False,  # patientId names an image (see the module docstring)
            )
