"""Transform: the TF Transform graph that turns encoded image bytes into model input.

The graph decodes (PNG 8/16-bit, JPEG), converts to grayscale, resizes and normalises. The
same graph is applied to training input and embedded in the exported model, so training and
serving can never disagree on preprocessing.

Materialise or apply on the fly? We apply the graph on the fly in the Trainer and cache the
decoded tensors for the following epochs (trainer/data.py). Measured in bench/ (README there):
a materialised float32 copy at 512x512 would add 1.05 GB per 1,000 images on top of the 1.23 GB
of examples, while the cached on-the-fly input trains as fast as pre-decoded tensors (the
trainer benchmark with augmentation off: equal to the bare baseline).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cxrflow import features as fk
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import write_json_atomic

ZSCORE_EPSILON = 1e-6
ANALYZE_BATCH_SIZE = 16
# Letterbox bands: black, the value of the air around the body and of film borders, and the value
# the augmentation's rotations and shifts fill in (trainer/data.py).
PAD_VALUE = 0.0


def decode_grayscale(image_bytes, image_size: int, resize_mode: str = "stretch"):
    """One encoded image -> float32 [size, size, 1] in [0,1]. Works in TFT and in serving.

    `stretch` resizes to a square whatever the aspect ratio; `pad` scales the longer side to
    `image_size`, keeping the aspect ratio, and centres the image on black (PAD_VALUE) bands.
    """
    import tensorflow as tf  # lazy: the CLI imports this module (via report.shortcut) and must not load TF

    # channels=1 lets libpng/libjpeg convert RGB, RGBA, palette and gray+alpha to gray while
    # decoding (cheaper than decoding RGB and converting); 16-bit PNGs keep their precision
    # because decode_image decodes them as uint16 before scaling to float.
    image = tf.io.decode_image(image_bytes, channels=1, dtype=tf.float32, expand_animations=False)
    shape = tf.shape(image)
    target = tf.constant([image_size, image_size])
    if resize_mode == "pad":
        # The longer side becomes image_size; the shorter keeps the film's proportions (>= 1 px).
        scale = image_size / tf.cast(tf.reduce_max(shape[:2]), tf.float32)
        target = tf.clip_by_value(tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32), 1, image_size)
    elif resize_mode != "stretch":
        raise ValueError(f"resize_mode must be stretch or pad, got {resize_mode!r}")
    # Shrinking (the usual case: 1-3 MP X-rays to 512 px): area averaging is antialiased and
    # ~3x faster than antialiased bilinear. Growing: bilinear, since area would be blocky.
    image = tf.cond(
        tf.reduce_all(shape[:2] >= target),
        lambda: tf.image.resize(image, target, method="area"),
        lambda: tf.image.resize(image, target, method="bilinear", antialias=True),
    )
    if resize_mode == "pad":
        offset = (image_size - target) // 2
        image = tf.pad(image, [[offset[0], image_size - target[0] - offset[0]],
                               [offset[1], image_size - target[1] - offset[1]], [0, 0]], constant_values=PAD_VALUE)
        image = tf.ensure_shape(image, [image_size, image_size, 1])
    return tf.clip_by_value(image, 0.0, 1.0)


def decode_batch(images, image_size: int, resize_mode: str = "stretch"):
    import tensorflow as tf  # lazy: the CLI imports this module (via report.shortcut) and must not load TF

    return tf.map_fn(
        lambda b: decode_grayscale(b, image_size, resize_mode),
        tf.reshape(images, [-1]),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32),
    )


def make_preprocessing_fn(image_size: int, normalization: str, resize_mode: str = "stretch") -> Callable[[dict], dict]:
    """Builds TFT's `preprocessing_fn` for the given size, normalisation and resize mode.

    The exported model runs this same graph (the Trainer's TFT layer), so serving resizes as
    training did.
    """

    def preprocessing_fn(inputs: dict) -> dict:
        import tensorflow as tf  # lazy (both): only TFT's tracing runs this, never the CLI's import
        import tensorflow_transform as tft

        images = decode_batch(inputs[fk.IMAGE_KEY], image_size, resize_mode)
        if normalization == "zscore":
            # Full-pass analyzers over the training split: one mean and std for all pixels.
            mean = tft.mean(images)
            std = tf.sqrt(tft.var(images) + ZSCORE_EPSILON)
            images = (images - mean) / std
        return {fk.IMAGE_XF_KEY: images}

    return preprocessing_fn


def run_transform(config: PipelineConfig, train_pattern: str, output_dir: str, beam_args: Sequence[str] = ()) -> str:
    """Analyzes the training split and writes the transform graph to `output_dir`."""
    import apache_beam as beam  # lazy (these five): Beam, TFT and tfx_bsl only when the stage runs
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    image_only = fk.raw_feature_spec((fk.IMAGE_KEY,))
    source = tfxio.TFExampleRecord(
        file_pattern=train_pattern, schema=schema_utils.schema_from_feature_spec(image_only)
    )
    preprocessing_fn = make_preprocessing_fn(config.image_size, config.normalization, config.resize_mode)
    temp_dir = os.path.join(output_dir, ".tft_tmp") if "://" not in output_dir else output_dir + "/.tft_tmp"
    options = PipelineOptions(list(beam_args or config.beam_args))
    # A fixed, small batch (here and in BeamSource below): tfx-bsl otherwise grows batches with
    # the data, and a batch of full-resolution decoded X-rays is gigabytes. Measured in bench/:
    # peak RSS 1.20 GB at 100 images vs 1.50 GB at 400 before, 1.18 vs 1.23 GB after.
    with beam.Pipeline(options=options) as p, tft_beam.Context(temp_dir=temp_dir,
                                                               desired_batch_size=ANALYZE_BATCH_SIZE):
        raw = p | "ReadTrain" >> source.BeamSource(batch_size=ANALYZE_BATCH_SIZE)
        transform_fn = (raw, source.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(preprocessing_fn)
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(output_dir)
    write_json_atomic(
        os.path.join(output_dir, "transform_config.json") if "://" not in output_dir
        else output_dir + "/transform_config.json",
        {"image_size": config.image_size, "normalization": config.normalization, "resize_mode": config.resize_mode},
    )
    return output_dir
