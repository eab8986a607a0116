"""ExampleGen over a mix of all four source kinds, with a corpus of bad files mixed in.

One Beam run (module-scoped: it costs seconds) backs every assertion: each bad file reported
once with the right reason, valid odd formats kept, copies collapsed across sources, DICOM
stored as PNG, and no patient in two splits.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import struct
import tracemalloc
import zlib
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from cxrflow import features as fk
from cxrflow.config import PipelineConfig
from cxrflow.images import ImageRejected, check_image
from cxrflow.stages.example_gen import run_example_gen, split_pattern
from tests.source_trees import (
    decode_gray,
    image_bytes,
    pixels,
    write,
    write_dicom,
    write_ieee_tree,
    write_kaggle_tree,
)

FOLDERS, IEEE, KAGGLE, DICOM = "folders:mixed", "ieee:covid-chestxray-dataset", "kaggle:chest_xray", "dicom:site"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def forged_png(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height: a decompression bomb's calling card."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def cmyk_jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((pixels("normal", seed) * 255).astype(np.uint8)).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


def reencoded_copy(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("L")
    buf = io.BytesIO()
    img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.BILINEAR).convert("RGB").save(buf, "JPEG", quality=75)
    return buf.getvalue()


BAD_FILES = {  # name in mixed/normal/: (bytes builder, reason)
    "zero.png": (lambda: b"", "empty"),
    "truncated.png": (lambda: image_bytes("normal", 11)[:600], "corrupt"),
    "truncated.jpg": (lambda: image_bytes("normal", 12, "jpeg_rgb")[:900], "corrupt"),
    "random.png": (lambda: np.random.default_rng(13).bytes(2048), "not_image"),
    "login.jpg": (lambda: b"<!DOCTYPE html><html><body>Please sign in</body></html>\n", "not_image"),
    "pixel.png": (lambda: image_bytes("normal", 14, size=1), "too_small"),
    "bomb.png": (lambda: forged_png(20000, 20000), "too_large"),
}


@pytest.fixture(scope="module")
def ingest(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("ingest")
    mixed, ieee, kaggle, dicom = (str(base / n) for n in ("mixed", "covid-chestxray-dataset", "chest_xray", "site"))
    ieee_outcomes = write_ieee_tree(ieee)
    write_kaggle_tree(kaggle)
    for i in range(3):
        write(os.path.join(mixed, "covid", f"c{i}.png"), image_bytes("covid", 500 + i))
    for name, (build, _) in BAD_FILES.items():
        write(os.path.join(mixed, "normal", name), build())
    write(os.path.join(mixed, "normal", "deep16.png"), image_bytes("normal", 15, "png16"))
    write(os.path.join(mixed, "normal", "cmyk.jpg"), cmyk_jpeg(16))
    # Cross-source copies: a byte-exact one, and a re-encoded, resized one.
    shutil.copy(os.path.join(ieee, "images", "normal-3.png"), os.path.join(mixed, "normal", "from_ieee.png"))
    with open(os.path.join(ieee, "images", "strep-2.png"), "rb") as f:
        write(os.path.join(kaggle, "train", "PNEUMONIA", "person50_bacteria_1.jpeg"), reencoded_copy(f.read()))
    write_dicom(os.path.join(dicom, "covid", "a.dcm"), pixels("covid", 600), photometric="MONOCHROME1", patient_id="P7")
    write_dicom(os.path.join(dicom, "covid", "b.dcm"), pixels("covid", 601), patient_id="P7", view="AP")
    write_dicom(os.path.join(dicom, "normal", "c.dcm"), pixels("normal", 602), patient_id="P8")
    with open(write_dicom(os.path.join(dicom, "normal", "broken.dcm"), pixels("normal", 603)), "rb+") as f:
        f.truncate(3000)  # header intact, pixel data cut short

    config = PipelineConfig(data=(f"folders:{mixed}", f"ieee:{ieee}", f"kaggle:{kaggle}", f"dicom:{dicom}"))
    out = str(base / "examples")
    report = run_example_gen(config, out)
    import tensorflow as tf

    examples = {}
    for split in fk.SPLITS:
        for path in glob.glob(split_pattern(out, split)):
            for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
                feats = tf.train.Example.FromString(raw).features.feature
                values = {k: feats[k].bytes_list.value[0] for k in fk.STRING_KEYS}
                examples[values[fk.IMAGE_ID_KEY].decode()] = dict(values, split=split)
    return {"report": report, "examples": examples, "roots": (mixed, ieee, kaggle, dicom), "ieee": ieee_outcomes}


def skipped_by_name(report: dict) -> dict[str, list[str]]:
    found = defaultdict(list)
    for row in report["skipped"]:
        found[os.path.basename(row["path"])].append(row["reason"])
    return found


def test_each_bad_file_is_skipped_once_with_its_reason(ingest):
    skipped = skipped_by_name(ingest["report"])
    for name, (_, reason) in BAD_FILES.items():
        assert skipped[name] == [reason], name
    assert skipped["outside.png"] == ["path_escape"]
    assert skipped["missing-9.png"] == ["missing_file"]  # excluded at listing, not read again
    assert skipped["broken.dcm"] == ["corrupt"]


def test_excluded_counts_per_source(ingest):
    sources = ingest["report"]["sources"]
    assert sources[FOLDERS]["excluded"] == {**Counter(r for _, r in BAD_FILES.values())}
    ieee_reasons = Counter(v for v in ingest["ieee"].values() if v not in ("covid", "bacterial", "normal"))
    # The byte-exact copy in the folders source has the smaller image id, so the IEEE file is the duplicate.
    assert sources[IEEE]["excluded"] == {**ieee_reasons, "duplicate": 1}
    assert sources[KAGGLE]["excluded"] == {"finding:viral": 1, "duplicate": 1}
    assert sources[DICOM]["excluded"] == {"corrupt": 1}
    for name, s in sources.items():
        assert s["rows"] == sum(s["kept"].values()) + sum(s["excluded"].values()), name


def test_valid_odd_formats_are_kept(ingest):
    examples, mixed = ingest["examples"], ingest["roots"][0]
    deep = examples[f"{FOLDERS}:normal/deep16.png"]
    with open(os.path.join(mixed, "normal", "deep16.png"), "rb") as f:
        assert deep[fk.IMAGE_KEY] == f.read()  # TF decodes 16-bit PNG: stored as found
    cmyk = examples[f"{FOLDERS}:normal/cmyk.jpg"][fk.IMAGE_KEY]
    assert cmyk.startswith(b"\x89PNG") and Image.open(io.BytesIO(cmyk)).mode == "RGB"


def test_duplicates_collapse_across_sources(ingest):
    dups = {d["image_id"]: d for d in ingest["report"]["duplicates"]}
    exact = dups[f"{IEEE}:images/normal-3.png"]
    assert (exact["kept"], exact["match"]) == (f"{FOLDERS}:normal/from_ieee.png", "exact")
    near = dups[f"{KAGGLE}:train/PNEUMONIA/person50_bacteria_1.jpeg"]
    assert (near["kept"], near["match"], near["label_conflict"]) == (f"{IEEE}:images/strep-2.png", "pixels", False)
    assert ingest["report"]["duplicates_removed"] == 2
    assert not set(dups) & set(ingest["examples"])


def test_no_patient_in_two_splits(ingest):
    assert ingest["report"]["patient_overlap"] == 0
    splits = defaultdict(set)
    for ex in ingest["examples"].values():
        splits[ex[fk.PATIENT_ID_KEY].decode()].add(ex["split"])
    assert all(len(s) == 1 for s in splits.values())
    # Kaggle ships person1 in train and test: the patient moves whole, to the majority split.
    assert splits[f"{KAGGLE}:person1"] == {"train"}
    assert splits[f"{DICOM}:P7"] and splits[f"{IEEE}:1"]
    assert ingest["report"]["patients_reassigned_to_avoid_leakage"] == 1


def test_every_source_contributes_and_counts_add_up(ingest):
    report, examples = ingest["report"], ingest["examples"]
    assert sum(sum(c.values()) for c in report["splits"].values()) == len(examples)
    assert {ex[fk.SOURCE_KEY].decode() for ex in examples.values()} == {FOLDERS, IEEE, KAGGLE, DICOM}


def test_dicom_is_stored_as_png_the_right_way_up(ingest):
    examples = ingest["examples"]
    a = examples[f"{DICOM}:covid/a.dcm"]
    assert a[fk.IMAGE_KEY].startswith(b"\x89PNG")
    assert (a[fk.VIEW_KEY], a[fk.SEX_KEY], a[fk.AGE_KEY], a[fk.AGE_GROUP_KEY]) == (b"PA", b"F", b"45", b"adult")
    # MONOCHROME1 inverted back: the stored picture correlates with the drawn one, not its negative.
    corr = np.corrcoef(decode_gray(a[fk.IMAGE_KEY]).ravel(), pixels("covid", 600).ravel())[0, 1]
    assert corr > 0.95


def test_bomb_is_refused_without_decoding():
    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected) as e:
            check_image(forged_png(20000, 20000), 50_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.reason == "too_large"
    assert peak < 10_000_000  # the pixels alone would take 400 MB
