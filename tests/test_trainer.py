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
