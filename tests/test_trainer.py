import base64
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
