import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from cxrflow import features as fk
from cxrflow.stages.example_gen import split_pattern
from cxrflow.stages.transform import decode_grayscale, run_transform
from tests.conftest import TINY_SIZE, png_bytes


def test_decode_gives_the_same_pixels_for_gray_rgb_and_16bit():
    gray = decode_grayscale(tf.constant(png_bytes()), 32).numpy()
    rgb = decode_grayscale(tf.constant(png_bytes("RGB")), 32).numpy()
    wide = decode_grayscale(tf.constant(png_bytes(bits16=True)), 32).numpy()
    assert gray.shape == (32, 32, 1) and 0 <= gray.min() and gray.max() <= 1
    np.testing.assert_allclose(gray, rgb, atol=2 / 255)
    np.testing.assert_allclose(gray, wide, atol=2 / 255)


def _transformed_train(graph_dir, examples_dir):
    layer = tft.TFTransformOutput(graph_dir).transform_features_layer()
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(split_pattern(examples_dir, "train"))).batch(64)
    raw = tf.io.parse_example(next(iter(records)), fk.raw_feature_spec((fk.IMAGE_KEY,)))
    return layer({fk.IMAGE_KEY: raw[fk.IMAGE_KEY]})[fk.IMAGE_XF_KEY].numpy()


def test_unit_normalisation_graph(transform_graph, stage_dirs):
    images = _transformed_train(transform_graph, stage_dirs["examples"])
    assert images.shape[1:] == (TINY_SIZE, TINY_SIZE, 1)
    assert images.min() >= 0 and images.max() <= 1


def test_zscore_uses_train_statistics(tiny_config, stage_dirs, examples, tmp_path):
    graph = run_transform(tiny_config.replace(normalization="zscore"),
                          split_pattern(stage_dirs["examples"], "train"), str(tmp_path / "z"))
    images = _transformed_train(graph, stage_dirs["examples"])
    assert images.mean() == pytest.approx(0, abs=0.05)
    assert images.std() == pytest.approx(1, abs=0.05)


def _wide_film(width=80, height=40):
    """A non-square film: a rendered chest, squeezed to `width` x `height`, as PNG bytes and pixels."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png_bytes())).resize((width, height))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), img


def test_pad_keeps_the_aspect_ratio_on_black_bands():
    from PIL import Image

    data, img = _wide_film(80, 40)
    padded = decode_grayscale(tf.constant(data), 32, "pad").numpy()[..., 0]
    assert padded.shape == (32, 32)
    # 80x40 -> 32x16, centred: rows 0-7 and 24-31 are black bands.
    assert (padded[:8] == 0).all() and (padded[24:] == 0).all()
    expected = np.asarray(img.resize((32, 16), Image.BOX), np.float32) / 255  # independent area resize
    assert np.abs(padded[8:24] - expected).mean() < 0.02
    # A tall film gets bands left and right instead.
    tall = decode_grayscale(tf.constant(_wide_film(40, 80)[0]), 32, "pad").numpy()[..., 0]
    assert (tall[:, :8] == 0).all() and (tall[:, 24:] == 0).all() and tall[:, 8:24].mean() > 0.05
    # stretch (the default) fills the square: no band.
    stretched = decode_grayscale(tf.constant(data), 32).numpy()[..., 0]
    assert stretched[:8].mean() > 0.05
    np.testing.assert_allclose(stretched, decode_grayscale(tf.constant(data), 32, "stretch").numpy()[..., 0])


def test_pad_mode_is_in_the_transform_graph(tiny_config, stage_dirs, examples, tmp_path):
    """The TFT graph (which the exported model embeds) letterboxes when resize_mode is pad."""
    graph = run_transform(tiny_config.replace(resize_mode="pad"), split_pattern(stage_dirs["examples"], "train"),
                          str(tmp_path / "pad"))
    layer = tft.TFTransformOutput(graph).transform_features_layer()
    data, _ = _wide_film(80, 40)
    out = layer({fk.IMAGE_KEY: tf.constant([data])})[fk.IMAGE_XF_KEY].numpy()[0, ..., 0]
    np.testing.assert_allclose(out, decode_grayscale(tf.constant(data), TINY_SIZE, "pad").numpy()[..., 0], atol=1e-6)
    assert (out[:8] == 0).all()
    assert json.load(open(tmp_path / "pad" / "transform_config.json"))["resize_mode"] == "pad"
