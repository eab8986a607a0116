import glob

import pytest
import tensorflow as tf

from cxrflow import features as fk
from cxrflow.config import ConfigError
from cxrflow.stages.resample import class_weights, plan_cells, run_resample, target_counts, train_pattern_for


def test_target_counts():
    counts = {"a": 10, "b": 4, "c": 0}
    assert target_counts(counts, "none") == counts
    assert target_counts(counts, "under") == {"a": 4, "b": 4, "c": 0}
    assert target_counts(counts, "over") == {"a": 10, "b": 10, "c": 0}
    assert target_counts(counts, "over", 0.5) == {"a": 10, "b": 5, "c": 0}


def test_class_weights_are_balanced():
    w = class_weights({"a": 30, "b": 10})
    assert w == pytest.approx({"a": 40 / 60, "b": 40 / 20})


def _write_imbalanced(path, counts, group_key=None):
    """counts: {label: n}, or {(label, group): n} written with `group_key` set to the group."""
    with tf.io.TFRecordWriter(path) as writer:
        for cell, n in counts.items():
            label, group = cell if group_key else (cell, "")
            for i in range(n):
                feats = {fk.LABEL_KEY: label.encode(), fk.IMAGE_ID_KEY: f"{label}{group}{i}".encode(),
                         fk.IMAGE_KEY: b"x"}
                if group_key:
                    feats[group_key] = group.encode()
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


# A confounded train split: covid is adult (or of unknown age) only, the others mostly children.
CONFOUNDED = {("covid", "adult"): 6, ("covid", ""): 2, ("bacterial", "adult"): 2, ("bacterial", "child"): 8,
              ("normal", "adult"): 1, ("normal", "child"): 4}


def _read_cells(pattern, group_key):
    cells, ids = {}, []
    for record in tf.data.TFRecordDataset(glob.glob(pattern)):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        cell = (f[fk.LABEL_KEY].bytes_list.value[0].decode(), f[group_key].bytes_list.value[0].decode())
        cells[cell] = cells.get(cell, 0) + 1
        ids.append(f[fk.IMAGE_ID_KEY].bytes_list.value[0].decode())
    return cells, ids


def test_balance_by_age_group_gives_every_class_the_pooled_mix(tmp_path, tiny_config, capsys):
    # Worked out by hand. 23 examples: adult 9, child 12, unknown ("" age) 2, so the common mix
    # is 9:12:2. Each class keeps its largest cell relative to that mix and grows the others:
    # - covid (adult 6, unknown 2; no child): the mix restricted to adult+unknown is 9:2, and
    #   unknown 2 is the binding cell, so the total is 11 -> adult 9, unknown 2.
    # - bacterial (adult 2, child 8): adult+child 9:12, child 8 binds -> total 14: adult 6, child 8.
    # - normal (adult 1, child 4): child 4 binds -> total 7: adult 3, child 4.
    src = str(tmp_path / "train.tfrecord")
    _write_imbalanced(src, CONFOUNDED, fk.AGE_GROUP_KEY)
    config = tiny_config.replace(balance_by="age_group")
    summary = run_resample(config, src, {"covid": 8, "bacterial": 10, "normal": 5}, str(tmp_path / "a"))
    cells, ids = _read_cells(train_pattern_for(summary, "unused", str(tmp_path / "a")), fk.AGE_GROUP_KEY)
    assert cells == {("covid", "adult"): 9, ("covid", ""): 2, ("bacterial", "adult"): 6, ("bacterial", "child"): 8,
                     ("normal", "adult"): 3, ("normal", "child"): 4}
    assert summary["counts_before"] == {"covid": 8, "bacterial": 10, "normal": 5}
    assert summary["counts_after"] == {"covid": 11, "bacterial": 14, "normal": 7}
    assert summary["cells_before"]["covid"] == {"adult": 6, "child": 0, "unknown": 2}
    assert summary["mix_before"]["bacterial"] == {"adult": 0.2, "child": 0.8, "unknown": 0.0}
    assert summary["mix_after"]["bacterial"] == pytest.approx({"adult": 9 / 21, "child": 12 / 21, "unknown": 0.0},
                                                              abs=1e-4)
    assert summary["target_mix"] == pytest.approx({"adult": 9 / 23, "child": 12 / 23, "unknown": 2 / 23}, abs=1e-4)
    assert {(u["class"], u["group"]) for u in summary["unbalanced"]} == {
        ("covid", "child"), ("bacterial", "unknown"), ("normal", "unknown")}
    # Repeats spread evenly: the 2 adult bacterial films 3 times each, the one adult normal 3 times.
    assert sorted(ids.count(f"bacterialadult{i}") for i in range(2)) == [3, 3]
    assert ids.count("normaladult0") == 3
    assert sorted(ids.count(f"covidadult{i}") for i in range(6)) == [1, 1, 1, 2, 2, 2]
    assert "could not balance: covid has no child" in capsys.readouterr().out
    run_resample(config, src, {}, str(tmp_path / "b"))  # same seed, same examples repeated
    assert sorted(ids) == sorted(_read_cells(str(tmp_path / "b" / "Split-train" / "*.tfrecord"),
                                             fk.AGE_GROUP_KEY)[1])


def test_balance_by_source_and_class_mode_compose(tmp_path, tiny_config):
    # By source, with resample=under on top. Sources a/b: covid a 4; bacterial a 1, b 3.
    # Mix a:b = 5:3. covid (a only) stays 4; bacterial: b 3 binds -> total 8 = a 5, b 3.
    # under: both classes cut to 4; bacterial keeps its 5:3 mix -> a 2.5, b 1.5 -> largest
    # remainder, ties by name: a 3, b 1 (a 3 > the single a film: it appears 3 times).
    src = str(tmp_path / "train.tfrecord")
    _write_imbalanced(src, {("covid", "a"): 4, ("bacterial", "a"): 1, ("bacterial", "b"): 3}, fk.SOURCE_KEY)
    config = tiny_config.replace(balance_by="source", resample="under", classes=("covid", "bacterial"),
                                 min_recall=())
    summary = run_resample(config, src, {}, str(tmp_path / "o"))
    cells, _ = _read_cells(str(tmp_path / "o" / "Split-train" / "*.tfrecord"), fk.SOURCE_KEY)
    assert cells == {("covid", "a"): 4, ("bacterial", "a"): 3, ("bacterial", "b"): 1}
    assert summary["counts_after"] == {"covid": 4, "bacterial": 4}
    assert summary["unbalanced"] == [{"class": "covid", "group": "b",
                                      "reason": "no training example of this class in this group"}]


def test_already_balanced_cells_pass_through(tiny_config):
    cells = {"covid": {"adult": 2, "child": 4}, "bacterial": {"adult": 1, "child": 2},
             "normal": {"adult": 3, "child": 6}}
    plan = plan_cells(cells, tiny_config.replace(balance_by="age_group"))
    assert plan["cells_after"] == cells and plan["unbalanced"] == []


def test_unknown_balance_variable_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="balance_by"):
        tiny_config.replace(balance_by="sex")
