"""DICOM files in class folders: `root/<class>/<file>.dcm` or `root/<split>/<class>/<file>.dcm`.

The label comes from the folder name (the same aliases as the `folders` source); patient,
view, sex and age come from the DICOM header, read at listing time without the pixel data.
TF cannot decode DICOM, so `check_image` (images.py) recognises DICOM bytes and calls
`dicom_to_png_bytes`: the stored example then holds a PNG that training and serving both
decode with the same TF op.
"""

from __future__ import annotations

import io
import posixpath
import re
from collections.abc import Iterator

import numpy as np
from PIL import Image

from cxrflow.images import ImageRejected
from cxrflow.sources.base import Exclusion, Record, SourceAdapter, list_files, open_binary
from cxrflow.sources.folders import label_for_name, split_class_path

DICOM_EXTENSIONS = (".dcm", ".dicom")
_HEADER_TAGS = ["PatientID", "PatientSex", "PatientAge", "ViewPosition"]
_AGE = re.compile(r"^(\d{1,3})\s*([DWMY]?)$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def age_in_years(value: str) -> str:
    """DICOM age strings ("045Y", "018M", "003W") as years, like the other sources write them.

    Converted here because the age-group feature reads the first number: "018M" is 1.5 years,
    not 18.
    """
    match = _AGE.match((value or "").strip())
    if not match:
        return ""
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    if unit == "Y":
        return str(number)
    return f"{number * _DAYS_PER_UNIT[unit] / 365.25:.1f}"


def dicom_to_png_bytes(data: bytes, max_pixels: int | None = None) -> bytes:
    """Renders a DICOM file's pixels as a PNG the way a viewer would show them.

    Grayscale goes through the modality LUT (rescale) and the VOI LUT or window, is stretched
    to 16 bits, and MONOCHROME1 is inverted so that bone is bright in every stored image.
    Raises ImageRejected("not_image" | "corrupt" | "too_large" | "unsupported_dicom").
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as e:
        raise ImageRejected("not_image", f"not DICOM: {e}") from e
    except Exception as e:  # pydicom raises many types for a damaged header
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from e
    if "PixelData" not in ds:
        raise ImageRejected("not_image", "DICOM without pixel data (a report or a structured document)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    # Checked from the header, before decoding allocates rows * cols pixels.
    if max_pixels is not None and rows * cols > max_pixels:
        raise ImageRejected("too_large", f"{cols}x{rows} exceeds {max_pixels} pixels")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageRejected("unsupported_dicom", "multi-frame DICOM (not a radiograph)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        pixels = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed and "length" not in str(e).lower():
            raise ImageRejected("unsupported_dicom", f"cannot decode {syntax.name}: {e}") from e
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from e

    if photometric.startswith("MONOCHROME"):
        values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        if photometric == "MONOCHROME1":  # low values are white in MONOCHROME1
            scaled = 1.0 - scaled
        img = Image.fromarray(np.round(scaled * 65535).astype(np.uint16))
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:  # RGB / YBR, already RGB from pydicom
        if pixels.dtype != np.uint8:
            top = max(float(pixels.max()), 1.0)
            pixels = np.round(pixels.astype(np.float64) / top * 255)
        img = Image.fromarray(pixels.astype(np.uint8), "RGB")
    else:
        raise ImageRejected("unsupported_dicom", f"photometric interpretation {photometric}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def read_header(path: str) -> dict[str, str]:
    """Patient, sex, age and view tags; empty when the header is unreadable.

    An unreadable file is not excluded here: it is listed and rejected by the image check in
    ExampleGen, which reports it with the other bad files.
    """
    import pydicom

    try:
        with open_binary(path) as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception:
        return {}
    return {tag: str(ds.get(tag, "") or "").strip() for tag in _HEADER_TAGS}


class DicomSource(SourceAdapter):
    kind = "dicom"

    def scan(self) -> Iterator[Record | Exclusion]:
        source = self.source_name
        class_map = self.options.get("class_map", "")
        for path in list_files(self.root):
            if not path.lower().endswith(DICOM_EXTENSIONS):
                yield Exclusion(source, path, "not_dicom")
                continue
            split, parts = split_class_path(self.relative(path).split("/"))
            if len(parts) != 2:
                yield Exclusion(source, path, "not_in_class_folder")
                continue
            label = label_for_name(parts[0], self.classes, class_map)
            if label is None:
                yield Exclusion(source, path, f"unknown_label:{parts[0]}")
                continue
            header = read_header(path)
            # No PatientID (or an unreadable header): the file is its own patient.
            patient = header.get("PatientID") or posixpath.splitext(parts[1])[0]
            yield Record(
                path=path,
                image_id=f"{source}:{self.relative(path)}",
                label=label,
                patient_id=f"{source}:{patient}",
                source=source,
                patient_known=bool(header.get("PatientID")),
                view=header.get("ViewPosition", ""),
                sex=header.get("PatientSex", ""),
                age=age_in_years(header.get("PatientAge", "")),
                provided_split=split,
            )
