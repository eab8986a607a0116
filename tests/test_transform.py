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
