"""DICOM: header tags at listing, VOI LUT / windowing and MONOCHROME1 at conversion, bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cxrflow.images import ImageRejected, check_image, is_dicom
from cxrflow.sources import ADAPTERS, Exclusion, Record
from cxrflow.sources.dicom import DicomSource, age_in_years, dicom_to_png_bytes
from tests.source_trees import decode_gray, pixels, write, write_dicom

CLASSES = ("covid", "bacterial", "normal")
MAX_PIXELS = 50_000_000


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def ramp() -> np.ndarray:
    """A left-to-right ramp: easy to check orientation and windowing on."""
    return np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))


def test_registered():
    assert ADAPTERS["dicom"] is DicomSource


def test_monochrome2_and_monochrome1_render_alike(tmp_path, ramp):
    mono2 = decode_gray(dicom_to_png_bytes(read(write_dicom(str(tmp_path / "a.dcm"), ramp))))
    mono1 = decode_gray(dicom_to_png_bytes(read(write_dicom(str(tmp_path / "b.dcm"), ramp, photometric="MONOCHROME1"))))
    assert mono2.shape == (48, 64)
    # MONOCHROME1 stores dense as low values; after inversion both show the ramp dark to bright.
    assert mono2[0, 0] == 0 and mono2[0, -1] == 1
    np.testing.assert_allclose(mono1, mono2, atol=1 / 4095)


def test_window_is_applied(tmp_path, ramp):
    # Window over the middle third of the 12-bit range: both outer thirds saturate.
    png = dicom_to_png_bytes(read(write_dicom(str(tmp_path / "w.dcm"), ramp, window=(2048, 1365))))
    row = decode_gray(png)[0]
    assert (row[:15] == 0).all() and (row[-15:] == 1).all()
    assert 0 < row[32] < 1


def test_check_image_converts_dicom_to_16_bit_png(tmp_path):
    data = read(write_dicom(str(tmp_path / "x.dcm"), pixels("normal", 1, 64)))
    assert is_dicom(data)
    checked = check_image(data, MAX_PIXELS)
    assert checked.format == "DICOM" and checked.reencoded
    assert checked.data.startswith(b"\x89PNG") and checked.mode == "I;16"
    assert (checked.width, checked.height) == (64, 64)
    assert checked.pixel_hash and len(checked.thumbnail) == 256


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[: len(d) - 2000], "corrupt"),  # pixel data cut short
        # Garbage after the DICM magic: pydicom reads on leniently and finds no pixels.
        (lambda d: d[:132] + np.random.default_rng(0).bytes(64), "not_image"),
    ],
)
def test_damaged_dicom_is_rejected(tmp_path, damage, reason):
    data = read(write_dicom(str(tmp_path / "d.dcm"), pixels("covid", 2, 64)))
    with pytest.raises(ImageRejected) as e:
        check_image(damage(data), MAX_PIXELS)
    assert e.value.reason == reason


def test_forged_size_is_too_large_before_decoding(tmp_path):
    data = read(write_dicom(str(tmp_path / "big.dcm"), pixels("covid", 3, 64), rows_cols=(20000, 20000)))
    with pytest.raises(ImageRejected) as e:
        check_image(data, MAX_PIXELS)
    assert e.value.reason == "too_large"


def test_dicom_without_pixels_is_not_an_image(tmp_path):
    import pydicom

    path = write_dicom(str(tmp_path / "sr.dcm"), pixels("covid", 4, 64))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageRejected) as e:
        check_image(read(path), MAX_PIXELS)
    assert e.value.reason == "not_image"


def test_scan_reads_tags_and_labels_by_folder(tmp_path):
    root = str(tmp_path / "site_dicom")
    write_dicom(os.path.join(root, "COVID-19", "a.dcm"), pixels("covid", 5, 64), patient_id="P7", sex="M", age="045Y")
    write_dicom(os.path.join(root, "COVID-19", "b.dcm"), pixels("covid", 6, 64), patient_id="P7", view="AP")
    write_dicom(os.path.join(root, "test", "normal", "c.dcm"), pixels("normal", 7, 64), patient_id="", age="018M")
    write(os.path.join(root, "normal", "broken.dcm"), b"not a dicom file at all")
    write(os.path.join(root, "normal", "notes.txt"), b"about")
    write(os.path.join(root, "lateral", "d.dcm"), b"x")
    items = list(DicomSource(root, CLASSES, {}).scan())
    records = {os.path.relpath(r.path, root): r for r in items if isinstance(r, Record)}
    exclusions = {os.path.relpath(e.path, root): e.reason for e in items if isinstance(e, Exclusion)}
    assert exclusions == {"normal/notes.txt": "not_dicom", "lateral/d.dcm": "unknown_label:lateral"}
    a, b, c = records["COVID-19/a.dcm"], records["COVID-19/b.dcm"], records["test/normal/c.dcm"]
    assert (a.label, a.patient_id, a.sex, a.age, a.view) == ("covid", "dicom:site_dicom:P7", "M", "45", "PA")
    assert b.patient_id == a.patient_id and b.view == "AP"
    assert (c.label, c.provided_split, c.age) == ("normal", "test", "1.5")
    assert c.patient_id == "dicom:site_dicom:c"  # no PatientID: the file is its own patient
    # An unreadable file is still listed: ExampleGen's image check rejects and reports it.
    assert records["normal/broken.dcm"].patient_id == "dicom:site_dicom:broken"


@pytest.mark.parametrize(
    ("value", "years"),
    [("045Y", "45"), ("45", "45"), ("018M", "1.5"), ("006W", "0.1"), ("010D", "0.0"), ("", ""), ("old", "")],
)
def test_age_in_years(value, years):
    assert age_in_years(value) == years
