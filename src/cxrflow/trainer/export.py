"""Export: one SavedModel that TF Serving and the Evaluator call directly.

Signatures:
- `serving_default`: encoded image bytes (tf.string [batch]) -> probabilities, class_id,
  class_name, classes (the class order, repeated per row). TF Serving's REST
  `{"instances": [{"b64": ...}]}` maps onto it as-is.
- `serving_tta`: images plus `views` (int32 scalar) -> the same, averaged over `views`
  deterministic test-time views (1 = off).
- `serving_examples`: serialized tf.Example -> the same outputs, with the recorded `tta` views
  (the Evaluator's entry).
- `metadata`: class names, image size and normalisation, so serving needs no other file.
- `embeddings`: images -> `embedding`, the penultimate features [batch, D] (the "gap" output),
  for t-SNE plots of what the model has learned.
- `gradcam`: images -> `heatmap` [batch, H, W] in [0,1] at the model's input size and the
  predicted `class_id`: Grad-CAM over the last conv feature map (the "gap" input).

The TFT transform graph is inside the model (TransformFeaturesLayer), so the served model
decodes, converts to grayscale, resizes and normalises exactly as in training.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from cxrflow import features as fk
from cxrflow.trainer.models import FEATURE_LAYER

METADATA_FILE = "cxrflow_model.json"  # in assets.extra/, which TF Serving ignores


class CxrServingModule(tf.Module):
    def __init__(self, model, tft_layer, classes, image_size: int, normalization: str, tta: int,
                 resize_mode: str = "stretch", trained_on: dict | None = None,
                 operating_point: dict | None = None) -> None:
        super().__init__()
        self.resize_mode = resize_mode
        self.trained_on = json.dumps(trained_on or {}, sort_keys=True)
        self.operating_point = json.dumps(operating_point or {}, sort_keys=True)
        self.model = model
        self.tft_layer = tft_layer
        self.classes = list(classes)
        self.class_names = tf.constant(self.classes)
        self.image_size = image_size
        self.normalization = normalization
        self.tta = max(1, int(tta))
        # One sub-model for both explanation signatures, sharing the trained layers (no copy of
        # the weights): conv feature map (the "gap" input), embedding (its output), probabilities.
        gap = model.get_layer(FEATURE_LAYER)
        self.features = keras.Model(model.inputs, [gap.input, gap.output, model.output])
        self.embedding_dim = int(gap.output.shape[-1])
        # Grad-CAM scores the pre-softmax logit (as in Selvaraju et al.): the probability
        # saturates near 1 for confident predictions and its gradient, hence the map, vanishes.
        self.head = model.get_layer("probabilities")

    def _probabilities(self, images, views):
        xf = self.tft_layer({fk.IMAGE_KEY: images})[fk.IMAGE_XF_KEY]
        total = tf.cast(self.model(xf, training=False), tf.float32)
        # Views 1..views-1 are deterministic shifts/zooms (tta_view); view 0 is the image itself.
        for_views = tf.range(1, tf.maximum(views, 1))
        total = tf.foldl(
            lambda acc, i: acc + tf.cast(self.model(tta_view(xf, i), training=False), tf.float32),
            for_views, initializer=total,
        )
        return total / tf.cast(tf.maximum(views, 1), tf.float32)

    def _predict(self, images, views):
        images = tf.reshape(images, [-1])
        # An empty request gets empty outputs rather than a shape error from the convolutions.
        probs = tf.cond(
            tf.size(images) > 0,
            lambda: self._probabilities(images, views),
            lambda: tf.zeros([0, len(self.classes)], tf.float32),
        )
        class_id = tf.argmax(probs, axis=-1)
        # `classes` repeats the class order per row, so a REST client (which sees only the
        # outputs) can name every probability without another file.
        classes = tf.tile(tf.expand_dims(self.class_names, 0), [tf.shape(probs)[0], 1])
        return {"probabilities": probs, "class_id": class_id, "class_name": tf.gather(self.class_names, class_id),
                "classes": classes}

    def _gradcam(self, images):
        xf = self.tft_layer({fk.IMAGE_KEY: images})[fk.IMAGE_XF_KEY]
        with tf.GradientTape() as tape:
            # Watching the input records every op after it, even with frozen (non-trainable) layers.
            tape.watch(xf)
            conv, embedding, probs = self.features(xf, training=False)
            class_id = tf.argmax(probs, axis=-1)
            logits = tf.matmul(tf.cast(embedding, tf.float32), tf.cast(self.head.kernel, tf.float32))
            logits += tf.cast(self.head.bias, tf.float32)  # dropout before the head is off at inference
            # Images are independent at inference (no batch statistics), so the gradient of the
            # sum is each image's own gradient.
            score = tf.reduce_sum(tf.gather(logits, class_id, axis=1, batch_dims=1))
        # The gradient is taken against the recorded tensor itself, before any cast.
        grads = tf.cast(tape.gradient(score, conv), tf.float32)
        conv = tf.cast(conv, tf.float32)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, tf.shape(xf)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        # A map that is zero everywhere (no positive evidence) stays zero instead of NaN.
        cam = tf.clip_by_value(tf.math.divide_no_nan(cam, peak), 0.0, 1.0)
        return cam, class_id

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def gradcam(self, images):
        images = tf.reshape(images, [-1])
        size = self.image_size
        heatmap, class_id = tf.cond(
            tf.size(images) > 0,
            lambda: self._gradcam(images),
            lambda: (tf.zeros([0, size, size], tf.float32), tf.zeros([0], tf.int64)),
        )
        return {"heatmap": heatmap, "class_id": class_id}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def embeddings(self, images):
        images = tf.reshape(images, [-1])

        def embed():
            xf = self.tft_layer({fk.IMAGE_KEY: images})[fk.IMAGE_XF_KEY]
            return tf.cast(self.features(xf, training=False)[1], tf.float32)

        embedding = tf.cond(tf.size(images) > 0, embed, lambda: tf.zeros([0, self.embedding_dim], tf.float32))
        return {"embedding": embedding}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(self, images):
        return self._predict(images, tf.constant(1))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images"),
                                  tf.TensorSpec([], tf.int32, name="views")])
    def serve_images_tta(self, images, views):
        return self._predict(images, views)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        raw = tf.io.parse_example(examples, fk.raw_feature_spec((fk.IMAGE_KEY,)))
        return self._predict(raw[fk.IMAGE_KEY], tf.constant(self.tta))

    @tf.function(input_signature=[])
    def metadata(self):
        return {
            "classes": self.class_names,
            "image_size": tf.constant(self.image_size),
            "normalization": tf.constant(self.normalization),
            "tta": tf.constant(self.tta),
            "resize_mode": tf.constant(self.resize_mode),
            # JSON: {"sources": [...], "counts": {class: n}, "by_source": {...}}; {} when not recorded
            "trained_on": tf.constant(self.trained_on),
            # JSON: the screening class's logit offset, set on the eval split; {} = plain argmax
            "operating_point": tf.constant(self.operating_point),
        }


TTA_SHIFT = 0.03  # fraction of the image size
TTA_ZOOM_STEP = 0.02


def tta_view(images, index):
    """Deterministic test-time view `index` >= 1: four small shifts, then growing mild zooms.

    Never a flip: a mirrored chest X-ray is not a plausible input.
    """
    size = tf.shape(images)[1]
    index = tf.cast(index, tf.int32)
    shift = tf.maximum(1, tf.cast(tf.cast(size, tf.float32) * TTA_SHIFT, tf.int32))

    def shifted(dy, dx):
        return lambda: tf.roll(images, shift=[dy, dx], axis=[1, 2])

    def zoomed():
        crop = 1.0 - TTA_ZOOM_STEP * tf.cast(index - 4, tf.float32)
        lo, hi = 0.5 - crop / 2, 0.5 + crop / 2
        n = tf.shape(images)[0]
        boxes = tf.tile(tf.reshape(tf.stack([lo, lo, hi, hi]), [1, 4]), [n, 1])
        return tf.image.crop_and_resize(images, boxes, tf.range(n), tf.stack([size, size]))

    branch = tf.minimum(index - 1, 4)
    return tf.switch_case(branch, [shifted(shift, 0), shifted(-shift, 0), shifted(0, shift), shifted(0, -shift),
                                   zoomed])


def export_serving_model(
    model, tft_layer, classes, image_size: int, normalization: str, tta: int, export_dir: str,
    resize_mode: str = "stretch", trained_on: dict | None = None, operating_point: dict | None = None,
) -> str:
    """Saves the serving module to `export_dir` (which must not exist yet).

    `resize_mode` is recorded only: the resize itself is inside the TFT graph (tft_layer), the
    same one training used. `trained_on` names the training sources and per-class counts;
    `operating_point` what trainer/operating_point.py built into the model's bias (recorded only).
    """
    module = CxrServingModule(model, tft_layer, classes, image_size, normalization, tta, resize_mode, trained_on,
                              operating_point)
    signatures = {
        "serving_default": module.serve_images.get_concrete_function(),
        "serving_tta": module.serve_images_tta.get_concrete_function(),
        "serving_examples": module.serve_examples.get_concrete_function(),
        "metadata": module.metadata.get_concrete_function(),
        "embeddings": module.embeddings.get_concrete_function(),
        "gradcam": module.gradcam.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
        f.write(json.dumps({"classes": list(classes), "image_size": image_size, "normalization": normalization,
                            "tta": tta, "resize_mode": resize_mode, "trained_on": trained_on or {},
                            "operating_point": operating_point or {}}, indent=2))
    return export_dir
