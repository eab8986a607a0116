"""Shortcut checks: the file-traits probe and the lungs-hidden test (report/shortcut.py).

The probe's examples are written by ExampleGen's own `to_example`, so the traits are the ones a
run records. The lungs-hidden models are tiny CNNs trained here on purpose-built images and
exported with the real serving module, so the check runs through the same signatures as in a run.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from cxrflow import features as fk
from cxrflow.metrics import metrics_from_probabilities
from cxrflow.report import shortcut
from cxrflow.sample_data import encode, render
from cxrflow.sources import Record

SIZE = 32
CLASSES = ("a", "b")


# --- trait probe -----------------------------------------------------------------------------
def _write_examples(path: str, items: list[tuple[str, bytes]]) -> None:
    import tensorflow as tf

    from cxrflow.stages.example_gen import to_example

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for i, (label, data) in enumerate(items):
            record = Record(path=f"x/{i}", image_id=f"s:{i}", label=label, patient_id=f"p{i}", source="s")
            writer.write(to_example(record, data))


def _trait_set(root, n: int, seed: int, confounded: bool) -> tuple[str, str]:
    """Train/test examples of classes a and b with the SAME pixels distribution (all `normal`
    renders) and the same size range: only the encoding can tell them apart, and only when
    `confounded` (a = RGB JPEG, b = 16-bit PNG); otherwise each image's encoding is a coin flip."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in (("train", n), ("test", n // 2)):
        items = []
        for i in range(count):
            label = CLASSES[i % 2]
            if confounded:
                encoding = "jpeg_rgb" if label == "a" else "png16"
            else:
                encoding = ("jpeg_rgb", "png16")[int(rng.integers(0, 2))]
            side = int(rng.integers(48, 81))
            items.append((label, encode(render("normal", rng, 48), encoding, (side, side))))
        path = os.path.join(root, f"Split-{split}", "data.tfrecord")
        _write_examples(path, items)
        splits[split] = path
    return splits["train"], splits["test"]


GOOD_MODEL = {"macro_recall": 0.9}


def test_probe_warns_when_the_encoding_gives_the_class_away(tmp_path):
    train, test = _trait_set(str(tmp_path), 60, seed=1, confounded=True)
    result = shortcut.trait_probe(train, test, CLASSES, GOOD_MODEL, seed=0, margin=0.05, max_macro_recall=0.8)
    # By construction the format alone separates the classes: every test image is recalled.
    assert [result["metrics"]["per_class"][c]["recall"] for c in CLASSES] == [1.0, 1.0]
    assert result["metrics"]["per_class"]["a"]["support"] == 15
    assert result["warning"] and "file traits alone" in result["warning"]
    # Only traits went in: no pixel ever reaches the probe.
    assert {k.split("=")[0] for k in result["importance"]} <= {*shortcut.TRAIT_INT_KEYS, *shortcut.TRAIT_STR_KEYS,
                                                                "bytes_per_pixel"}
    assert shortcut.warnings({"shortcut": {"trait_probe": result}}) == [result["warning"]]


def test_probe_stays_quiet_when_the_encoding_is_independent_of_the_class(tmp_path):
    train, test = _trait_set(str(tmp_path), 60, seed=2, confounded=False)
    result = shortcut.trait_probe(train, test, CLASSES, GOOD_MODEL, seed=0, margin=0.05, max_macro_recall=0.8)
    assert result["warning"] is None
    assert result["metrics"]["macro_recall"] < 0.8


def test_probe_is_skipped_with_a_reason_for_examples_without_traits(tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "old.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:  # an example as ExampleGen wrote it before traits
        feature = {fk.LABEL_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a"]))}
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    result = shortcut.trait_probe(path, path, CLASSES, GOOD_MODEL, seed=0, margin=0.05, max_macro_recall=0.8)
    assert "no file traits" in result["skipped"]


# --- geometry, by hand -----------------------------------------------------------------------
def test_hide_center_fills_the_central_box_with_the_mean_outside_it():
    img = np.zeros((1, 10, 10), np.float32)
    img[0, :5] = 1.0  # top half bright: the mean outside the central 6x6 box is 32/64
    img[0, 5, 5] = 7.0  # inside the box: must not leak into the fill
    out = shortcut.hide_center(img, 0.6)
    assert shortcut.central_box(10, 0.6) == (2, 8)
    np.testing.assert_allclose(out[0, 2:8, 2:8], 0.5)
    np.testing.assert_array_equal(out[0, :2], img[0, :2])  # outside untouched
    np.testing.assert_array_equal(out[0, 8:], img[0, 8:])
    assert img[0, 5, 5] == 7.0  # the input is not modified


def test_outside_share_by_hand():
    maps = np.zeros((3, 10, 10))
    maps[0, 0, 0] = 1.0  # all outside
    maps[1, 4, 4] = 1.0  # all inside
    maps[2, 0, 0] = maps[2, 4, 4] = 1.0
    maps[2, 5, 5] = 2.0  # 1 of 4 outside
    share = shortcut.outside_share(np.concatenate([maps, np.zeros((1, 10, 10))]), 0.6)
    np.testing.assert_allclose(share[:3], [1.0, 0.0, 0.25])
    assert np.isnan(share[3])  # an all-zero map says nothing


# --- lungs hidden ----------------------------------------------------------------------------
def _images(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class b differs from a only by a corner marker (`corner`) or only by a central disc
    (`center`); the other cue appears in half of both classes, independently of the class."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.4, (n, SIZE, SIZE)).astype(np.float32)
    y = np.arange(n) % 2
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < 6**2
    decoy = rng.random(n) < 0.5
    marked = y == 1 if kind == "corner" else decoy
    discs = decoy if kind == "corner" else y == 1
    x[marked, 1:6, 1:6] = 1.0
    x[discs] = np.where(disc, 0.9, x[discs])
    return x, y


def _png16(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _train_and_export(kind: str, out_dir: str) -> str:
    import keras

    from cxrflow.stages.transform import decode_batch
    from cxrflow.trainer.export import export_serving_model
    from cxrflow.trainer.models import build_model

    x, y = _images(kind, 160, seed=5)
    model = build_model("cnn", SIZE, 2, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[..., None], y, epochs=8, batch_size=16, verbose=0, shuffle=False)

    def tft_layer(features):  # the transform graph's decode, as TFT embeds it in a run's model
        return {fk.IMAGE_XF_KEY: decode_batch(features[fk.IMAGE_KEY], SIZE)}

    return export_serving_model(model, tft_layer, CLASSES, SIZE, "unit", 1, os.path.join(out_dir, "model"))


def _test_examples(kind: str, path: str) -> list[bytes]:
    import tensorflow as tf

    x, y = _images(kind, 60, seed=9)
    encoded = [_png16(img) for img in x]
    with tf.io.TFRecordWriter(path) as writer:
        for data, label in zip(encoded, y, strict=True):
            feature = {fk.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                       fk.LABEL_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[CLASSES[label].encode()]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return encoded


@pytest.mark.parametrize("kind, warns", [("corner", True), ("center", False)])
def test_lungs_hidden_warns_for_a_corner_marker_model_only(kind, warns, tmp_path):
    import tensorflow as tf

    model_dir = _train_and_export(kind, str(tmp_path))
    pattern = str(tmp_path / "test.tfrecord")
    encoded = _test_examples(kind, pattern)
    labels = np.arange(len(encoded)) % 2
    served = tf.saved_model.load(model_dir).signatures["serving_default"]
    intact = metrics_from_probabilities(labels, served(images=tf.constant(encoded))["probabilities"].numpy(), CLASSES)
    assert intact["macro_recall"] > 0.9  # both models learned their cue

    result = shortcut.lungs_hidden(model_dir, pattern, CLASSES, SIZE, 0.6, 0.15, intact)
    # Independently: hide the box ourselves and ask the served model.
    masked = np.array([np.asarray(Image.open(io.BytesIO(d)), np.float32) / 65535 for d in encoded])
    masked[:, 6:26, 6:26] = np.array([m[np.pad(np.zeros((20, 20), bool), 6, constant_values=True)].mean()
                                      for m in masked])[:, None, None]
    expected = metrics_from_probabilities(
        labels, served(images=tf.constant([_png16(m) for m in masked]))["probabilities"].numpy(), CLASSES)
    assert result["macro_recall_lungs_hidden"] == pytest.approx(expected["macro_recall"])
    assert result["chance"] == 0.5
    assert (result["warning"] is not None) == warns
    if warns:
        assert result["macro_recall_lungs_hidden"] > 0.8
    else:
        assert result["macro_recall_lungs_hidden"] < 0.65
    shares = [v["gradcam_outside_share"] for v in result["per_class"].values()]
    assert all(0 <= s <= 1 for s in shares)
    # Grad-CAM, the second signal: the marker class's maps sit in the corner, the disc's in the centre.
    assert ("gradcam_note" in result) == warns
    if warns:
        assert result["per_class"]["b"]["gradcam_outside_share"] > result["gradcam_flag_above"]
    else:
        assert max(shares) < result["gradcam_area_outside"]
    assert sum(v["gradcam_images"] for v in result["per_class"].values()) == 2 * shortcut.GRADCAM_PER_CLASS


def test_kfp_metrics_carry_the_checks_that_ran():
    ran = {"shortcut": {"trait_probe": {"metrics": {"macro_recall": 0.75}},
                        "lungs_hidden": {"macro_recall_lungs_hidden": 0.5}, "warnings": ["w"]}}
    assert shortcut.kfp_metrics(ran) == {"shortcut_warnings": 1.0, "trait_probe_macro_recall": 0.75,
                                         "lungs_hidden_macro_recall": 0.5}
    skipped = {"shortcut": {"trait_probe": {"skipped": "why"}, "lungs_hidden": {"skipped": "why"}, "warnings": []}}
    assert shortcut.kfp_metrics(skipped) == {"shortcut_warnings": 0.0}


def _one_hot(predicted: list[int], k: int = 3) -> np.ndarray:
    return np.eye(k)[predicted]


def test_age_group_calls_name_a_class_called_for_most_of_a_groups_other_films():
    classes = ("covid", "bacterial", "normal")
    # adults: 2 covid (called covid), 3 bacterial (2 called covid, 1 bacterial), 2 normal (1 called covid, 1 normal);
    # children: 3 bacterial, 3 normal, all called right. Hand counts: adults' non-covid films 5,
    # called covid 3 (>= half of >= 3 films): named. Children: nobody called covid.
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 2])
    predicted = [0, 0, 0, 0, 1, 0, 2, 1, 1, 1, 2, 2, 2]
    groups = ["adult"] * 7 + ["child"] * 6
    result = shortcut.age_group_calls(labels, _one_hot(predicted), groups, classes)
    assert result["calls"]["adult"]["covid"] == {"other_films": 5, "called": 3}
    assert result["calls"]["adult"]["normal"] == {"other_films": 5, "called": 0}  # the one normal call is a normal film
    assert result["calls"]["child"]["covid"] == {"other_films": 6, "called": 0}
    assert result["warning"].startswith("3 of 5 non-covid films in age group adult were called covid.")
    assert "child" not in result["warning"]
    assert result["warning"] in shortcut.warnings({"shortcut": {"age_groups": result}})


def test_age_group_calls_stay_quiet_below_half_or_on_too_few_films():
    classes = ("covid", "normal")
    labels = np.array([1, 1, 1, 1, 1, 1, 1, 1])
    predicted = [0, 0, 1, 1, 1, 0, 0, 1]  # adults 2 of 5 called covid; unknown age 2 of 3: at the bar
    groups = ["adult"] * 5 + [""] * 3
    result = shortcut.age_group_calls(labels, _one_hot(predicted, 2), groups, classes)
    assert result["calls"]["(unknown)"]["covid"] == {"other_films": 3, "called": 2}
    assert result["warning"].startswith("2 of 3 non-covid films in age group (unknown)")
    few = shortcut.age_group_calls(labels[:2], _one_hot(predicted[:2], 2), ["adult"] * 2, classes)
    assert few["warning"] is None  # 2 of 2, but two films decide nothing
