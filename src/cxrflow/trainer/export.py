"""Export: one SavedModel that TF Serving and the Evaluator call directly.

Signatures:
- `serving_default`: encoded image bytes (tf.string [batch]) -> probabilities, class_id,
  class_name. TF Serving's REST `{"instances": [{"b64": ...}]}` maps onto it as-is.
- `serving_tta`: the same, averaged over `tta` augmented views (config `tta`, recorded).
- `serving_examples`: serialized tf.Example -> the same outputs (the Evaluator's entry).
- `metadata`: class names, image size and normalisation, so serving needs no other file.

The TFT transform graph is inside the model (TransformFeaturesLayer), so the served model
decodes, converts to grayscale, resizes and normalises exactly as in training.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from cxrflow import features as fk

METADATA_FILE = "cxrflow_model.json"  # in assets.extra/, which TF Serving ignores


class CxrServingModule(tf.Module):
    def __init__(self, model, tft_layer, classes, image_size: int, normalization: str, tta: int) -> None:
        super().__init__()
        self.model = model
        self.tft_layer = tft_layer
        self.classes = list(classes)
        self.class_names = tf.constant(self.classes)
        self.image_size = image_size
        self.normalization = normalization
        self.tta = max(1, int(tta))

    def _probabilities(self, images, views: int):
        xf = self.tft_layer({fk.IMAGE_KEY: images})[fk.IMAGE_XF_KEY]
        probs = tf.cast(self.model(xf, training=False), tf.float32)
        for i in range(1, views):
            probs += tf.cast(self.model(tta_view(xf, i), training=False), tf.float32)
        return probs / float(views)

    def _predict(self, images, views: int):
        images = tf.reshape(images, [-1])
        # An empty request gets empty outputs rather than a shape error from the convolutions.
        probs = tf.cond(
            tf.size(images) > 0,
            lambda: self._probabilities(images, views),
            lambda: tf.zeros([0, len(self.classes)], tf.float32),
        )
        class_id = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "class_id": class_id, "class_name": tf.gather(self.class_names, class_id)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        return self._predict(images, 1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images_tta(self, images):
        return self._predict(images, self.tta)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        raw = tf.io.parse_example(examples, fk.raw_feature_spec((fk.IMAGE_KEY,)))
        return self._predict(raw[fk.IMAGE_KEY], 1)

    @tf.function(input_signature=[])
    def metadata(self):
        return {
            "classes": self.class_names,
            "image_size": tf.constant(self.image_size),
            "normalization": tf.constant(self.normalization),
            "tta": tf.constant(self.tta),
        }


def tta_view(images, index: int):
    """Deterministic test-time views: small shifts and a mild zoom, never a flip."""
    size = tf.shape(images)[1]
    shift = tf.cast(tf.cast(size, tf.float32) * 0.03, tf.int32)
    offsets = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    if index <= len(offsets):
        dy, dx = offsets[index - 1]
        return tf.roll(images, shift=[dy, dx], axis=[1, 2])
    crop = 1.0 - 0.02 * (index - len(offsets))
    boxes = tf.tile([[0.5 - crop / 2, 0.5 - crop / 2, 0.5 + crop / 2, 0.5 + crop / 2]], [tf.shape(images)[0], 1])
    return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), [size, size])


def export_serving_model(model, tft_layer, classes, image_size: int, normalization: str, tta: int, export_dir: str) -> str:
    """Saves the serving module to `export_dir` (which must not exist yet)."""
    module = CxrServingModule(model, tft_layer, classes, image_size, normalization, tta)
    signatures = {
        "serving_default": module.serve_images.get_concrete_function(),
        "serving_tta": module.serve_images_tta.get_concrete_function(),
        "serving_examples": module.serve_examples.get_concrete_function(),
        "metadata": module.metadata.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
        f.write(json.dumps({"classes": list(classes), "image_size": image_size,
                            "normalization": normalization, "tta": tta}, indent=2))
    return export_dir


def load_metadata(model_dir: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(model_dir, "assets.extra", METADATA_FILE)) as f:
        return json.loads(f.read())
