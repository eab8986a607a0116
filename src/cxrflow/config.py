"""The one place every knob of a cxrflow run lives.

The whole config travels to every KFP component as one JSON string, so a stage can never see
a different value than its neighbours, locally or on Vertex.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

DEFAULT_CLASSES = ("covid", "bacterial", "normal")
MODELS = ("cnn", "resnet50", "mobilenetv2")
RESAMPLE_MODES = ("none", "under", "over")
BALANCE_BY = ("", "age_group", "source")  # nuisance variables Resample can balance; "" = off
NORMALIZATIONS = ("unit", "zscore")
BLESSING_RULES = ("bootstrap", "point")
RESIZE_MODES = ("stretch", "pad")
# Normalisation inside the custom CNN's conv blocks: none, or GroupNorm (per image, so it does
# not depend on the batch size the way BatchNorm does; models.py).
CNN_NORMS = ("none", "group")
EARLY_STOPPING_METRICS = ("val_loss", "val_macro_recall")  # the second is maximised


class ConfigError(ValueError):
    """A config value a user gave is not usable; the message says which and why."""


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation; eval, test and serving never see it."""

    flip: bool = False  # chest X-rays have a fixed orientation (heart on the left)
    # Brightness and contrast are linear, so the CNN's per-image standardisation undoes them;
    # they still reach transfer models. The gamma curve is what changes the CNN's input.
    brightness: float = 0.1  # max additive delta on [0,1] pixels; 0 turns it off
    contrast: float = 0.15  # max relative contrast change; 0 turns it off
    gamma: float = 0.3  # max |log gamma| of a per-image intensity curve; 0 turns it off
    translate: float = 0.0  # max shift either way, as a fraction of the image size; 0 turns it off
    noise: float = 0.01  # std of Gaussian noise; 0 turns it off
    rotation_deg: float = 5.0  # max rotation either way; 0 turns it off
    zoom: float = 0.08  # max zoom in/out fraction; 0 turns it off


@dataclass(frozen=True)
class Resources:
    """KFP task resources. Empty strings mean "let the cluster decide"."""

    cpu: str = ""
    memory: str = ""
    accelerator_type: str = ""  # e.g. NVIDIA_TESLA_T4; Trainer only
    accelerator_count: int = 0


@dataclass(frozen=True)
class PipelineConfig:
    # Data
    data: tuple[str, ...] = ()  # "KIND:PATH" entries, merged in order
    classes: tuple[str, ...] = DEFAULT_CLASSES
    # Frontal views only: laterals (L) are a different projection, and a view present in one class
    # alone would be a shortcut. AP and AP Supine hold half of the public COVID films.
    views: tuple[str, ...] = ("PA", "AP", "AP Supine", "AP Erect")
    class_map: str = ""  # "FOLDER=CLASS,..." overrides for folder names
    finding_map: str = ""  # "[KIND:]FINDING_PREFIX=CLASS,..." overrides for metadata findings (sources/findings.py)
    # `folders` sources only: where each file's patient comes from; without either, each file is
    # its own patient and the ingest report says the source was split by image.
    patient_map: str = ""  # CSV with columns file,patient (file relative to the source root)
    patient_pattern: str = ""  # regex on the file name: group `patient`, else the first group
    folder_label: str = ""  # the class of images lying directly in a `folders` root (cxrflow evaluate --label)
    kaggle_merge_val: bool = True  # Kaggle's 16-image val folder joins train
    eval_fraction: float = 0.15  # share of a source's patients carved for eval where it ships no eval split
    test_fraction: float = 0.15  # share of a source's patients carved for test where it ships no test split
    # External validation: every image of this source (full name `ieee:ieee` or kind `ieee`) is
    # the test split, and it never enters train or eval; "" = off (stages/splitting.py)
    test_source: str = ""
    max_image_pixels: int = 50_000_000  # larger images are skipped as decompression bombs
    ingest_cache: str = ""  # dir (local or gs://) remembering pixel checks by file hash; "" = off
    # Transform
    image_size: int = 512
    normalization: str = "unit"  # "unit" = [0,1]; "zscore" uses TFT mean/std over train
    resize_mode: str = "stretch"  # "stretch" to square, or "pad" (letterbox: keeps the aspect ratio)
    # Resample
    resample: str = "none"
    oversample_ratio: float = 1.0  # minority classes grow to ratio * majority count
    class_weights: bool = True
    # Give every class the same mix of this nuisance variable in train (stages/resample.py); "" = off
    balance_by: str = ""
    # Trainer
    model: str = "cnn"
    weights: str = "none"  # imagenet | none | path to a local weights file
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    # Keras' AdamW decays by learning_rate * weight_decay per step (decoupled), so 1e-4 was ~1e-7.
    weight_decay: float = 0.02
    early_stopping_patience: int = 6
    # No early stop before this many epochs (of each training phase): the CNN can sit at chance for
    # several epochs before it learns, and on the real X-rays (seed 1) the default's first better
    # epoch was the 7th, one short of patience ending training on epoch 1's chance-level weights.
    early_stopping_min_epochs: int = 10
    # What picks the best epoch and stops training: the eval split's loss, or its macro recall
    # (argmax decisions, trainer/training_metrics.py; ties to the lower loss, patience also reset
    # by a new loss low). Macro recall + the operating point matched the loss on 2 of 3 seeds of
    # `make quality` and won the third, but lowered AUC on all three, so the loss stays the
    # default (bench/README.md, 2026-12-03).
    early_stopping_metric: str = "val_loss"
    # Momentum of an exponential moving average of the weights (Keras' optimizer EMA): each
    # epoch is scored on the eval split, and the best one exported, with the averaged weights
    # (trainer/checkpoints.py). 0 = off: score and export the raw weights. With the operating
    # point below, 0.98 kept or raised macro and COVID recall on every seed of `make quality`
    # (bench/README.md, 2026-12-03, arm E + operating point).
    ema_momentum: float = 0.98
    # Softens the one-hot training targets: the true class gets 1 - s + s/K, each other s/K
    # (trainer/losses.py). 0 = plain cross-entropy. The eval loss that picks the best epoch is
    # the smoothed one too.
    label_smoothing: float = 0.0
    # Dropout before the classification head (every model family). 0.5 lost two seeds of three
    # of `make quality` (bench/README.md, 2026-12-03, fourth session).
    dropout: float = 0.3
    # "group": GroupNorm (8 groups) after each conv of the custom CNN; "none": plain conv + ReLU.
    cnn_norm: str = "none"
    # Epochs over which the learning rate rises linearly from 0 before the cosine decay; 0 = off.
    warmup_epochs: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 42
    # Same seed, same weights on CPU: TF op determinism in the Trainer and a content-defined
    # order of the training examples (trainer/data.py); costs some speed (README).
    deterministic: bool = True
    # Decision rule for one screening class (trainer/operating_point.py): after training, the
    # smallest logit offset that gives this class the target recall on the eval split is built
    # into the model, at most `operating_max_offset`. () = plain argmax. On raw weights covid=0.95
    # lost macro recall on one seed; on averaged weights (ema_momentum) it won or tied on all
    # three (bench/README.md, 2026-12-03). Dropped where `classes` has no covid (cli_flags.py).
    operating_point: tuple[tuple[str, float], ...] = (("covid", 0.95),)
    operating_max_offset: float = 2.0
    # Evaluator
    tta: int = 1
    min_recall: tuple[tuple[str, float], ...] = (("covid", 0.9),)
    min_macro_recall: float = 0.8
    max_regression: float = 0.02  # allowed drop of a gated metric against the served model
    # How a drop against the served model is judged (blessing.py): "bootstrap" fails a metric only
    # when a paired patient bootstrap shows with 95% confidence that it dropped by more than
    # max_regression; "point" compares the two point estimates (TFMA's change threshold).
    blessing_rule: str = "bootstrap"
    # Shortcut checks (report/shortcut.py): a file-traits-only probe warns when its macro recall
    # comes within probe_margin of the model's or exceeds probe_max_macro_recall; the model is
    # scored with the central lungs_hidden_fraction of width and height hidden and warns when its
    # macro recall stays lungs_hidden_margin or more above chance.
    probe_margin: float = 0.05
    probe_max_macro_recall: float = 0.8
    lungs_hidden_fraction: float = 0.6
    lungs_hidden_margin: float = 0.15
    # Pusher
    serving_dir: str = ""
    model_name: str = "cxrflow"
    keep_versions: int = 0  # prune pushed versions to the newest N; 0 keeps all
    vertex_model: str = ""  # display name: also register each push in Vertex AI Model Registry
    vertex_project: str = ""
    vertex_region: str = ""
    vertex_endpoint: str = ""  # endpoint resource name or id to deploy the new model to
    vertex_serving_image: str = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    # Local runs: completed stages and the Trainer's backups live here (see stage_cache.py)
    work_dir: str = ""
    # Deployment
    # The image every KFP task runs in. "" = not chosen: fine for local runs (kfp.local runs tasks
    # in this environment), refused by `compile_pipeline` (python:3.11-slim lacked cxrflow).
    base_image: str = ""
    beam_args: tuple[str, ...] = ()
    trainer_resources: Resources = field(default_factory=Resources)
    default_resources: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes must be at least two distinct names, got {list(self.classes)}")
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.resample not in RESAMPLE_MODES:
            raise ConfigError(f"resample must be one of {RESAMPLE_MODES}, got {self.resample!r}")
        if self.balance_by not in BALANCE_BY:
            raise ConfigError(f"balance_by must be one of {BALANCE_BY}, got {self.balance_by!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.normalization == "zscore" and self.model != "cnn":
            raise ConfigError(f"normalization zscore cannot be used with {self.model}: transfer models rescale "
                              "[0,1] input to their backbone's range themselves; use --normalization unit")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if not 0 <= self.ema_momentum < 1:
            raise ConfigError(f"ema_momentum must be 0 (off) or lie below 1, got {self.ema_momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be 0 (off) or lie below 1, got {self.label_smoothing}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.cnn_norm not in CNN_NORMS:
            raise ConfigError(f"cnn_norm must be one of {CNN_NORMS}, got {self.cnn_norm!r}")
        if self.cnn_norm != "none" and self.model != "cnn":
            raise ConfigError(f"cnn_norm {self.cnn_norm} applies to the custom CNN only, not to {self.model}")
        if self.early_stopping_min_epochs < 0:
            raise ConfigError(f"early_stopping_min_epochs must be 0 (off) or more, "
                              f"got {self.early_stopping_min_epochs}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must be 0 (off) or fewer than epochs ({self.epochs}), "
                              f"got {self.warmup_epochs}")
        if not 16 <= self.image_size <= 2048:
            raise ConfigError(f"image_size must be between 16 and 2048, got {self.image_size}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be positive")
        if not (0 < self.eval_fraction < 1 and 0 < self.test_fraction < 1):
            raise ConfigError("eval_fraction and test_fraction must lie strictly between 0 and 1")
        if self.eval_fraction + self.test_fraction >= 1:
            raise ConfigError("eval_fraction + test_fraction must leave data for training")
        if self.blessing_rule not in BLESSING_RULES:
            raise ConfigError(f"blessing_rule must be one of {BLESSING_RULES}, got {self.blessing_rule!r}")
        if self.early_stopping_metric not in EARLY_STOPPING_METRICS:
            raise ConfigError(f"early_stopping_metric must be one of {EARLY_STOPPING_METRICS}, "
                              f"got {self.early_stopping_metric!r}")
        if self.tta < 1:
            raise ConfigError("tta must be 1 (off) or more")
        if not 0 < self.lungs_hidden_fraction < 1:
            raise ConfigError(f"lungs_hidden_fraction must lie between 0 and 1, got {self.lungs_hidden_fraction}")
        unknown = [name for name, _ in self.min_recall if name not in self.classes]
        if unknown:
            raise ConfigError(f"min_recall names classes not in {list(self.classes)}: {unknown}")
        if len(self.operating_point) > 1:
            raise ConfigError(f"operating_point takes one class, got {len(self.operating_point)}")
        for name, target in self.operating_point:
            if name not in self.classes:
                raise ConfigError(f"operating_point names {name!r}, not one of {list(self.classes)}")
            if not 0 < target <= 1:
                raise ConfigError(f"operating_point recall must lie in (0, 1], got {target}")
        if self.operating_max_offset < 0:
            raise ConfigError(f"operating_max_offset must be 0 or more, got {self.operating_max_offset}")
        for entry in self.data:
            kind, sep, path = entry.partition(":")
            if not sep or not kind or not path:
                raise ConfigError(f"--data takes KIND:PATH, got {entry!r}")

    # --- serialisation -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        raw = json.loads(text)
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {unknown}")
        return cls(**cls._typed(raw))

    @classmethod
    def _typed(cls, raw: dict) -> dict:
        """JSON values turned back into the field types (tuples, nested dataclasses)."""
        values = dict(raw)
        for key in ("data", "classes", "views", "beam_args"):
            if key in values:
                values[key] = tuple(values[key])
        for key in ("min_recall", "operating_point"):
            if key in values:
                values[key] = tuple((str(k), float(v)) for k, v in values[key])
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = Augmentation(**values["augmentation"])
        for key in ("trainer_resources", "default_resources"):
            if isinstance(values.get(key), dict):
                values[key] = Resources(**values[key])
        return values

    def replace(self, **changes) -> PipelineConfig:
        return dataclasses.replace(self, **changes)

    def source_options(self) -> dict[str, str]:
        """The options every source adapter receives (each reads the ones it knows)."""
        return {
            "views": ",".join(self.views),
            "class_map": self.class_map,
            "finding_map": self.finding_map,
            "label": self.folder_label,
            "patient_map": self.patient_map,
            "patient_pattern": self.patient_pattern,
            "kaggle_merge_val": "1" if self.kaggle_merge_val else "",
        }

    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}


# --- per-stage config (caching) ----------------------------------------------------------------
# The fields each pipeline stage reads. A KFP task receives only its stage's fields (as JSON), so
# its cache key, and the local stage cache's fingerprint (stage_cache.py), change only when one
# of them changes: a new --epochs re-runs Trainer, Evaluator and Pusher, never ExampleGen or
# Transform. Every field must be listed under a stage or in PIPELINE_ONLY_FIELDS
# (tests/test_pipeline_compile.py checks this, and that each stage's code reads only its own
# fields); a field listed nowhere is passed to every stage, which is safe but defeats caching.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "example_gen": ("data", "classes", "views", "class_map", "finding_map", "folder_label", "patient_map",
                    "patient_pattern", "kaggle_merge_val",
                    "eval_fraction", "test_fraction", "test_source", "max_image_pixels", "ingest_cache", "seed",
                    "beam_args", "work_dir"),
    "transform": ("classes", "image_size", "normalization", "resize_mode", "beam_args", "work_dir"),
    "resample": ("classes", "resample", "oversample_ratio", "class_weights", "balance_by", "seed", "beam_args",
                 "work_dir"),
    "trainer": ("classes", "views", "image_size", "normalization", "resize_mode", "resample", "class_weights",
                "model", "weights", "epochs", "batch_size", "learning_rate", "weight_decay",
                "early_stopping_patience", "early_stopping_min_epochs", "early_stopping_metric", "ema_momentum",
                "label_smoothing", "dropout", "cnn_norm", "warmup_epochs", "augmentation", "seed", "deterministic",
                "operating_point", "operating_max_offset", "tta", "beam_args", "work_dir"),
    "served_model": ("serving_dir", "model_name"),
    "evaluator": ("classes", "image_size", "batch_size", "tta", "seed", "beam_args", "min_recall",
                  "min_macro_recall", "max_regression", "blessing_rule", "probe_margin", "probe_max_macro_recall",
                  "lungs_hidden_fraction", "lungs_hidden_margin"),
    "pusher": ("serving_dir", "model_name", "keep_versions", "vertex_model", "vertex_project", "vertex_region",
               "vertex_endpoint", "vertex_serving_image"),
}
# Read when the pipeline is built (images, resources), never by a task.
PIPELINE_ONLY_FIELDS = ("base_image", "trainer_resources", "default_resources")


def stage_fields(stage: str) -> tuple[str, ...]:
    """STAGE_FIELDS[stage] plus every field no stage claims (passed everywhere, to be safe)."""
    claimed = {f for fields in STAGE_FIELDS.values() for f in fields} | set(PIPELINE_ONLY_FIELDS)
    unclaimed = [f.name for f in dataclasses.fields(PipelineConfig) if f.name not in claimed]
    return STAGE_FIELDS[stage] + tuple(unclaimed)


def stage_json(config: PipelineConfig, stage: str) -> str:
    """The JSON of the fields `stage` reads: what its KFP task receives."""
    values = json.loads(config.to_json())
    return json.dumps({k: values[k] for k in stage_fields(stage)}, sort_keys=True)


def stage_config(text: str) -> PipelineConfig:
    """A task's config: the fields in `text` (stage_json), every other field at its default.

    The whole config was validated when the pipeline was built; checking one stage's fields
    against the defaults of the others (say, the default min_recall's `covid` against custom
    classes) would refuse valid runs, so the instance is assembled without re-validation.
    """
    raw = json.loads(text)
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(PipelineConfig)})
    if unknown:
        raise ConfigError(f"unknown config keys: {unknown}")
    config = object.__new__(PipelineConfig)
    values = {**dataclasses.asdict(PipelineConfig()), **raw}
    for name, value in PipelineConfig._typed(values).items():
        object.__setattr__(config, name, value)
    return config
