"""The `cxrflow` command line's shared flags, and the config they build (cli.py uses them).

Kept apart from cli.py so that each file stays readable: this one maps flags to
`PipelineConfig` fields, cli.py runs the commands.
"""

from __future__ import annotations

import argparse
import os

from cxrflow.config import (
    BLESSING_RULES,
    CNN_NORMS,
    DEFAULT_CLASSES,
    EARLY_STOPPING_METRICS,
    MODELS,
    RESAMPLE_MODES,
    RESIZE_MODES,
    Augmentation,
    PipelineConfig,
    Resources,
)
from cxrflow.version import image_uri

# Config fields whose flag is the field's name with dashes and whose value reaches the config
# as given: (field, help, extra add_argument options).
TRAINER_KNOBS = (
    ("weight_decay", "AdamW decoupled weight decay (each step shrinks weights by learning rate x this)", {}),
    ("early_stopping_min_epochs", "never stop early before this many epochs (of each phase); 0 = from the first", {}),
    ("early_stopping_metric", "what picks the best epoch and stops training: eval loss, or eval macro recall",
     {"choices": EARLY_STOPPING_METRICS}),
    ("ema_momentum", "score and export an exponential moving average of the weights (0.98: about 50 steps); 0 = off",
     {}),
    ("label_smoothing", "soften the training targets (0.1: the true class gets 0.933 of 3); 0 = off", {}),
    ("dropout", "dropout before the classification head", {}),
    ("cnn_norm", "normalisation in the custom CNN's conv blocks (group: GroupNorm, batch-size independent)",
     {"choices": CNN_NORMS}),
    ("warmup_epochs", "epochs of linear learning-rate warmup before the cosine decay; 0 = off", {}),
)
SHORTCUT_KNOBS = (
    ("lungs_hidden_fraction", "share of width and height hidden at the centre for the lungs-hidden test", {}),
    ("lungs_hidden_margin", "warn when macro recall with the lungs hidden is this far above chance or more", {}),
    ("probe_margin", "warn when the file-traits probe comes this close to the model's macro recall", {}),
    ("probe_max_macro_recall", "warn when the file-traits probe's macro recall exceeds this", {}),
)


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_config_flags(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument("--data", action="append", default=[], required=data_required, metavar="KIND:PATH",
                   help="a dataset to read, e.g. folders:/data/cxr (repeatable; all are merged)")
    p.add_argument("--classes", type=csv_list, default=DEFAULT_CLASSES, help="comma-separated class names")
    p.add_argument("--views", type=csv_list, default=PipelineConfig.views,
                   help="views to keep where metadata names them (default: frontal PA,AP,AP Supine,AP Erect)")
    p.add_argument("--class-map", default="", help="FOLDER=CLASS,... folder-name overrides")
    p.add_argument("--finding-map", default="",
                   help="[KIND:]FINDING_PREFIX=CLASS,... overrides for metadata findings, e.g. nih:Pneumonia=bacterial")
    p.add_argument("--patient-map", default="", metavar="CSV",
                   help="folders sources: a CSV with columns file,patient (file relative to the source root)")
    p.add_argument("--patient-pattern", default="", metavar="REGEX",
                   help="folders sources: the patient from the file name (group `patient`, else the first group)")
    p.add_argument("--kaggle-val-as-eval", action="store_true",
                   help="use Kaggle's val folder as eval instead of merging it into train")
    p.add_argument("--eval-fraction", type=float, default=0.15, help="share of train patients carved out for eval")
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="share of patients held out for test where a source has no test split")
    p.add_argument("--test-source", default="", metavar="NAME",
                   help="external validation: every image of this source (e.g. ieee or ieee:ieee) is the test split")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="larger images are skipped (bombs)")
    p.add_argument("--ingest-cache", default="", metavar="DIR",
                   help="remember pixel checks by file hash here (local or gs://): re-ingesting decodes only new files")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--normalization", choices=("unit", "zscore"), default="unit")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default=PipelineConfig.resize_mode,
                   help="stretch to square, or pad (letterbox, keeps the aspect ratio)")
    p.add_argument("--model", choices=MODELS, default="cnn")
    p.add_argument("--weights", default="none", help="imagenet | none | path to a local weights file")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=PipelineConfig.deterministic,
                   help="same seed, same weights on CPU (TF op determinism; slower); --no-deterministic is faster")
    add_knob_flags(p, TRAINER_KNOBS)
    p.add_argument("--resample", choices=RESAMPLE_MODES, default="none")
    p.add_argument("--no-class-weights", action="store_true", help="train without inverse-frequency weights")
    p.add_argument("--balance-by", choices=("age_group", "source"), default="",
                   help="over-sample so every class has the same mix of this in train (confounding)")
    p.add_argument("--flip", action="store_true", help="enable random horizontal flips (off: CXR orientation)")
    p.add_argument("--tta", type=int, default=1, help="test-time augmentation views (1 = off)")
    p.add_argument("--serving-dir", default=None, help="where blessed models are pushed (default OUTPUT/serving)")
    p.add_argument("--model-name", default="cxrflow")
    p.add_argument("--keep", type=int, default=0, help="keep only the newest N pushed versions (0 = all)")
    p.add_argument("--vertex-model", default="", help="also register each push in Vertex AI under this name")
    p.add_argument("--vertex-project", default="")
    p.add_argument("--vertex-region", default="")
    p.add_argument("--vertex-endpoint", default="", help="deploy the registered model to this Vertex endpoint")
    p.add_argument("--min-macro-recall", type=float, default=0.8)
    p.add_argument("--max-regression", type=float, default=0.02,
                   help="allowed drop of a gated metric against the served model")
    p.add_argument("--blessing-rule", choices=BLESSING_RULES, default="bootstrap",
                   help="judge a drop by a paired patient bootstrap (default) or by the point estimates")
    p.add_argument("--min-recall", default="covid=0.9", help="CLASS=VALUE,... recall floors for blessing")
    p.add_argument("--operating-point", default=",".join(f"{c}={v:g}" for c, v in PipelineConfig.operating_point),
                   metavar="CLASS=RECALL",
                   help="after training, raise CLASS's logit just enough to reach RECALL on the eval split "
                        "(dropped when CLASS is not among --classes; 'none' = plain argmax)")
    p.add_argument("--operating-max-offset", type=float, default=PipelineConfig.operating_max_offset,
                   help="largest logit offset the operating point may add")
    p.add_argument("--seed", type=int, default=42)
    add_shortcut_flags(p)
    p.add_argument("--base-image", default="", help="container image for every KFP task (compile)")
    p.add_argument("--registry", default="",
                   help="compile against this version's image there: REGISTRY/cxrflow:<version>[-gpu]")
    p.add_argument("--trainer-accelerator", default="", help="e.g. NVIDIA_TESLA_T4")
    p.add_argument("--trainer-gpus", type=int, default=0)
    p.add_argument("--trainer-cpu", default="")
    p.add_argument("--trainer-memory", default="")
    p.add_argument("--task-cpu", default="")
    p.add_argument("--task-memory", default="")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="passed to every Beam stage, e.g. --beam-arg=--runner=DataflowRunner")


def add_shortcut_flags(p: argparse.ArgumentParser) -> None:
    add_knob_flags(p, SHORTCUT_KNOBS)


def add_knob_flags(p: argparse.ArgumentParser, knobs: tuple[tuple[str, str, dict], ...]) -> None:
    """One flag per knob: `--field-name`, typed and defaulted as the config field is."""
    for field, text, options in knobs:
        default = getattr(PipelineConfig, field)
        p.add_argument("--" + field.replace("_", "-"), type=type(default), default=default, help=text, **options)


def knob_values(args: argparse.Namespace, knobs: tuple[tuple[str, str, dict], ...]) -> dict:
    return {field: getattr(args, field) for field, _, _ in knobs}


def min_recall_pairs(text: str, flag: str = "--min-recall") -> tuple[tuple[str, float], ...]:
    out = []
    for item in csv_list(text):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} takes CLASS=VALUE, got {item!r}")
        out.append((name, float(value)))
    return tuple(out)


def base_image_from_args(args: argparse.Namespace) -> str:
    """--base-image, or this version's image in --registry (the GPU one when the Trainer gets GPUs,
    as every task runs one image); "" when neither is given (compile then refuses)."""
    if args.base_image or not args.registry:
        return args.base_image
    return image_uri(args.registry, "gpu" if args.trainer_gpus > 0 else "cpu")


def config_from_args(args: argparse.Namespace, output_dir: str | None = None) -> PipelineConfig:
    serving_dir = args.serving_dir or (os.path.join(os.path.abspath(output_dir), "serving") if output_dir else "")
    min_recall = tuple((c, v) for c, v in min_recall_pairs(args.min_recall) if c in args.classes)
    operating = "" if args.operating_point in ("none", "") else args.operating_point
    operating_point = tuple((c, v) for c, v in min_recall_pairs(operating, "--operating-point") if c in args.classes)
    return PipelineConfig(
        data=tuple(absolute_data(d) for d in args.data), classes=tuple(args.classes), views=tuple(args.views),
        class_map=args.class_map, finding_map=args.finding_map, kaggle_merge_val=not args.kaggle_val_as_eval,
        eval_fraction=args.eval_fraction, test_fraction=args.test_fraction, max_image_pixels=args.max_pixels,
        test_source=args.test_source, patient_map=absolute_path(args.patient_map), patient_pattern=args.patient_pattern,
        ingest_cache=absolute_path(args.ingest_cache),
        image_size=args.image_size, normalization=args.normalization,
        model=args.model, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, resample=args.resample, class_weights=not args.no_class_weights,
        resize_mode=args.resize_mode, deterministic=args.deterministic, balance_by=args.balance_by,
        augmentation=Augmentation(flip=args.flip), tta=args.tta, serving_dir=serving_dir,
        model_name=args.model_name, keep_versions=args.keep, vertex_model=args.vertex_model,
        vertex_project=args.vertex_project, vertex_region=args.vertex_region, vertex_endpoint=args.vertex_endpoint,
        min_macro_recall=args.min_macro_recall,
        max_regression=args.max_regression, blessing_rule=args.blessing_rule,
        min_recall=min_recall, operating_point=operating_point, operating_max_offset=args.operating_max_offset,
        seed=args.seed, base_image=base_image_from_args(args), beam_args=tuple(args.beam_arg),
        trainer_resources=Resources(args.trainer_cpu, args.trainer_memory, args.trainer_accelerator,
                                    args.trainer_gpus),
        default_resources=Resources(args.task_cpu, args.task_memory), **knob_values(args, TRAINER_KNOBS),
        **knob_values(args, SHORTCUT_KNOBS),
    )


def absolute_path(path: str) -> str:
    """A local path made absolute (KFP tasks run in other working dirs); URIs and "" unchanged."""
    return os.path.abspath(path) if path and "://" not in path else path


def absolute_data(entry: str) -> str:
    kind, sep, path = entry.partition(":")
    return f"{kind}:{absolute_path(path)}" if sep else entry
