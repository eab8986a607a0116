"""Model builders: a custom CNN for grayscale X-rays and keras.applications transfer models."""

from __future__ import annotations

import os

import keras

# Backbones keep their names so a weights file made for keras.applications loads by name.
BACKBONES = {
    "resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
}
# Layers unfrozen in the second (fine-tuning) phase, counted from the top of the backbone.
FINE_TUNE_LAYERS = {"resnet50": 30, "mobilenetv2": 40}
BACKBONE_LAYER_NAME = "backbone"
# Every model family ends in this GlobalAveragePooling2D: its input is the last conv feature map
# (Grad-CAM) and its output the penultimate embedding (t-SNE); export.py finds both by this name.
FEATURE_LAYER = "gap"
GROUPS = 8  # GroupNorm groups: 2-32 channels each over the CNN's 16-256 filters


@keras.saving.register_keras_serializable(package="cxrflow")
class PerImageStandardization(keras.layers.Layer):
    """Zero mean, unit variance per image: exposure varies between machines, and without
    BatchNorm this keeps activations in a range where the first epochs already learn."""

    def call(self, images):
        mean = keras.ops.mean(images, axis=(1, 2, 3), keepdims=True)
        std = keras.ops.std(images, axis=(1, 2, 3), keepdims=True)
        return (images - mean) / keras.ops.maximum(std, 1e-3)


def build_cnn(
    image_size: int, num_classes: int, seed: int = 0, dropout: float = 0.3, norm: str = "none"
) -> keras.Model:
    """A compact CNN sized for grayscale chest X-rays from 32 to 2048 px.

    No BatchNorm: with the ~10-20 steps an epoch of small medical sets, batch statistics
    collapsed a CNN like this to one class; ReLU + He init + weight decay train stably here.
    `norm="group"` puts GroupNorm between each conv and its ReLU instead: statistics per image
    and channel group, so they do not depend on the batch size.
    A strided stem brings 512-px input down cheaply; pooling blocks stop at ~8x8 so deeper
    layers see the whole thorax.
    """
    def conv(x, filters: int, kernel: int, name: str, init_seed: int, strides: int = 1):
        grouped = norm == "group"
        x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same",
                                activation=None if grouped else "relu", use_bias=not grouped,
                                kernel_initializer=keras.initializers.HeNormal(seed=init_seed), name=name)(x)
        if not grouped:
            return x
        x = keras.layers.GroupNormalization(groups=min(GROUPS, filters), name=f"{name}_gn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = PerImageStandardization(name="standardize")(inputs)
    size = image_size
    if image_size >= 256:
        x = conv(x, 16, 5, "stem", seed, strides=2)
        size //= 2
    filters = 16
    block = 0
    while size > 8 and block < 5:
        block += 1
        for j in range(2):
            x = conv(x, filters, 3, f"block{block}_conv{j + 1}", seed + 10 * block + j)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        size //= 2
        filters = min(filters * 2, 256)
    x = conv(x, filters, 3, "last_conv", seed + 99)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    return keras.Model(inputs, _head(x, num_classes, seed, dropout), name="cxr_cnn")


def _head(x, num_classes: int, seed: int, dropout: float):
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities",
                              kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)


def resolve_weights(weights: str) -> str | None:
    """`imagenet` | `none` | a local weights file -> the value keras.applications takes."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not os.path.exists(weights):
        raise FileNotFoundError(f"weights file not found: {weights} (use imagenet, none or a local .h5 path)")
    return weights


def build_transfer(
    name: str, image_size: int, num_classes: int, weights: str, seed: int = 0, dropout: float = 0.3
) -> keras.Model:
    """A keras.applications backbone with the 1-channel input adapted to its 3 channels.

    The grayscale image is repeated to 3 channels and rescaled from [0,1] to the backbone's
    expected range, so ImageNet filters see inputs like the ones they were trained on.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    # Both backbones' preprocess_input amount to an affine map of [0,255] pixels.
    if name == "mobilenetv2":
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(x)
    else:  # resnet50: caffe-style BGR mean subtraction on 0..255 (mean of ImageNet's means)
        x = keras.layers.Rescaling(255.0, offset=-114.8, name="to_caffe")(x)
    resolved = resolve_weights(weights)
    app = getattr(keras.applications, BACKBONES[name])
    backbone = app(
        include_top=False,
        weights=resolved if resolved == "imagenet" else None,
        input_shape=(image_size, image_size, 3),
        # No pooling inside the backbone: the "gap" layer below pools instead, so its input is
        # the last conv feature map that the gradcam signature needs (see FEATURE_LAYER).
        pooling=None,
    )
    if resolved != "imagenet":
        seed_backbone(backbone, seed)
    if resolved not in (None, "imagenet"):
        backbone.load_weights(resolved, skip_mismatch=True)
    backbone.name = BACKBONE_LAYER_NAME
    # No `training=False` here: Keras 3's functional models pass fit()'s training=True to every
    # layer regardless. BatchNorm statistics are kept fixed by set_backbone_trainable instead.
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
    return keras.Model(inputs, _head(x, num_classes, seed, dropout), name=f"cxr_{name}")


# Initialiser attribute -> the variable it initialised, for every layer type in the backbones
# (Keras 3's DepthwiseConv2D keeps its depthwise kernel as `kernel`).
_INITIALISED = (("kernel_initializer", "kernel"), ("depthwise_initializer", "kernel"),
                ("bias_initializer", "bias"))
ALL_LAYERS = "all"  # set_backbone_trainable: train the whole backbone, BatchNorm statistics included


def seed_backbone(backbone: keras.Model, seed: int) -> None:
    """Re-draws every kernel and bias of a keras.applications backbone from `seed`.

    The applications build their layers with unseeded initialisers, which draw from Keras'
    global generator: two builds with one seed gave different weights. Seeding that generator
    (keras.utils.set_random_seed) would change the whole process, so each variable is drawn
    again here from a seeded copy of its own initialiser (seed + layer index: layers differ).
    """
    for index, layer in enumerate(backbone.layers):
        for attr, name in _INITIALISED:
            initializer, variable = getattr(layer, attr, None), getattr(layer, name, None)
            if initializer is None or variable is None:
                continue
            config = initializer.get_config()
            if "seed" in config:  # random initialisers; constant ones (zeros, ones) are already fixed
                config["seed"] = seed * 1009 + index
                variable.assign(type(initializer).from_config(config)(variable.shape, variable.dtype))


def set_backbone_trainable(model: keras.Model, top_layers: int | str | None) -> None:
    """Freezes the backbone (top_layers=None), unfreezes only its top `top_layers` layers, or
    trains all of it (ALL_LAYERS: a backbone without pretrained weights, trained from scratch).

    When only the top layers are unfrozen, BatchNormalization layers stay frozen: in Keras 3 a
    frozen BatchNorm runs in inference mode, so the pretrained statistics are kept. Trained, they
    would follow batches of 16 X-rays, and the exported model would see statistics no test image
    matches.
    """
    try:
        backbone = model.get_layer(BACKBONE_LAYER_NAME)
    except ValueError:
        return  # the custom CNN has no backbone
    if top_layers is None:
        backbone.trainable = False
        return
    backbone.trainable = True
    if top_layers == ALL_LAYERS:
        return
    for layer in backbone.layers[:-top_layers]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def build_model(name: str, image_size: int, num_classes: int, weights: str = "none", seed: int = 0,
                dropout: float = 0.3, norm: str = "none") -> keras.Model:
    if name == "cnn":
        return build_cnn(image_size, num_classes, seed, dropout, norm)
    if norm != "none":
        raise ValueError(f"norm {norm!r} applies to the custom CNN only")
    return build_transfer(name, image_size, num_classes, weights, seed, dropout)
