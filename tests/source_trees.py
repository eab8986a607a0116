"""Builders of small dataset trees in each real layout, shared by the source and ingest tests.

Images are drawn by `cxrflow.sample_data.render` at 64-96 px, so building a tree takes well under
a second. Every image gets its own (label, seed) pair, so no two fixture images are duplicates
unless a test copies one on purpose.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from PIL import Image

from cxrflow.sample_data import encode, render

IEEE_HEADER = (
    "patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,intubation_present,went_icu,in_icu,"
    "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
    "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,other_notes"
).split(",")


_LABEL_SEEDS = {"covid": 0, "bacterial": 1, "normal": 2}


def pixels(label: str, seed: int, size: int = 80) -> np.ndarray:
    """A synthetic X-ray; distinct (label, seed) pairs give distinct pictures."""
    return render(label, np.random.default_rng([_LABEL_SEEDS.get(label, 9), seed]), size)


def image_bytes(label: str, seed: int, encoding: str = "png8", size: int = 80) -> bytes:
    return encode(pixels(label, seed, size), encoding, (size, size))


def rgb_png(label: str, seed: int, size: int = 80) -> bytes:
    """A grayscale picture saved as RGB PNG, as Actualmed ships its films."""
    buf = io.BytesIO()
    Image.fromarray((pixels(label, seed, size) * 255).astype(np.uint8)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def ieee_row(patientid: str, finding: str, filename: str, **fields: str) -> dict[str, str]:
    """A metadata row with realistic defaults; `fields` overrides any column."""
    row = dict.fromkeys(IEEE_HEADER, "")
    row.update(
        patientid=patientid,
        offset="0",
        sex="M",
        age="65",
        finding=finding,
        RT_PCR_positive="Y" if "COVID" in finding else "",
        view="PA",
        modality="X-ray",
        date="2020",
        location="Wuhan, China",
        folder="images",
        filename=filename,
        doi="10.1016/example",
        url="https://example.org/case",
        license="CC BY-NC-SA",
        # Quoted on write: commas, a double quote and line breaks, as in the real notes.
        clinical_notes=f'Patient {patientid}, fever and cough.\nBilateral "ground glass" opacities,\nday 3.',
        other_notes="",
    )
    row.update(fields)
    return row


def write_metadata(root: str, rows: list[dict[str, str]], header: list[str] | None = None) -> str:
    header = header or IEEE_HEADER
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "metadata.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_ieee_tree(root: str) -> dict[str, str]:
    """A current-release IEEE clone; returns {filename: expected outcome} (class or reason)."""
    outcomes = {
        "covid-1a.png": "covid",
        "covid-1b.jpg": "covid",  # same patient, AP Supine: a frontal view, kept by default
        "covid-1c.png": "view",  # same patient, lateral: not a frontal view
        "strep-2.png": "bacterial",
        "normal-3.png": "normal",
        "sars-4.png": "finding:Pneumonia/Viral/SARS",
        "pcp-5.png": "finding:Pneumonia/Fungal/Pneumocystis",
        "todo-6.png": "finding:todo",
        "ct-7.png": "modality",
        "covid-8.png": "covid",
        "missing-9.png": "missing_file",
    }
    rows = [
        ieee_row("1", "Pneumonia/Viral/COVID-19", "covid-1a.png", sex="F", age="54"),
        ieee_row("1", "Pneumonia/Viral/COVID-19", "covid-1b.jpg", sex="F", age="54", view="AP Supine"),
        ieee_row("1", "Pneumonia/Viral/COVID-19", "covid-1c.png", sex="F", age="54", view="L"),
        ieee_row("2", "Pneumonia/Bacterial/Streptococcus", "strep-2.png", age=""),
        ieee_row("3", "No Finding", "normal-3.png"),
        ieee_row("4", "Pneumonia/Viral/SARS", "sars-4.png"),
        ieee_row("5", "Pneumonia/Fungal/Pneumocystis", "pcp-5.png"),
        ieee_row("6", "todo", "todo-6.png"),
        ieee_row("7", "Pneumonia/Viral/COVID-19", "ct-7.png", modality="CT", view="Axial"),
        ieee_row("8", "Pneumonia/Viral/COVID-19", "covid-8.png", view="PA", sex=""),
        ieee_row("9", "Pneumonia/Viral/COVID-19", "missing-9.png"),
        ieee_row("10", "Pneumonia/Viral/COVID-19", "../../outside.png"),
    ]
    write_metadata(root, rows)
    seeds = {"covid": 100, "bacterial": 200, "normal": 300}
    for i, (name, outcome) in enumerate(outcomes.items()):
        if outcome == "missing_file":
            continue
        label = outcome if outcome in seeds else "covid"
        encoding = "jpeg_rgb" if name.endswith(".jpg") else "png8"
        write(os.path.join(root, "images", name), image_bytes(label, seeds.get(label, 100) + i, encoding))
    # The `../` row points here: a real file outside the clone, which must never be read.
    write(os.path.join(os.path.dirname(root), "outside.png"), image_bytes("normal", 999))
    outcomes["../../outside.png"] = "path_escape"
    return outcomes


KAGGLE_FILES = {
    # path: (label or exclusion reason, patient key, provided split with kaggle_merge_val on)
    "train/NORMAL/IM-0115-0001.jpeg": ("normal", "IM-0115", "train"),
    "train/NORMAL/IM-0115-0002.jpeg": ("normal", "IM-0115", "train"),
    "train/NORMAL/NORMAL2-IM-0115-0001.jpeg": ("normal", "NORMAL2-IM-0115", "train"),
    "train/PNEUMONIA/person1_bacteria_1.jpeg": ("bacterial", "person1", "train"),
    "train/PNEUMONIA/person1_bacteria_2.jpeg": ("bacterial", "person1", "train"),
    "train/PNEUMONIA/person3_virus_15.jpeg": ("finding:viral", "person3", "train"),
    "val/NORMAL/NORMAL2-IM-1427-0001.jpeg": ("normal", "NORMAL2-IM-1427", "train"),
    "val/PNEUMONIA/person1946_bacteria_4874.jpeg": ("bacterial", "person1946", "train"),
    # person1 again, in test: leakage the splitter must resolve by moving the patient whole.
    "test/PNEUMONIA/person1_bacteria_3.jpeg": ("bacterial", "person1", "test"),
    "test/PNEUMONIA/person100_bacteria_478.jpeg": ("bacterial", "person100", "test"),
    "test/NORMAL/IM-0001-0001.jpeg": ("normal", "IM-0001", "test"),
}


def write_kaggle_tree(root: str) -> dict[str, tuple[str, str, str]]:
    for i, (rel, (outcome, _, _)) in enumerate(KAGGLE_FILES.items()):
        label = outcome if outcome in ("normal", "bacterial") else "covid"
        write(os.path.join(root, *rel.split("/")), image_bytes(label, 400 + i, "jpeg_rgb"))
    return dict(KAGGLE_FILES)


def write_dicom(
    path: str,
    image: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    patient_id: str = "P1",
    view: str = "PA",
    sex: str = "F",
    age: str = "045Y",
    window: tuple[float, float] | None = None,
    rows_cols: tuple[int, int] | None = None,
) -> str:
    """Writes a 12-bit DX DICOM file; `image` is [0,1] with bright = dense, as a viewer shows it.

    MONOCHROME1 files store the inverted values, as real CR/DX devices do. `rows_cols` forges
    the header size (for the decompression-bomb check) without writing that many pixels.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.round(image * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID, ds.PatientSex, ds.PatientAge, ds.ViewPosition = patient_id, sex, age, view
    ds.Rows, ds.Columns = rows_cols or stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def decode_gray(data: bytes) -> np.ndarray:
    """Decoded pixels as float [0,1], 8- or 16-bit alike."""
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img, dtype=np.float64)
    return arr / (65535.0 if img.mode.startswith("I") else 255.0)


# The COVID-Net team's sets: the real headers, verbatim.
ACTUALMED_HEADER = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,imagename,"
                    "artifacts/distortion,notes").split(",")
FIGURE1_HEADER = ("patientid,offset,sex,age,finding,survival,temperature,pO2 saturation,view,modality,"
                  "artifacts/distortion,notes").split(",")


def actualmed_name(prefix: str, stamp: str) -> str:
    """A file name in Actualmed's style: the DICOM UID of the film, saved as PNG."""
    return f"{prefix}.1.2.840.113564.1722810170.{stamp}.1003000225002.png"


def write_actualmed_tree(root: str) -> dict[str, str]:
    """An Actualmed clone; returns {imagename: expected outcome} (class or reason)."""
    rows = [  # (patientid, finding, view, imagename stamp, file present, expected)
        ("ANON100", "COVID-19", "PA", "20200321123520296900", True, "covid"),
        ("ANON239", "No finding", "AP", "202003241816485934", True, "normal"),
        ("ANON56", "No finding", "PA", "20200317090830828260", True, "normal"),
        ("ANON56", "No finding", "PA", "20200317104341875470", True, "normal"),  # same patient, later film
        ("ANON196", "", "PA", "20200313090023421700", True, "unlabelled"),  # "Inconclusive" in the notes
        ("ANON196", "", "PA", "20200313100318375460", False, "unlabelled"),
        ("ANON7", "COVID-19", "PA", "20200401000000000001", False, "missing_file"),  # >= 4 MiB, not in the clone
        ("ANON8", "Pneumonia", "AP", "20200402000000000002", True, "finding:Pneumonia"),
    ]
    notes = {"COVID-19": ", date taken (YYYYMMDD): 20200321", "": "Inconclusive, date taken (YYYYMMDD): 20200313",
             "No finding": "Negative (covid-19 viral infection is excluded), date taken (YYYYMMDD): 20200317",
             "Pneumonia": "Pneumonia, date taken (YYYYMMDD): 20200402"}
    meta, outcomes = [], {}
    for i, (patient, finding, view, stamp, present, outcome) in enumerate(rows):
        name = actualmed_name("DX" if i % 2 else "CR", stamp)
        meta.append(dict.fromkeys(ACTUALMED_HEADER, "") | {
            "patientid": patient, "finding": finding, "view": view, "modality": "X-ray", "imagename": name,
            "notes": notes[finding]})
        outcomes[name] = outcome
        if present:
            label = outcome if outcome in _LABEL_SEEDS else "normal"
            write(os.path.join(root, "images", name), rgb_png(label, 1000 + i))
    write_metadata(root, meta, ACTUALMED_HEADER)
    return outcomes


def write_figure1_tree(root: str) -> dict[str, str]:
    """A Figure1 clone, metadata in Windows-1252 as shipped; returns {patientid: expected outcome}."""
    rows = [  # (patientid, finding, age, view, file extension or "", expected)
        ("COVID-00003a", "COVID-19", "28", "AP erect", ".jpg", "covid"),
        ("COVID-00003b", "COVID-19", "28", "AP erect", ".jpg", "covid"),  # the same patient, intubated
        ("COVID-00012", "COVID-19", "52", "", ".png", "covid"),  # no view given: kept
        ("COVID-00023", "No finding", "", "", ".jpg", "normal"),
        ("COVID-00040a", "No finding", "early 40s", "", ".jpg", "normal"),  # a year earlier...
        ("COVID-00040b", "", "early 40s", "", ".jpg", "unlabelled"),  # ... than this one
        ("COVID-00031", "Pneumonia", "", "", ".jpg", "finding:Pneumonia"),
        ("COVID-00048", "COVID-19", "", "AP", "", "missing_file"),
        ("COVID-00050", "COVID-19", "61", "L", ".jpg", "view"),
    ]
    lines = [",".join(FIGURE1_HEADER)]
    outcomes = {}
    for i, (patient, finding, age, view, ext, outcome) in enumerate(rows):
        # Quoted notes with a comma, a line break, a degree sign and a curly apostrophe: cp1252 bytes.
        note = f'"{age or "?"} yo, fever 38\u00b0 + cough.\nO2 says in low 90\u2019s"'
        lines.append(f"{patient},,M,{age},{finding},,,,{view},X-ray,,{note}")
        outcomes[patient] = outcome
        if ext:
            label = outcome if outcome in _LABEL_SEEDS else "covid"
            write(os.path.join(root, "images", patient + ext), image_bytes(label, 1100 + i, "jpeg_rgb"))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.csv"), "wb") as f:
        f.write("\r\n".join(lines).encode("cp1252") + b"\r\n")
    return outcomes


# NIH ChestX-ray14: the 2017 header verbatim, with its trailing comma (an unnamed last column).
NIH_HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                   "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
NIH_ROWS = [  # (Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age, View Position, expected)
    ("00000001_000.png", "Cardiomegaly", "0", "1", "57", "PA", "finding:Cardiomegaly"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "58", "PA", "multi_label"),
    ("00000002_000.png", "No Finding", "0", "2", "80", "PA", "normal"),
    ("00000002_001.png", "No Finding", "1", "2", "81", "AP", "normal"),
    ("00000003_000.png", "Pneumonia", "0", "3", "74", "PA", "finding:Pneumonia"),
    ("00000003_001.png", "Pneumonia|Infiltration", "1", "3", "74", "PA", "multi_label"),
    ("00000004_000.png", "No Finding", "0", "4", "148", "PA", "normal"),  # an impossible age of the 2017 file
    ("00000005_000.png", "No Finding", "0", "5", "45", "AP", "missing_file"),
]


def write_nih_tree(root: str, split_folders: bool = True) -> dict[str, str]:
    """A ChestX-ray14 download; returns {Image Index: expected outcome} (class or reason).

    `split_folders` unpacks files into `images_001/images/`, `images_002/images/` as the archives
    do; otherwise all go in `images/`.
    """
    lines = [NIH_HEADER_2017]
    for i, (name, labels, follow_up, patient, age, view, outcome) in enumerate(NIH_ROWS):
        lines.append(f"{name},{labels},{follow_up},{patient},{age},{'F' if i % 2 else 'M'},{view},2500,2048,"
                     f"0.14300000000000002,0.14300000000000002,")
        if outcome == "missing_file":
            continue
        folder = os.path.join(f"images_{1 + i // 4:03d}", "images") if split_folders else "images"
        label = outcome if outcome in _LABEL_SEEDS else "bacterial"
        write(os.path.join(root, folder, name), image_bytes(label, 1200 + i))
    write(os.path.join(root, "Data_Entry_2017.csv"), ("\n".join(lines) + "\n").encode())
    write(os.path.join(root, "BBox_List_2017.csv"), b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    return {row[0]: row[-1] for row in NIH_ROWS}


RSNA_IMAGES = [  # (patientId, class, boxes, DICOM view, file present, expected)
    ("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "No Lung Opacity / Not Normal", 0, "PA", True,
     "finding:No Lung Opacity / Not Normal"),
    ("003d8fa0-6bf1-40ed-b54c-ac657f8495c5", "Normal", 0, "PA", True, "normal"),
    ("00436515-870c-4b36-a041-de91049b9ab4", "Lung Opacity", 2, "AP", True, "finding:Lung Opacity"),
    ("00569f44-917d-4c86-a842-81832af98c30", "Normal", 0, "AP", True, "normal"),
    ("006cec2e-6ce2-4549-bffa-eadfcd1e9970", "Normal", 0, "PA", False, "missing_file"),
    ("00704310-78a8-4b38-8475-49f4573b2dbb", "Lung Opacity", 1, "PA", True, "finding:Lung Opacity"),
]


def write_rsna_tree(root: str) -> dict[str, str]:
    """The Kaggle download of the RSNA challenge; returns {patientId: expected outcome}."""
    labels, classes = ["patientId,x,y,width,height,Target"], ["patientId,class"]
    for i, (image, name, boxes, view, present, _) in enumerate(RSNA_IMAGES):
        for b in range(max(boxes, 1)):  # one row per box; one empty row without boxes
            labels.append(f"{image},{264.0 + b},{152.0 + b},213.0,379.0,1" if boxes else f"{image},,,,,0")
            classes.append(f"{image},{name}")  # the class row repeats with every box row
        if present:
            write_dicom(os.path.join(root, "stage_2_train_images", f"{image}.dcm"), pixels("normal", 1300 + i, 48),
                        patient_id=image, view=view, sex="F" if i % 2 else "M", age=str(40 + i))
    write(os.path.join(root, "stage_2_train_labels.csv"), ("\n".join(labels) + "\n").encode())
    write(os.path.join(root, "stage_2_detailed_class_info.csv"), ("\n".join(classes) + "\n").encode())
    # Unlabelled test images and the sample submission are part of the download, not of the data.
    write_dicom(os.path.join(root, "stage_2_test_images", "0000a175-0e68-4ca4-b1af-167204a7e0bc.dcm"),
                pixels("normal", 1399, 48), patient_id="0000a175-0e68-4ca4-b1af-167204a7e0bc")
    write(os.path.join(root, "stage_2_sample_submission.csv"), b"patientId,PredictionString\n")
    return {image: expected for image, *_, expected in RSNA_IMAGES}


COVIDX_LINES = {  # split: [(line, expected outcome, file present)]; real lines' shapes and names
    "train": [
        ("ANON56 CR.1.2.840.113564.1722810170.20200317090830828260.1003000225002.png normal actmed", "normal", True),
        ("ANON56 CR.1.2.840.113564.1722810170.20200317104341875470.1003000225002.png normal actmed", "normal", True),
        ("5 ARDSSevere.png pneumonia cohen", "finding:pneumonia", True),
        ("419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png COVID-19 ricord", "covid", True),
        ("5 covid-19-pneumonia-5.jpg COVID-19 cohen", "covid", True),  # patient 5 of another source
        ("8989e25c-a698-48fc-b428-fff56931fc8f 8989e25c-a698-48fc-b428-fff56931fc8f.png normal rsna", "missing_file",
         False),
        ("3 SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg viral", "finding:viral", True),  # 3 columns
        ("29 streptococcus-pneumoniae-pneumonia-1.jpg bacteria", "bacterial", True),
        ("ANON56 CR.1.2.840.113564.1722810170.20200317090830828260.1003000225002.png normal actmed", "duplicate_row",
         True),
        ("COVID-00012 COVID(12).png", "unparsed_line", False),
    ],
    "test": [
        ("419639-001464 MIDRC-RICORD-1C-419639-001464-39871-0.png positive ricord", "covid", True),
        ("47c78742-4998-4878-aec4-37b11b1354ac 47c78742-4998-4878-aec4-37b11b1354ac.png negative rsna",
         "finding:negative", True),
        ("ANON56 CR.1.2.840.113564.1722810170.20200317090830828260.1003000225002.png normal actmed", "normal", True),
    ],
}


def write_covidx_tree(root: str) -> dict[str, list[tuple[str, str]]]:
    """A COVIDx folder (Kaggle layout); returns {split: [(filename or line, expected outcome)]}."""
    expected: dict[str, list[tuple[str, str]]] = {}
    for split, lines in COVIDX_LINES.items():
        expected[split] = []
        for i, (line, outcome, present) in enumerate(lines):
            fields = line.split()
            expected[split].append((fields[1] if outcome != "unparsed_line" else line, outcome))
            if present and not os.path.exists(os.path.join(root, split, fields[1])):
                label = outcome if outcome in _LABEL_SEEDS else "bacterial"
                write(os.path.join(root, split, fields[1]), image_bytes(label, 1400 + 20 * (split == "test") + i))
        # Trailing blanks and a blank last line, as the published lists have.
        write(os.path.join(root, f"{split}.txt"), ("\n".join(f"{line} " for line, _, _ in lines) + "\n\n").encode())
    return expected
