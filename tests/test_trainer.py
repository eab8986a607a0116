import base64
import hashlib
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cxrflow.config import PipelineConfig
from cxrflow.trainer import data
from cxrflow.trainer.models import build_model
from tests.conftest import TINY_SIZE, png_bytes, read_json


@pytest.mark.parametrize("name, size", [("cnn", 32), ("cnn", 256), ("mobilenetv2", 32), ("resnet50", 32)])
def test_each_model_builds_and_trains_a_step(name, size):
    model = build_model(name, size, 3, weights="none", seed=1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((2, size, size, 1), dtype=np.float32)
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, np.array([0, 2]), epochs=1, verbose=0)
    assert model.predict(x, verbose=0).shape == (2, 3)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_local_weights_file_is_loaded(tmp_path):
    donor = build_model("mobilenetv2", 32, 3, weights="none", seed=2).get_layer("backbone")
    path = str(tmp_path / "mobilenet.weights.h5")
    donor.save_weights(path)
    model = build_model("mobilenetv2", 32, 3, weights=path)
    np.testing.assert_allclose(model.get_layer("backbone").get_weights()[0], donor.get_weights()[0])
    with pytest.raises(FileNotFoundError):
        build_model("mobilenetv2", 32, 3, weights=str(tmp_path / "missing.h5"))


def test_augmentation_touches_training_batches_only(transform_graph, stage_dirs):
    import tensorflow_transform as tft

    from cxrflow import features as fk
    from cxrflow.stages.example_gen import split_pattern

    config = PipelineConfig()
    augment = data.make_augmenter(config.augmentation, seed=1)
    images = tf.fill([4, 32, 32, 1], 0.5)
    augmented, _ = augment(images, tf.zeros([4], tf.int64))
    assert not np.allclose(augmented.numpy(), images.numpy())

    layer = tft.TFTransformOutput(transform_graph).transform_features_layer()
    pattern = split_pattern(stage_dirs["examples"], "eval")
    n = sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)))
    eval_batch, _ = next(iter(data.evaluation_dataset(pattern, layer, config.classes, n, TINY_SIZE, n)))
    raw = tf.io.parse_example(next(iter(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))).batch(n))),
                              fk.raw_feature_spec((fk.IMAGE_KEY,)))
    plain = layer({fk.IMAGE_KEY: raw[fk.IMAGE_KEY]})[fk.IMAGE_XF_KEY]
    # Eval/test batches are exactly the transform's output: no augmentation, no jitter.
    np.testing.assert_allclose(eval_batch.numpy(), plain.numpy(), atol=1e-6)
    train_batch, _ = next(iter(data.training_dataset(pattern, layer, config.classes, n, TINY_SIZE, n,
                                                     config.augmentation, seed=1)))
    assert not np.allclose(np.sort(train_batch.numpy().ravel()), np.sort(plain.numpy().ravel()), atol=1e-3)


def test_trainer_exports_all_signatures(trained_model, stage_dirs):
    model = tf.saved_model.load(trained_model)
    assert set(model.signatures) >= {"serving_default", "serving_tta", "serving_examples", "metadata"}
    meta = model.signatures["metadata"]()
    assert [c.decode() for c in meta["classes"].numpy()] == ["covid", "bacterial", "normal"]
    assert int(meta["image_size"]) == TINY_SIZE
    summary = read_json(os.path.join(stage_dirs["run"], "training_summary.json"))
    assert summary["epochs_run"] == 2


@pytest.mark.parametrize("kind", ["gray", "rgb", "rgba", "palette", "16bit", "jpeg", "big"])
def test_serving_default_accepts_raw_bytes_of_any_size_and_mode(trained_model, kind):
    from cxrflow.images import check_image

    data_bytes = {
        "gray": png_bytes(), "rgb": png_bytes("RGB"), "rgba": png_bytes("RGBA"), "palette": png_bytes("P"),
        "16bit": png_bytes(bits16=True), "jpeg": png_bytes("JPEG"), "big": png_bytes(size=(900, 700)),
    }[kind]
    assert not check_image(data_bytes, 10**8).reencoded  # these all go to the model as-is
    out = tf.saved_model.load(trained_model).signatures["serving_default"](images=tf.constant([data_bytes]))
    probs = out["probabilities"].numpy()
    assert probs.shape == (1, 3) and abs(probs.sum() - 1) < 1e-4
    assert out["class_name"].numpy()[0].decode() in ("covid", "bacterial", "normal")


def test_serving_as_tf_serving_calls_it_from_rest_json(trained_model):
    """TF Serving's REST `{"instances": [{"b64": ...}]}` becomes a tf.string batch of the decoded bytes."""
    body = json.dumps({"instances": [{"b64": base64.b64encode(png_bytes()).decode()},
                                     {"b64": base64.b64encode(png_bytes("JPEG")).decode()}]})
    instances = [base64.b64decode(i["b64"]) for i in json.loads(body)["instances"]]
    signature = tf.saved_model.load(trained_model).signatures["serving_default"]
    (name, spec), = signature.structured_input_signature[1].items()
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    out = signature(**{name: tf.constant(instances, dtype=tf.string)})
    assert out["probabilities"].shape == (2, 3)


def test_serving_defined_behaviour_for_empty_corrupt_and_oversize_batches(trained_model):
    signature = tf.saved_model.load(trained_model).signatures["serving_default"]
    empty = signature(images=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 3)
    with pytest.raises(tf.errors.InvalidArgumentError):
        signature(images=tf.constant([png_bytes(), b"not an image"]))
    # Oversize (36 MP) is resized inside the graph like any other image; limits are the client's.
    huge = png_bytes(size=(6000, 6000))
    out = signature(images=tf.constant([huge, png_bytes()]))
    assert out["probabilities"].shape == (2, 3)


def test_resume_continues_from_the_last_checkpoint(tiny_config, stage_dirs, transform_graph, resampled, tmp_path):
    """A run stopped after epoch 1 of 3 resumes at epoch 2 with the saved weights."""
    from cxrflow.stages.trainer import run_trainer

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    run_dir = str(tmp_path / "run")
    config = tiny_config.replace(epochs=3, early_stopping_patience=10)
    original_fit = keras.Model.fit
    saved = {}

    def interrupted_fit(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], StopAfterFirstEpoch()]
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            saved["weights"] = [w.copy() for w in self.get_weights()]

    keras.Model.fit = interrupted_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            run_trainer(config, stage_dirs["examples"], transform_graph, stage_dirs["resample"],
                        str(tmp_path / "model"), run_dir)
    finally:
        keras.Model.fit = original_fit

    resumed = {}

    def recording_fit(self, *args, **kwargs):
        class Record(keras.callbacks.Callback):
            def on_train_begin(self_cb, logs=None):
                resumed["weights"] = [w.copy() for w in self.get_weights()]

            def on_epoch_begin(self_cb, epoch, logs=None):
                resumed.setdefault("first_epoch", epoch)

        kwargs["callbacks"] = [*kwargs["callbacks"], Record()]
        return original_fit(self, *args, **kwargs)

    keras.Model.fit = recording_fit
    try:
        summary = run_trainer(config, stage_dirs["examples"], transform_graph, stage_dirs["resample"],
                              str(tmp_path / "model"), run_dir)
    finally:
        keras.Model.fit = original_fit
    assert resumed["first_epoch"] == 1  # epoch 0 was done before the kill
    assert len(summary["history"]) == 2
    for a, b in zip(saved["weights"], resumed["weights"], strict=True):
        np.testing.assert_allclose(a, b)


def test_rotate_and_zoom_geometry():
    image = np.zeros((1, 33, 33, 1), np.float32)
    image[0, 16, 24, 0] = 1.0  # a dot right of the centre
    identity = data._rotate_and_zoom(tf.constant(image), tf.constant([0.0]), tf.constant([1.0])).numpy()
    np.testing.assert_allclose(identity, image, atol=1e-6)
    quarter = data._rotate_and_zoom(tf.constant(image), tf.constant([np.pi / 2]), tf.constant([1.0])).numpy()
    y, x = np.unravel_index(quarter[0, :, :, 0].argmax(), (33, 33))
    assert (abs(y - 16) == 8 and x == 16)  # the dot moved a quarter turn about the centre
    zoomed = data._rotate_and_zoom(tf.constant(image), tf.constant([0.0]), tf.constant([2.0])).numpy()
    y, x = np.unravel_index(zoomed[0, :, :, 0].argmax(), (33, 33))
    assert (y, x) == (16, 32)  # zooming in by 2 doubles the distance from the centre


# --- ML defaults (issue 11, part 2) ------------------------------------------------------------


def _film(n=4, size=TINY_SIZE):
    """A batch of `n` copies of a rendered chest film in [0,1] (not a constant: curves must act)."""
    from cxrflow.stages.transform import decode_grayscale

    return tf.repeat(decode_grayscale(tf.constant(png_bytes()), size)[None], n, axis=0)


def test_intensity_augmentation_survives_per_image_standardisation():
    """Brightness and contrast alone are undone exactly by the CNN's first layer; the gamma curve is not."""
    from cxrflow.config import Augmentation
    from cxrflow.trainer.models import PerImageStandardization

    images = _film()
    standardize = PerImageStandardization()
    intensity_only = Augmentation(noise=0, rotation_deg=0, zoom=0)  # default brightness, contrast (and gamma)
    augmented, _ = data.make_augmenter(intensity_only, seed=1)(images, tf.zeros([4], tf.int64))
    seen = np.abs(standardize(augmented).numpy() - standardize(images).numpy()).max(axis=(1, 2, 3))
    # Float error alone stays near 1e-6; a gamma of exp(+-0.3) moves standardised pixels by up to ~0.5.
    assert (seen > 1e-3).all() and seen.max() > 0.1, seen
    # Independent check of the curve: a gamma of g maps each image's range onto itself as x ** g.
    gammas = np.exp(np.linspace(-0.3, 0.3, 4, dtype=np.float32)).reshape(4, 1, 1, 1)
    x = images.numpy()
    np.testing.assert_allclose(data._gamma(images, tf.constant(gammas)).numpy(),
                               x.min() + (x.max() - x.min()) * ((x - x.min()) / (x.max() - x.min())) ** gammas,
                               atol=1e-5)


def test_augmentation_depends_on_seed_and_batch_number_only():
    augment = data.make_augmenter(PipelineConfig().augmentation, seed=3)
    images, labels = _film(), tf.zeros([4], tf.int64)
    first = augment(images, labels, tf.constant(5, tf.int64))[0].numpy()
    np.testing.assert_array_equal(first, augment(images, labels, tf.constant(5, tf.int64))[0].numpy())
    assert not np.allclose(first, augment(images, labels, tf.constant(6, tf.int64))[0].numpy())
    assert not np.allclose(first, data.make_augmenter(PipelineConfig().augmentation, seed=4)(images, labels, 5)[0])


def test_translation_moves_the_image_by_the_shift():
    image = np.zeros((1, 33, 33, 1), np.float32)
    image[0, 16, 16, 0] = 1.0
    moved = data._rotate_and_zoom(tf.constant(image), tf.constant([0.0]), tf.constant([1.0]),
                                  tf.constant([[3.0, -5.0]])).numpy()
    assert np.unravel_index(moved[0, :, :, 0].argmax(), (33, 33)) == (19, 11)


def test_weight_decay_is_a_knob_that_really_decays():
    """Keras' AdamW shrinks each weight by learning_rate * weight_decay per step: 1e-4 gave ~1e-7."""
    from cxrflow.stages.trainer import optimizer_for

    config = PipelineConfig()
    assert config.weight_decay >= 1e-2
    for wd in (config.weight_decay, 0.05):
        kernel = keras.Variable(np.ones((3, 3), np.float32), name="kernel")
        bias = keras.Variable(np.ones((3,), np.float32), name="bias")
        optimizer = optimizer_for(config.replace(weight_decay=wd), 1e-3)
        optimizer.apply([np.zeros((3, 3), np.float32), np.zeros((3,), np.float32)], [kernel, bias])
        np.testing.assert_allclose(1 - kernel.numpy(), 1e-3 * wd, rtol=1e-2)  # zero gradient: decay alone
        np.testing.assert_array_equal(bias.numpy(), 1.0)  # biases are not decayed


def test_ema_momentum_gives_an_averaging_optimizer_and_zero_turns_it_off():
    from cxrflow.stages.trainer import optimizer_for

    assert not optimizer_for(PipelineConfig(ema_momentum=0.0), 1e-3).use_ema
    optimizer = optimizer_for(PipelineConfig(ema_momentum=0.98), 1e-3)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.98
    kernel = keras.Variable(np.zeros((2,), np.float32), name="kernel")
    optimizer.build([kernel])
    for _ in range(2):  # constant gradient: Adam's steps are ~-lr each; the average trails them
        optimizer.apply([np.ones((2,), np.float32)], [kernel])
    optimizer.finalize_variable_values([kernel])
    # average after step 1 = w1 (Keras starts it at the first value); after step 2 = 0.98 w1 + 0.02 w2
    np.testing.assert_allclose(kernel.numpy(), 0.98 * -1e-3 + 0.02 * -2e-3, rtol=2e-2)


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


def _weights(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "variables", "variables"))
    # The object graph names the optimizer (adam_w, adam_w_1...): not a weight.
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_same_seed_gives_the_same_weights_whatever_the_record_order(tiny_config, stage_dirs, transform_graph,
                                                                   resampled, tmp_path):
    """Two trainings with one seed give identical weights, even when ingest wrote the train records in
    another order (Beam does not keep one). Before: a stateful generator in a parallel map and the
    shuffle of an unordered split gave two `--seed 1` runs macro recall 0.903 and 0.828."""
    import shutil

    from cxrflow.stages.trainer import run_trainer

    config = tiny_config.replace(epochs=2, seed=5)
    assert config.deterministic
    reordered = str(tmp_path / "examples")
    shutil.copytree(stage_dirs["examples"], reordered)
    for path in tf.io.gfile.glob(os.path.join(reordered, "Split-train", "*.tfrecord")):
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        with tf.io.TFRecordWriter(path) as writer:
            for record in reversed(records):
                writer.write(record)
    runs = []
    for i, examples_dir in enumerate((stage_dirs["examples"], reordered)):
        run_trainer(config, examples_dir, transform_graph, stage_dirs["resample"], str(tmp_path / f"m{i}"),
                    str(tmp_path / f"r{i}"))
        runs.append(_weights(str(tmp_path / f"m{i}")))
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 4
    for name, value in runs[0].items():
        np.testing.assert_array_equal(value, runs[1][name], err_msg=name)


def test_canonical_order_depends_on_the_records_only(tmp_path):
    records = [f"record {i}".encode() * (i + 1) for i in range(40)]
    expected = sorted(records, key=lambda r: hashlib.sha256(r).digest())
    for name, order in (("fwd", records), ("rev", records[::-1])):
        src = tmp_path / name
        src.mkdir()
        for part in range(2):  # two input shards, as Beam writes them
            with tf.io.TFRecordWriter(str(src / f"data-{part}.tfrecord")) as writer:
                for record in order[part::2]:
                    writer.write(record)
        for bucket_bytes in (10**9, 3000):  # all in memory; spread over 3 hash buckets
            pattern = data.canonical_order(str(src / "*.tfrecord"), str(tmp_path / f"{name}{bucket_bytes}"),
                                           bucket_bytes)
            got = list(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))).as_numpy_iterator())
            assert sorted(got) == sorted(records)
            if bucket_bytes > 10**6:
                assert got == expected
            else:
                assert len(tf.io.gfile.glob(pattern)) > 1
                assert not tf.io.gfile.glob(str(tmp_path / f"{name}{bucket_bytes}" / "*.tmp"))
            if name == "rev":
                assert got == list(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(
                    data.canonical_order(str(tmp_path / "fwd" / "*.tfrecord"), str(tmp_path / f"x{bucket_bytes}"),
                                         bucket_bytes)))).as_numpy_iterator())


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
