import glob

import pytest
import tensorflow as tf

from cxrflow import features as fk
from cxrflow.stages.resample import class_weights, run_resample, target_counts, train_pattern_for


def test_target_counts():
    counts = {"a": 10, "b": 4, "c": 0}
    assert target_counts(counts, "none") == counts
    assert target_counts(counts, "under") == {"a": 4, "b": 4, "c": 0}
    assert target_counts(counts, "over") == {"a": 10, "b": 10, "c": 0}
    assert target_counts(counts, "over", 0.5) == {"a": 10, "b": 5, "c": 0}


def test_class_weights_are_balanced():
    w = class_weights({"a": 30, "b": 10})
    assert w == pytest.approx({"a": 40 / 60, "b": 40 / 20})


def _write_imbalanced(path, counts):
    with tf.io.TFRecordWriter(path) as writer:
        for label, n in counts.items():
            for i in range(n):
                feats = {fk.LABEL_KEY: label.encode(), fk.IMAGE_ID_KEY: f"{label}{i}".encode(), fk.IMAGE_KEY: b"x"}
                example = tf.train.Example(features=tf.train.Features(feature={
                    k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])) for k, v in feats.items()}))
                writer.write(example.SerializeToString())


def _read_counts(pattern):
    counts, ids = {}, []
    for record in tf.data.TFRecordDataset(glob.glob(pattern)):
        ex = tf.train.Example.FromString(record.numpy())
        label = ex.features.feature[fk.LABEL_KEY].bytes_list.value[0].decode()
        ids.append(ex.features.feature[fk.IMAGE_ID_KEY].bytes_list.value[0])
        counts[label] = counts.get(label, 0) + 1
    return counts, ids


@pytest.mark.parametrize("mode, expected", [("under", {"covid": 5, "bacterial": 5, "normal": 5}),
                                            ("over", {"covid": 17, "bacterial": 17, "normal": 17})])
def test_modes_give_the_expected_counts_deterministically(tmp_path, tiny_config, mode, expected):
    counts = {"covid": 5, "bacterial": 17, "normal": 9}
    src = str(tmp_path / "train.tfrecord")
    _write_imbalanced(src, counts)
    config = tiny_config.replace(resample=mode)
    summary = run_resample(config, src, counts, str(tmp_path / "a"))
    got, ids_a = _read_counts(train_pattern_for(summary, "unused", str(tmp_path / "a")))
    assert got == expected == summary["counts_after"]
    assert summary["counts_before"] == counts
    run_resample(config, src, counts, str(tmp_path / "b"))
    _, ids_b = _read_counts(str(tmp_path / "b" / "Split-train" / "*.tfrecord"))
    assert sorted(ids_a) == sorted(ids_b)
    if mode == "over":  # repeats spread evenly: no example appears more than ceil(17/5) times
        assert max(ids_a.count(i) for i in set(ids_a)) <= 4


def test_none_passes_training_data_through(tmp_path, tiny_config):
    summary = run_resample(tiny_config, "/some/pattern-*", {"covid": 3, "bacterial": 1, "normal": 2}, str(tmp_path))
    assert train_pattern_for(summary, "/ex", str(tmp_path)) == "/ex/Split-train/*.tfrecord"
    assert not (tmp_path / "Split-train").exists()
    assert summary["class_weights"]["bacterial"] == pytest.approx(2.0)
