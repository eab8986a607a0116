import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chi2_contingency

from cxrflow import features as fk
from cxrflow.stages.confounding import age_group, confounding_report, cramers_v, file_traits

CLASSES = ("a", "b", "c")


def rows(spec):
    """[(split, class, source, age group), ...] from {(class, source, age group): count}, all in train."""
    return [("train", c, s, g) for (c, s, g), n in spec.items() for _ in range(n)]


def test_cramers_v_matches_a_hand_computation_and_scipy():
    # chi2 = n (ad - bc)^2 / ((a+b)(c+d)(a+c)(b+d)) = 20 * 60^2 / 10^4 = 7.2; V = sqrt(7.2 / 20) = 0.6
    table = np.array([[8, 2], [2, 8]])
    assert cramers_v(table) == pytest.approx(0.6)
    chi2 = chi2_contingency(table, correction=False)[0]
    assert cramers_v(table) == pytest.approx(math.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
    # A 3 x 2 table with an empty column (dropped) and a non-trivial value.
    table = np.array([[10, 0, 5], [3, 0, 9], [6, 0, 1]])
    kept = table[:, [0, 2]]
    chi2 = chi2_contingency(kept, correction=False)[0]
    assert cramers_v(table) == pytest.approx(math.sqrt(chi2 / kept.sum()))
    assert cramers_v(np.array([[3, 4]])) is None  # one class: undefined


def test_a_confounded_set_is_counted_and_flagged():
    report = confounding_report(rows({
        ("a", "ieee", "adult"): 6, ("a", "ieee", ""): 4,
        ("b", "kaggle", "child"): 5,
        ("c", "kaggle", "child"): 3, ("c", "ieee", "adult"): 2,
    }), CLASSES)
    assert report["images"] == 20
    assert report["class_by_source"] == {"a": {"ieee": 10}, "b": {"kaggle": 5}, "c": {"ieee": 2, "kaggle": 3}}
    # Table rows a, b, c; columns ieee, kaggle: [[10, 0], [0, 5], [2, 3]]. Expected counts with
    # column totals 12 / 8 and row totals 10 / 5 / 5 over 20: a (6, 4), b (3, 2), c (3, 2).
    chi2 = (10 - 6) ** 2 / 6 + 4 + 3 + (5 - 2) ** 2 / 2 + 1 / 3 + 1 / 2
    assert report["cramers_v"] == pytest.approx(math.sqrt(chi2 / 20), abs=1e-4)
    assert report["single_source_classes"] == {"a": "ieee", "b": "kaggle"}
    assert report["class_age_source"]["a"] == {"adult": {"ieee": 6}, "unknown": {"ieee": 4}}
    assert report["class_age_source"]["c"] == {"adult": {"ieee": 2}, "child": {"kaggle": 3}}
    assert report["age_mix"]["a"] == {"child": 0.0, "adult": 0.6, "unknown": 0.4}
    # a vs b+c (child 0.8, adult 0.2): 0.5 (0.8 + 0.4 + 0.4) = 0.8
    # b vs a+c (child 3, adult 8, unknown 4 of 15): 0.5 (0.8 + 8/15 + 4/15) = 0.8
    # c vs a+b (child 5, adult 6, unknown 4 of 15): 0.5 (|0.6 - 1/3| + 0 + 4/15) = 4/15
    assert report["age_mix_distance"] == pytest.approx({"a": 0.8, "b": 0.8, "c": 4 / 15}, abs=1e-4)
    text = "\n".join(report["warnings"])
    assert "Class 'a' comes only from source ieee in train" in text
    assert "Class 'b' comes only from source kaggle in train" in text
    assert "Class 'c' comes only" not in text
    assert "Class 'a' has a different age mix" in text and "Class 'b' has a different age mix" in text
    assert "Class 'c' has a different age mix" not in text
    assert f"Cramér's V = {report['cramers_v']:.2f}" in text


def test_an_unconfounded_set_raises_no_warning():
    spec = {(c, s, g): 3 for c in CLASSES for s in ("x", "y") for g in ("child", "adult")}
    report = confounding_report([(split, *r[1:]) for split in ("train", "eval", "test") for r in rows(spec)],
                                CLASSES)
    assert report["cramers_v"] == pytest.approx(0.0)
    assert report["single_source_classes"] == {}
    assert report["warnings"] == []
    assert report["absent_from_split"] == {}


def test_single_source_classes_are_judged_on_train():
    # Two sources for 'a' overall, but the external test source holds one of them.
    data = [("train", "a", "x", "")] * 12 + [("test", "a", "y", "")] * 5
    data += [("train", "b", "x", "")] * 6 + [("train", "b", "z", "")] * 6 + [("test", "b", "y", "")] * 5
    report = confounding_report(data, ("a", "b"), test_source="y")
    assert report["single_source_classes"] == {"a": "x"}
    assert report["class_by_source"]["a"] == {"x": 12, "y": 5}


def test_one_source_flags_no_class_and_has_no_cramers_v():
    report = confounding_report(rows({("a", "x", "adult"): 4, ("b", "x", "adult"): 4}), ("a", "b"))
    assert report["cramers_v"] is None
    assert report["single_source_classes"] == {}


def test_classes_absent_from_a_split_or_the_data_are_said_plainly():
    data = [("train", "a", "x", ""), ("eval", "a", "x", ""), ("test", "a", "x", ""), ("train", "b", "x", "")]
    report = confounding_report(data, CLASSES)
    assert report["absent_from_split"] == {"train": ["c"], "eval": ["b", "c"], "test": ["b", "c"]}
    assert "Class 'b' has no eval and no test images" in "\n".join(report["warnings"])
    assert "Class 'c' has no images in the data given" in "\n".join(report["warnings"])
    external = confounding_report(data[:2] + [("test", "b", "y", "")] + data[3:], ("a", "b"), test_source="y")
    assert "Class 'a' has no test images (the test source y holds none)" in "\n".join(external["warnings"])
    assert "Class 'a' has only 1 train image(s) (y, the test source, holds the rest): too few to learn it." \
        in external["warnings"]
    plenty = confounding_report([("train", "a", "x", "")] * 10 + [("train", "b", "x", "")] * 9, ("a", "b"))
    assert [w for w in plenty["warnings"] if "too few" in w] == [
        "Class 'b' has only 9 train image(s): too few to learn it."]


@pytest.mark.parametrize(("age", "declared", "group"), [
    ("45", "", "adult"), ("18", "", "adult"), ("17.9", "", "child"), ("4", "", "child"), ("063Y", "", "adult"),
    ("", "", ""), ("unknown", "", ""), ("45", "child", "child"), ("", "child", "child"),
])
def test_age_group_is_child_or_adult_and_a_declared_group_wins(age, declared, group):
    assert age_group(age, declared) == group


def encoded(mode, fmt, size=(50, 40), **kw):
    img = Image.new(mode, size)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(("mode", "fmt", "channels", "bits", "pil_mode"), [
    ("L", "PNG", 1, 8, "L"),
    ("I;16", "PNG", 1, 16, "I;16"),
    ("RGBA", "PNG", 4, 8, "RGBA"),
    ("P", "PNG", 1, 1, "P"),  # PIL packs a one-colour palette image into 1 bit per pixel: IHDR says so
    ("RGB", "JPEG", 3, 8, "RGB"),
    ("L", "JPEG", 1, 8, "L"),
    ("CMYK", "JPEG", 4, 8, "CMYK"),
    ("RGB", "TIFF", 3, 8, "RGB"),
])
def test_file_traits_come_from_the_header(mode, fmt, channels, bits, pil_mode):
    data = encoded(mode, fmt)
    assert file_traits(data) == {
        fk.TRAIT_BYTES_KEY: len(data), fk.TRAIT_WIDTH_KEY: 50, fk.TRAIT_HEIGHT_KEY: 40,
        fk.TRAIT_CHANNELS_KEY: channels, fk.TRAIT_BIT_DEPTH_KEY: bits,
        fk.TRAIT_FORMAT_KEY: fmt, fk.TRAIT_MODE_KEY: pil_mode,
    }


def test_a_16_bit_rgb_png_reports_16_bits_though_pil_opens_it_as_8_bit_rgb():
    import zlib

    # PIL cannot write 16-bit RGB PNG: build one by hand (IHDR bit depth 16, colour type 2).
    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    width, height = 4, 3
    raw = b"".join(b"\0" + b"\x12\x34" * 3 * width for _ in range(height))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big")
                                         + bytes([16, 2, 0, 0, 0]))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    traits = file_traits(data)
    assert (traits[fk.TRAIT_WIDTH_KEY], traits[fk.TRAIT_HEIGHT_KEY]) == (4, 3)
    assert traits[fk.TRAIT_BIT_DEPTH_KEY] == 16 and traits[fk.TRAIT_CHANNELS_KEY] == 3


def test_dicom_traits_come_from_its_tags(tmp_path):
    from tests.source_trees import write_dicom

    path = write_dicom(str(tmp_path / "a.dcm"), np.zeros((40, 56)))
    data = open(path, "rb").read()
    traits = file_traits(data)
    assert traits == {fk.TRAIT_BYTES_KEY: len(data), fk.TRAIT_WIDTH_KEY: 56, fk.TRAIT_HEIGHT_KEY: 40,
                      fk.TRAIT_CHANNELS_KEY: 1, fk.TRAIT_BIT_DEPTH_KEY: 12, fk.TRAIT_FORMAT_KEY: "DICOM",
                      fk.TRAIT_MODE_KEY: "I;16"}


def test_bytes_no_image_library_reads_have_only_their_size():
    assert file_traits(b"not an image") == {
        fk.TRAIT_BYTES_KEY: 12, fk.TRAIT_WIDTH_KEY: 0, fk.TRAIT_HEIGHT_KEY: 0, fk.TRAIT_CHANNELS_KEY: 0,
        fk.TRAIT_BIT_DEPTH_KEY: 0, fk.TRAIT_FORMAT_KEY: "", fk.TRAIT_MODE_KEY: ""}


def test_report_html_shows_the_confounding_section(tmp_path):
    import json

    from cxrflow.report.html import _data_section

    rows_ = rows({("a", "ieee", "adult"): 12, ("b", "kaggle", "child"): 12})
    report = {"classes": ["a", "b"], "by_source": {}, "sources": {}, "test_source": "kaggle:kaggle",
              "confounding": confounding_report(rows_, ("a", "b"))}
    (tmp_path / "ingest_report.json").write_text(json.dumps(report))
    html = _data_section(str(tmp_path))
    assert "Cramér's V between class and source: 1.00" in html
    assert "every image of kaggle:kaggle (external validation)" in html
    assert "<td>100%</td>" in html and "Class &#x27;a&#x27; comes only from source ieee in train" in html
