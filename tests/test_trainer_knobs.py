"""The Trainer's opt-in model and schedule knobs (dropout, GroupNorm in the CNN, learning-rate
warmup), each against a computation in numpy or a count worked out by hand."""

import math
import os
from unittest import mock

import h5py
import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss

from cxrflow.config import ConfigError, PipelineConfig
from cxrflow.stages.trainer import learning_rate_schedule, run_trainer
from cxrflow.trainer.models import build_cnn, build_model
from tests.conftest import read_json

# At 32 px the CNN has two pooling blocks (32 -> 16 -> 8), worked out from build_cnn's loop.
CONVS_AT_32 = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "last_conv"]


def test_the_default_cnn_keeps_plain_conv_relu_blocks():
    model = build_cnn(32, 3, seed=1)
    assert [layer.name for layer in model.layers] == [
        "image", "standardize", "block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_conv2",
        "block2_pool", "last_conv", "gap", "dropout", "probabilities"]
    for name in CONVS_AT_32:
        layer = model.get_layer(name)
        assert layer.activation is keras.activations.relu and layer.use_bias


def test_group_norm_normalises_each_image_and_channel_group_alone():
    model = build_cnn(32, 3, seed=1, norm="group")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    for name in CONVS_AT_32:
        conv = model.get_layer(name)
        assert conv.activation is keras.activations.linear and not conv.use_bias  # GroupNorm's beta is the bias
        assert isinstance(model.get_layer(f"{name}_gn"), keras.layers.GroupNormalization)
    probe = keras.Model(model.inputs, [model.get_layer(name).output
                                       for name in ("block1_conv2", "block1_conv2_gn", "block1_conv2_relu")])
    x = np.random.default_rng(3).random((4, 32, 32, 1), dtype=np.float32)
    conv, normed, relu = (np.asarray(t) for t in probe(x, training=True))
    # numpy: 16 channels in 8 groups of 2; mean and variance over height, width and the group's channels
    grouped = conv.reshape(4, 32, 32, 8, 2).astype(np.float64)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    want = ((grouped - mean) / np.sqrt(var + 1e-3)).reshape(conv.shape)  # Keras' default epsilon 1e-3
    np.testing.assert_allclose(normed, want, atol=1e-4)
    np.testing.assert_allclose(relu, np.maximum(want, 0), atol=1e-4)
    # Per image: the first image alone gets what it got in the batch of 4 (BatchNorm would not).
    alone = np.asarray(probe(x[:1], training=True)[1])
    np.testing.assert_allclose(alone, normed[:1], atol=1e-5)


def test_dropout_reaches_every_model_family_and_norm_is_refused_for_transfer_models():
    assert build_model("cnn", 32, 3, dropout=0.5).get_layer("dropout").rate == 0.5
    assert build_model("mobilenetv2", 32, 3, dropout=0.1).get_layer("dropout").rate == 0.1
    with pytest.raises(ValueError, match="custom CNN only"):
        build_model("mobilenetv2", 32, 3, norm="group")


def _numpy_schedule(step, peak, epochs, steps, warmup_epochs):
    warm = min(warmup_epochs, epochs - 1) * steps
    if step < warm:
        return peak * step / warm
    t = (step - warm) / (epochs * steps - warm)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@pytest.mark.parametrize(("epochs", "warmup"), [(30, 0), (30, 2), (3, 5)])
def test_learning_rate_schedule_warms_up_linearly_then_decays_by_cosine(epochs, warmup):
    steps = 20
    schedule = learning_rate_schedule(1e-3, epochs, steps, warmup)
    for step in (0, 1, 19, 20, 39, 40, 41, 300, epochs * steps - 1, epochs * steps):
        assert float(schedule(step)) == pytest.approx(_numpy_schedule(step, 1e-3, epochs, steps, warmup),
                                                      rel=1e-4, abs=1e-9), step
    if warmup:
        assert float(schedule(0)) == 0.0
        assert float(schedule(min(warmup, epochs - 1) * steps)) == pytest.approx(1e-3)  # the peak


@pytest.mark.parametrize(("fields", "match"), [
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"cnn_norm": "batch"}, "cnn_norm"),
    ({"cnn_norm": "group", "model": "resnet50"}, "custom CNN only"),
    ({"warmup_epochs": 30}, "warmup_epochs"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"early_stopping_min_epochs": -1}, "early_stopping_min_epochs"),
])
def test_config_refuses_bad_knob_values(fields, match):
    with pytest.raises(ConfigError, match=match):
        PipelineConfig(**fields)


def test_trainer_runs_with_the_knobs_and_records_them(tiny_config, stage_dirs, transform_graph, resampled, tmp_path):
    config = tiny_config.replace(epochs=2, cnn_norm="group", warmup_epochs=1, dropout=0.5)
    run_dir = str(tmp_path / "run")
    built = []  # the model the Trainer really trains; dropout leaves no trace in saved weights

    def keep(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    with mock.patch("cxrflow.trainer.models.build_model", side_effect=keep):
        run_trainer(config, stage_dirs["examples"], transform_graph, stage_dirs["resample"], str(tmp_path / "model"),
                    run_dir)
    assert [model.get_layer("dropout").rate for model in built] == [0.5]
    summary = read_json(os.path.join(run_dir, "training_summary.json"))
    assert (summary["cnn_norm"], summary["warmup_epochs"], summary["dropout"]) == ("group", 1, 0.5)
    # The no-skill eval loss, from the eval split's class counts: sklearn's log loss of the mix
    eval_counts = read_json(os.path.join(stage_dirs["examples"], "ingest_report.json"))["splits"]["eval"]
    labels = np.repeat(np.arange(3), [eval_counts.get(c, 0) for c in config.classes])
    mix = np.bincount(labels, minlength=3) / len(labels)
    assert summary["no_skill_loss"] == pytest.approx(log_loss(labels, np.tile(mix, (len(labels), 1))), rel=1e-9)
    learned = min(row["val_loss"] for row in summary["history"]) < summary["no_skill_loss"]
    assert summary["learned"] is learned and bool(summary["warnings"]) is not learned
    # Keras logs the learning rate at each epoch's end: past the 1-epoch warmup, on the cosine.
    steps = summary["steps_per_epoch"]
    logged = [row["learning_rate"] for row in summary["history"]]
    want = [_numpy_schedule(s, config.learning_rate, 2, steps, 1) for s in (steps, 2 * steps)]
    np.testing.assert_allclose(logged, want, rtol=1e-4)
    # The model trained is the GroupNorm one: its saved weights hold GroupNorm layers (Keras names
    # them by class in the file), and no conv bias.
    with h5py.File(os.path.join(run_dir, "best.weights.h5"), "r") as f:
        layers = {name: set(f["layers"][name].get("vars", {})) for name in f["layers"]}
    assert sum(name.startswith("group_normalization") for name in layers) == len(CONVS_AT_32)
    assert all(variables == {"0"} for name, variables in layers.items() if name.startswith("conv2d"))
