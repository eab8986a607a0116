"""tf_example.serialize must parse to the Example that TF's protobuf classes build."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from cxrflow.tf_example import serialize


def _reference(bytes_features: dict, int_features: dict) -> tf.train.Example:
    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in bytes_features.items()}
    feature.update({k: tf.train.Feature(int64_list=tf.train.Int64List(value=[v])) for k, v in int_features.items()})
    return tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize(
    "bytes_features, int_features",
    [
        ({"image": os.urandom(300_000), "label": b"covid", "empty": b"", "ünïcode key": "é".encode()}, {}),
        ({"a": b"x" * 127, "b": b"y" * 128, "c": b"z" * 16_384}, {"zero": 0, "big": 2**40 + 3, "neg": -5, "one": 1}),
        ({}, {"width": 2048, "height": 127, "bits": 128}),
    ],
)
def test_parses_to_the_example_the_protobuf_classes_build(bytes_features, int_features):
    got = tf.train.Example.FromString(serialize(bytes_features, int_features))
    assert got == _reference(bytes_features, int_features)


def test_tf_parses_it_in_graph():
    data = serialize({"image": b"\x89PNG...", "label": b"normal"}, {"trait_width": 1024})
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.string),
            "trait_width": tf.io.FixedLenFeature([], tf.int64)}
    parsed = tf.io.parse_single_example(data, spec)
    assert parsed["image"].numpy() == b"\x89PNG..." and parsed["label"].numpy() == b"normal"
    assert int(parsed["trait_width"]) == 1024


def test_varint_lengths_at_every_boundary_parse_back():
    # Heads change length at 128 and 16,384 bytes: each side of both boundaries must parse.
    for n in (0, 1, 127, 128, 129, 16_383, 16_384, 16_385):
        value = bytes(range(256)) * (n // 256) + bytes(n % 256)
        got = tf.train.Example.FromString(serialize({"k" * (n % 200 + 1): value}, {"w": n}))
        assert got == _reference({"k" * (n % 200 + 1): value}, {"w": n})
