"""The trainer with a transfer backbone (MobileNetV2): loading and seeding its weights, the
head-then-fine-tune phases, BatchNorm during fine-tuning, and run_trainer end to end with one."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxrflow.config import PipelineConfig
from cxrflow.trainer.models import build_model
from tests.conftest import TINY_SIZE, png_bytes, read_json


def test_local_weights_file_is_loaded(tmp_path):
    donor = build_model("mobilenetv2", 32, 3, weights="none", seed=2).get_layer("backbone")
    path = str(tmp_path / "mobilenet.weights.h5")
    donor.save_weights(path)
    model = build_model("mobilenetv2", 32, 3, weights=path)
    np.testing.assert_allclose(model.get_layer("backbone").get_weights()[0], donor.get_weights()[0])
    with pytest.raises(FileNotFoundError):
        build_model("mobilenetv2", 32, 3, weights=str(tmp_path / "missing.h5"))


def test_zscore_with_a_transfer_model_is_refused():
    """Transfer models map [0,1] to their backbone's range; zscore input would be scaled twice."""
    from cxrflow.config import ConfigError

    with pytest.raises(ConfigError, match="zscore"):
        PipelineConfig(model="mobilenetv2", normalization="zscore")
    PipelineConfig(model="cnn", normalization="zscore")


def test_transfer_backbone_initialisation_follows_the_seed():
    weights = [build_model("mobilenetv2", 32, 3, weights="none", seed=s).get_layer("backbone").get_weights()
               for s in (7, 7, 8)]
    for a, b in zip(weights[0], weights[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(weights[0], weights[2], strict=True))


def test_fine_tuning_keeps_batchnorm_statistics():
    """Batches of 16 X-rays must not overwrite the backbone's BatchNorm statistics."""
    from cxrflow.trainer.models import FINE_TUNE_LAYERS, set_backbone_trainable

    model = build_model("mobilenetv2", 32, 3, weights="none", seed=1)
    set_backbone_trainable(model, FINE_TUNE_LAYERS["mobilenetv2"])
    backbone = model.get_layer("backbone")
    norms = [layer for layer in backbone.layers[-FINE_TUNE_LAYERS["mobilenetv2"]:]
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and backbone.get_layer("Conv_1").trainable  # fine-tuning does train the top convs
    before = [(n.moving_mean.numpy().copy(), n.moving_variance.numpy().copy()) for n in norms]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 32, 32, 1), dtype=np.float32)
    model.fit(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]), epochs=1, batch_size=8, verbose=0)
    for (mean, var), norm in zip(before, norms, strict=True):
        np.testing.assert_array_equal(mean, norm.moving_mean.numpy())
        np.testing.assert_array_equal(var, norm.moving_variance.numpy())


def test_a_backbone_without_pretrained_weights_is_trained_whole_in_one_phase():
    from cxrflow.stages.trainer import _phases
    from cxrflow.trainer.models import ALL_LAYERS, set_backbone_trainable

    config = PipelineConfig(model="mobilenetv2", weights="none", epochs=6)
    assert [(p["name"], p["epochs"], p["unfreeze"]) for p in _phases(config)] == [("train", 6, ALL_LAYERS)]
    assert [p["name"] for p in _phases(config.replace(weights="imagenet"))] == ["head", "finetune"]
    model = build_model("mobilenetv2", 32, 3, weights="none", seed=1)
    set_backbone_trainable(model, ALL_LAYERS)
    assert all(layer.trainable for layer in model.get_layer("backbone").layers)


def test_trainer_entry_point_with_a_transfer_model(tiny_config, stage_dirs, examples, resampled, tmp_path):
    """run_trainer with MobileNetV2 (a local weights file, so both phases run) and letterboxing:
    it trains, keeps one best across phases, exports, serves and names what it was trained on."""
    import collections
    import io

    from PIL import Image

    from cxrflow import features as fk
    from cxrflow.stages.example_gen import split_pattern
    from cxrflow.stages.trainer import run_trainer
    from cxrflow.stages.transform import run_transform

    weights = str(tmp_path / "backbone.weights.h5")
    build_model("mobilenetv2", TINY_SIZE, 3, weights="none", seed=2).get_layer("backbone").save_weights(weights)
    config = tiny_config.replace(model="mobilenetv2", weights=weights, epochs=2, resize_mode="pad")
    graph = run_transform(config, split_pattern(stage_dirs["examples"], "train"), str(tmp_path / "transform"))
    model_dir = str(tmp_path / "model")
    summary = run_trainer(config, stage_dirs["examples"], graph, stage_dirs["resample"], model_dir,
                          str(tmp_path / "run"))

    assert [h["phase"] for h in summary["history"]] == ["head", "finetune"]
    assert summary["monitor"] == "val_loss"  # the default
    assert summary["best_score"] == pytest.approx(min(h["val_loss"] for h in summary["history"]))
    lowest = min(summary["history"], key=lambda h: h["val_loss"])
    assert summary["best_epoch"] == {"phase": lowest["phase"], "epoch": lowest["epoch"]}

    # What it was trained on, counted from the train records themselves.
    spec = fk.raw_feature_spec((fk.LABEL_KEY, fk.SOURCE_KEY))
    labels, sources = collections.Counter(), set()
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(split_pattern(stage_dirs["examples"], "train"))):
        parsed = tf.io.parse_single_example(record, spec)
        labels[parsed[fk.LABEL_KEY].numpy().decode()] += 1
        sources.add(parsed[fk.SOURCE_KEY].numpy().decode())
    expected = {"sources": sorted(sources), "counts": {c: labels[c] for c in config.classes}}
    saved = tf.saved_model.load(model_dir)
    meta = saved.signatures["metadata"]()
    assert meta["resize_mode"].numpy().decode() == "pad"
    recorded = json.loads(meta["trained_on"].numpy().decode())
    assert {k: recorded[k] for k in expected} == expected
    assert read_json(os.path.join(model_dir, "assets.extra", "cxrflow_model.json"))["trained_on"] == recorded

    # Serving letterboxes too: a wide film and the same film already padded to a square give one answer.
    wide = Image.open(io.BytesIO(png_bytes())).resize((80, 40))
    square = Image.new("L", (80, 80))
    square.paste(wide, (0, 20))
    encoded = []
    for img in (wide, square):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        encoded.append(buf.getvalue())
    out = saved.signatures["serving_default"](images=tf.constant(encoded))
    probs = out["probabilities"].numpy()
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-3)
