"""Feature and label keys shared by every stage.

Keeping them in one module means ExampleGen, Transform, Trainer, Evaluator and serving
cannot drift apart on a spelling.
"""

from __future__ import annotations

# Raw tf.Example features written by ExampleGen.
IMAGE_KEY = "image"  # encoded image bytes, as found on disk (or re-encoded PNG, see images.py)
LABEL_KEY = "label"  # class name (bytes)
PATIENT_ID_KEY = "patient_id"
SOURCE_KEY = "source"
VIEW_KEY = "view"
SEX_KEY = "sex"
AGE_KEY = "age"  # string, empty when unknown (ages are often "" or "45" or "45Y")
AGE_GROUP_KEY = "age_group"  # "child" (under 18) / "adult" / "" unknown; a source may declare it
IMAGE_ID_KEY = "image_id"  # stable id: source + relative path

METADATA_KEYS = (PATIENT_ID_KEY, SOURCE_KEY, VIEW_KEY, SEX_KEY, AGE_KEY, AGE_GROUP_KEY, IMAGE_ID_KEY)
STRING_KEYS = (IMAGE_KEY, LABEL_KEY, *METADATA_KEYS)

# File traits of the original file (before any re-encode), read from its header. They are what
# a shortcut can use instead of the lungs (file size, resolution, colour mode differ by source).
TRAIT_BYTES_KEY = "trait_bytes"  # int64: file size
TRAIT_WIDTH_KEY = "trait_width"  # int64, pixels
TRAIT_HEIGHT_KEY = "trait_height"  # int64, pixels
TRAIT_CHANNELS_KEY = "trait_channels"  # int64: bands of the PIL mode (1 for palette)
TRAIT_BIT_DEPTH_KEY = "trait_bit_depth"  # int64: bits per sample (PNG's IHDR, JPEG's precision)
TRAIT_FORMAT_KEY = "trait_format"  # bytes: PIL format, e.g. JPEG, PNG, TIFF, or DICOM
TRAIT_MODE_KEY = "trait_mode"  # bytes: PIL mode, e.g. L, RGB, RGBA, I;16
TRAIT_INT_KEYS = (TRAIT_BYTES_KEY, TRAIT_WIDTH_KEY, TRAIT_HEIGHT_KEY, TRAIT_CHANNELS_KEY, TRAIT_BIT_DEPTH_KEY)
TRAIT_STR_KEYS = (TRAIT_FORMAT_KEY, TRAIT_MODE_KEY)
TRAIT_KEYS = (*TRAIT_INT_KEYS, *TRAIT_STR_KEYS)

# Transformed features produced by the TF Transform graph.
IMAGE_XF_KEY = "image_xf"

# Evaluator's prediction records (model-agnostic TFMA input).
LABEL_ID_KEY = "label_id"
PREDICTION_KEY = "probabilities"

SPLITS = ("train", "eval", "test")


def raw_feature_spec(keys: tuple[str, ...] = STRING_KEYS) -> dict:
    """The tf.io parsing spec of ExampleGen's examples (every feature is always written).

    Trait keys may be mixed in: the int64 ones get an int64 spec, everything else is a string.
    """
    import tensorflow as tf  # lazy: importing the keys must not load TF

    return {key: tf.io.FixedLenFeature([], tf.int64 if key in TRAIT_INT_KEYS else tf.string) for key in keys}


def trait_feature_spec() -> dict:
    """The parsing spec of the file-trait features alone."""
    return raw_feature_spec(TRAIT_KEYS)
