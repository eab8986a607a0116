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
AGE_GROUP_KEY = "age_group"
IMAGE_ID_KEY = "image_id"  # stable id: source + relative path

METADATA_KEYS = (PATIENT_ID_KEY, SOURCE_KEY, VIEW_KEY, SEX_KEY, AGE_KEY, AGE_GROUP_KEY, IMAGE_ID_KEY)
STRING_KEYS = (IMAGE_KEY, LABEL_KEY, *METADATA_KEYS)

# Transformed features produced by the TF Transform graph.
IMAGE_XF_KEY = "image_xf"

# Evaluator's prediction records (model-agnostic TFMA input).
LABEL_ID_KEY = "label_id"
PREDICTION_KEY = "probabilities"

SPLITS = ("train", "eval", "test")


def raw_feature_spec(keys: tuple[str, ...] = STRING_KEYS) -> dict:
    """The tf.io parsing spec of ExampleGen's examples (every feature is always written)."""
    import tensorflow as tf

    return {key: tf.io.FixedLenFeature([], tf.string) for key in keys}
