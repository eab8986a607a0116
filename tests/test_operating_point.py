"""The operating point: a screening class's logit offset, chosen on eval and built into the model."""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import recall_score

from cxrflow.config import ConfigError, PipelineConfig
from cxrflow.trainer import operating_point

CLASSES = ["covid", "bacterial", "normal"]
# Four eval films of covid (label 0) and two others. Offsets that make covid the argmax, by hand:
# log(0.5/0.2) = 0.916, log(0.8/0.1) = 2.079, already called (0.6 > 0.3), log(0.45/0.4) = 0.118.
PROBS = np.array([
    [0.2, 0.5, 0.3],
    [0.1, 0.8, 0.1],
    [0.6, 0.3, 0.1],
    [0.4, 0.45, 0.15],
    [0.3, 0.6, 0.1],  # bacterial: called bacterial until covid's offset passes log(0.6/0.3) = 0.693
    [0.05, 0.05, 0.9],  # normal
])
LABELS = np.array([0, 0, 0, 0, 1, 2])


def test_offset_is_the_smallest_that_reaches_the_target_recall():
    # 3 of 4 covid films called needs the second-hardest film's offset, log(0.5/0.2).
    chosen = operating_point.choose(PROBS, LABELS, CLASSES, "covid", 0.75, max_offset=5.0)
    assert chosen["offset"] == pytest.approx(math.log(0.5 / 0.2), abs=1e-3)
    assert chosen["recall_before"]["covid"] == 0.25 and chosen["recall_after"]["covid"] == 0.75
    # The bacterial film needed only 0.693, so it is now called covid.
    assert chosen["recall_before"]["bacterial"] == 1.0 and chosen["recall_after"]["bacterial"] == 0.0
    assert chosen["recall_after"]["normal"] == 1.0 and not chosen["capped"]


def test_full_recall_needs_the_hardest_film_and_the_cap_bounds_it():
    chosen = operating_point.choose(PROBS, LABELS, CLASSES, "covid", 1.0, max_offset=5.0)
    assert chosen["offset"] == pytest.approx(math.log(8), abs=1e-3) and chosen["recall_after"]["covid"] == 1.0
    capped = operating_point.choose(PROBS, LABELS, CLASSES, "covid", 1.0, max_offset=1.0)
    assert capped["offset"] == 1.0 and capped["capped"]
    assert capped["recall_after"]["covid"] == 0.75  # 0.118, 0.916 and the called film; not 2.079


def test_a_target_already_met_or_a_class_without_eval_films_changes_nothing():
    assert operating_point.choose(PROBS, LABELS, CLASSES, "covid", 0.25, 5.0)["offset"] == 0.0
    absent = operating_point.choose(PROBS[:4], LABELS[:4] + 1, CLASSES, "covid", 0.95, 5.0)
    assert absent["offset"] == 0.0 and absent["eval_examples"] == 0 and "not set" in absent["note"]


def test_apply_adds_the_offset_to_the_class_logit_only():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(inputs))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    kernel, bias = (w.numpy() for w in model.get_layer("probabilities").weights)
    logits = x @ kernel + bias
    operating_point.apply(model, 2, 0.7)
    expected = tf.nn.softmax(logits + np.array([0, 0, 0.7], dtype="float32")).numpy()
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5)


def test_config_refuses_an_unknown_class_two_classes_or_a_bad_recall():
    with pytest.raises(ConfigError, match="not one of"):
        PipelineConfig(operating_point=(("viral", 0.9),))
    with pytest.raises(ConfigError, match="one class"):
        PipelineConfig(operating_point=(("covid", 0.9), ("normal", 0.9)))
    with pytest.raises(ConfigError, match="recall"):
        PipelineConfig(operating_point=(("covid", 1.5),))
    assert PipelineConfig.from_json(PipelineConfig(operating_point=(("covid", 0.9),)).to_json()).operating_point == (
        ("covid", 0.9),)


def _serve(model_dir: str, pattern: str, classes) -> tuple[np.ndarray, np.ndarray]:
    from cxrflow.stages.evaluator import predict_split

    labels, probs, _ = predict_split(model_dir, pattern, list(classes))
    return labels, probs


def test_trainer_builds_the_operating_point_into_the_served_model(tiny_config, stage_dirs, transform_graph,
                                                                  resampled, tmp_path):
    """Two trainings with one seed (deterministic), plain argmax and with an operating point for
    the class with the lowest eval recall: the served model reaches the target on eval, and its
    probabilities are the plain model's with that class's odds multiplied by exp(offset)."""
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.trainer import run_trainer

    eval_pattern = split_pattern(stage_dirs["examples"], "eval")
    plain_dir = str(tmp_path / "plain")
    run_trainer(tiny_config.replace(operating_point=()), stage_dirs["examples"], transform_graph,
                stage_dirs["resample"], plain_dir, str(tmp_path / "plain_run"))
    labels, plain = _serve(plain_dir, eval_pattern, tiny_config.classes)
    recalls = recall_score(labels, plain.argmax(1), labels=range(len(tiny_config.classes)), average=None,
                           zero_division=0)
    worst = int(np.argmin(recalls))
    if recalls[worst] == 1.0:
        pytest.skip("the tiny model already calls every eval film right: no offset to test")
    name = tiny_config.classes[worst]
    config = tiny_config.replace(operating_point=((name, 1.0),), operating_max_offset=50.0)
    model_dir = str(tmp_path / "model")
    summary = run_trainer(config, stage_dirs["examples"], transform_graph, stage_dirs["resample"], model_dir,
                          str(tmp_path / "run"))
    offset = summary["operating_point"]["offset"]
    assert offset > 0 and summary["operating_point"]["recall_after"][name] == 1.0
    labels2, shifted = _serve(model_dir, eval_pattern, tiny_config.classes)
    np.testing.assert_array_equal(labels, labels2)
    assert recall_score(labels, shifted.argmax(1), labels=[worst], average=None)[0] == 1.0
    odds_plain = plain[:, worst] / np.delete(plain, worst, axis=1).sum(1)
    odds_shifted = shifted[:, worst] / np.delete(shifted, worst, axis=1).sum(1)
    np.testing.assert_allclose(odds_shifted / odds_plain, math.exp(offset), rtol=2e-3)
    meta = tf.saved_model.load(model_dir).signatures["metadata"]()
    assert json.loads(meta["operating_point"].numpy().decode())["offset"] == offset
    with open(os.path.join(model_dir, "assets.extra", "cxrflow_model.json")) as f:
        assert json.load(f)["operating_point"]["class"] == name
