"""Trainer: fits the model on transformed data and exports the serving SavedModel.

Follows TFX's trainer contract: `run_fn(fn_args)` receives file patterns, the transform
output and the export and working dirs. Everything in the working dir (backup for resume,
best checkpoint, TensorBoard logs, history) survives a killed run, so running the same
command again resumes at the last finished epoch instead of starting over.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from cxrflow import progress
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import read_json, write_json_atomic
from cxrflow.stages.resample import RESAMPLE_FILE, train_pattern_for
from cxrflow.trainer import operating_point

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"


@dataclass(frozen=True)
class FnArgs:
    """TFX's FnArgs, reduced to what cxrflow's trainer reads."""

    train_pattern: str
    eval_pattern: str
    transform_output: str
    serving_model_dir: str
    model_run_dir: str  # working dir: checkpoints, backups, logs
    train_count: int
    eval_count: int
    class_weights: dict
    config: PipelineConfig
    # What the model learned from, recorded in its metadata: {"sources": [...], "counts": {class: n}}
    trained_on: dict = field(default_factory=dict)
    # Eval films per class name (ExampleGen's report): the no-skill loss patience waits for
    eval_class_counts: dict = field(default_factory=dict)


def _strategy():
    import tensorflow as tf  # lazy: a Trainer reused from the stage cache never loads TF

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        import keras  # lazy: Keras here only on GPUs, for mixed precision

        # Mixed precision pays off on GPUs with tensor cores; the softmax head stays float32.
        keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _phases(config: PipelineConfig) -> list[dict]:
    """Training phases: one for the CNN; frozen backbone then fine-tuning for transfer.

    A backbone without pretrained weights (`--weights none`) has nothing to transfer: it is
    trained whole in one phase, BatchNorm included. Frozen, its untrained BatchNorm layers pass
    activations that vanish (mean |feature| ~1e-13 for MobileNetV2), so a head would learn nothing.
    """
    if config.model == "cnn":
        return [{"name": "train", "epochs": config.epochs, "lr": config.learning_rate, "unfreeze": None}]
    from cxrflow.trainer.models import ALL_LAYERS, FINE_TUNE_LAYERS  # lazy: models.py imports Keras

    if config.weights == "none":
        return [{"name": "train", "epochs": config.epochs, "lr": config.learning_rate, "unfreeze": ALL_LAYERS}]

    head = max(1, config.epochs // 3)
    return [
        {"name": "head", "epochs": head, "lr": config.learning_rate, "unfreeze": None},
        {"name": "finetune", "epochs": max(1, config.epochs - head), "lr": config.learning_rate / 10,
         "unfreeze": FINE_TUNE_LAYERS[config.model]},
    ]


def learning_rate_schedule(peak: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0):
    """Cosine decay from `peak` to 5% of it over the phase; with `warmup_epochs`, a linear rise
    from 0 to `peak` over that many epochs first (at most all but the phase's last epoch), and
    the decay over the rest."""
    import keras  # lazy: a Trainer reused from the stage cache never loads Keras

    warmup = min(warmup_epochs, epochs - 1) * steps_per_epoch
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=epochs * steps_per_epoch, alpha=0.05)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=epochs * steps_per_epoch - warmup, alpha=0.05,
                                                  warmup_target=peak, warmup_steps=warmup)


def optimizer_for(config: PipelineConfig, learning_rate):
    """AdamW with the config's decoupled weight decay, which Keras scales by the learning rate
    (each step shrinks a weight by learning_rate * weight_decay). Biases and normalisation
    scales are not decayed: shrinking them only shifts or rescales activations. With
    `ema_momentum` the optimizer also keeps a moving average of the weights (Keras' EMA)."""
    import keras  # lazy: a Trainer reused from the stage cache never loads Keras

    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum > 0 else {}
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay, **ema)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def run_fn(fn_args: FnArgs) -> dict:
    """Trains (resuming if the working dir holds a backup) and exports the SavedModel."""
    import keras  # lazy (these eight): Keras, TFT and the TF-bound trainer package only when training runs
    import tensorflow_transform as tft

    from cxrflow.trainer import data
    from cxrflow.trainer.checkpoints import AveragedEvaluation, ResumableTraining
    from cxrflow.trainer.export import export_serving_model
    from cxrflow.trainer.losses import no_skill_loss, training_loss
    from cxrflow.trainer.models import build_model, set_backbone_trainable
    from cxrflow.trainer.training_metrics import MacroRecall

    config = fn_args.config
    os.makedirs(fn_args.model_run_dir, exist_ok=True)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    tft_layer = tft_output.transform_features_layer()
    cache_dir = os.path.join(fn_args.model_run_dir, "cache")
    for stale in (cache_dir, cache_dir + "_eval"):  # a killed run leaves locked, partial caches
        shutil.rmtree(stale, ignore_errors=True)
    train_pattern = fn_args.train_pattern
    if config.deterministic:  # upstream Beam stages write records in no fixed order
        train_pattern = data.canonical_order(train_pattern, os.path.join(cache_dir, "ordered"))
    train_ds = data.training_dataset(
        train_pattern, tft_layer, config.classes, fn_args.train_count, config.image_size,
        config.batch_size, config.augmentation, config.seed, cache_dir, deterministic=config.deterministic,
    )
    eval_ds = data.evaluation_dataset(
        fn_args.eval_pattern, tft_layer, config.classes, fn_args.eval_count, config.image_size,
        config.batch_size, cache_dir + "_eval",
    )
    steps_per_epoch = data.steps(fn_args.train_count, config.batch_size)
    class_weight = (
        {i: float(fn_args.class_weights.get(c, 1.0)) for i, c in enumerate(config.classes)}
        if config.class_weights else None
    )

    with _strategy().scope():
        model = build_model(config.model, config.image_size, len(config.classes), config.weights, config.seed,
                            dropout=config.dropout, norm=config.cnn_norm)

    best_path = os.path.join(fn_args.model_run_dir, "best.weights.h5")
    history: list[dict] = []
    # One best across phases: fine-tuning replaces the head's best only with a better one.
    best, best_tie, best_epoch = math.inf, math.inf, None
    # Patience waits until the eval loss beats always predicting the eval class mix.
    skill_floor = (no_skill_loss([fn_args.eval_class_counts.get(c, 0) for c in config.classes], config.label_smoothing)
                   if fn_args.eval_class_counts else math.inf)
    learned = False
    # Macro recall moves in whole films on a small eval split; equal recalls go to the lower loss.
    tie_break = "val_loss" if config.early_stopping_metric != "val_loss" else None
    for phase in _phases(config):
        set_backbone_trainable(model, phase["unfreeze"])
        schedule = learning_rate_schedule(phase["lr"], phase["epochs"], steps_per_epoch, config.warmup_epochs)
        model.compile(
            optimizer=optimizer_for(config, schedule),
            loss=training_loss(config),
            metrics=["accuracy", MacroRecall(len(config.classes))],
        )
        if phase["name"] == "finetune" and os.path.exists(best_path):
            model.load_weights(best_path)  # fine-tune from the best head, not the last
        mode = "min" if config.early_stopping_metric == "val_loss" else "max"
        tracker = ResumableTraining(os.path.join(fn_args.model_run_dir, "backup", phase["name"]), best_path,
                                    monitor=config.early_stopping_metric, patience=config.early_stopping_patience,
                                    initial_best=best, mode=mode, tie_break=tie_break, initial_tie=best_tie,
                                    min_epochs=config.early_stopping_min_epochs, no_skill_loss=skill_floor,
                                    learned=learned)
        callbacks = [
            AveragedEvaluation(),  # eval scores the averaged weights when ema_momentum is set; else a no-op
            # Resume backup, best checkpoint and early stopping, all written atomically: a
            # killed run resumes at its last finished epoch with its best score and patience.
            tracker,
            # The rate the schedule reached at each epoch's end, into the history and the CSV log.
            keras.callbacks.LambdaCallback(on_epoch_end=lambda _, logs: logs.update(
                learning_rate=float(model.optimizer.learning_rate))),
            keras.callbacks.TensorBoard(os.path.join(fn_args.model_run_dir, "logs"), update_freq="epoch"),
            keras.callbacks.CSVLogger(os.path.join(fn_args.model_run_dir, f"history_{phase['name']}.csv"),
                                      append=True),
            progress.keras_callback(phase["epochs"], f"epochs ({phase['name']})"),  # the console's epoch bar
        ]
        fit = model.fit(
            train_ds, epochs=phase["epochs"], steps_per_epoch=steps_per_epoch, validation_data=eval_ds,
            validation_steps=data.steps(fn_args.eval_count, config.batch_size),
            class_weight=class_weight, callbacks=callbacks, verbose=2,
        )
        history += [
            {"phase": phase["name"], "epoch": i + 1, **{k: float(v[i]) for k, v in fit.history.items()}}
            for i in range(len(fit.history.get("loss", [])))
        ]
        best, best_tie, learned = tracker.best, tracker.best_tie, tracker.learned
        if tracker.best_epoch is not None:  # this phase beat the earlier phases' best
            best_epoch = {"phase": phase["name"], "epoch": tracker.best_epoch}
    warnings = [] if learned else [
        f"the eval loss never went below {skill_floor:.3f}, the loss of always predicting the eval split's "
        f"class mix, in {len(history)} epochs: the model learned nothing usable (try more epochs or another "
        "learning rate)"]
    for warning in warnings:
        log.warning("trainer: %s", warning)
    if os.path.exists(best_path):
        model.load_weights(best_path)  # early stopping keeps the best epoch, not the last
    operating = set_operating_point(model, eval_ds, data.steps(fn_args.eval_count, config.batch_size), config)
    shutil.rmtree(os.path.join(cache_dir, "ordered"), ignore_errors=True)  # a copy of the train split

    tmp_export = fn_args.serving_model_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp_export, ignore_errors=True)
    export_serving_model(model, tft_layer, config.classes, config.image_size, config.normalization, config.tta,
                         tmp_export, resize_mode=config.resize_mode, trained_on=fn_args.trained_on,
                         operating_point=operating)
    shutil.rmtree(fn_args.serving_model_dir, ignore_errors=True)
    os.replace(tmp_export, fn_args.serving_model_dir)
    summary = {
        "model": config.model,
        "epochs_run": len(history),
        "steps_per_epoch": steps_per_epoch,
        "train_count": fn_args.train_count,
        "eval_count": fn_args.eval_count,
        "class_weight": class_weight,
        "monitor": config.early_stopping_metric,
        "early_stopping_min_epochs": config.early_stopping_min_epochs,
        "no_skill_loss": skill_floor if math.isfinite(skill_floor) else None,
        "learned": learned,
        "warnings": warnings,
        # the best epoch's value of `monitor` (tracker.best is negated for a maximised metric)
        "best_score": (best if config.early_stopping_metric == "val_loss" else -best) if math.isfinite(best) else None,
        "best_epoch": best_epoch,  # the epoch whose weights were exported
        "tie_break": tie_break,
        "best_tie_break_score": best_tie if math.isfinite(best_tie) else None,
        "weight_decay": config.weight_decay,
        "ema_momentum": config.ema_momentum,
        "label_smoothing": config.label_smoothing,
        "dropout": config.dropout,
        "cnn_norm": config.cnn_norm,
        "warmup_epochs": config.warmup_epochs,
        "deterministic": config.deterministic,
        "trained_on": fn_args.trained_on,
        "operating_point": operating,
        "history": history,
    }
    write_json_atomic(os.path.join(fn_args.model_run_dir, SUMMARY_FILE), summary)
    log.info("trained %s for %d epochs", config.model, len(history))
    return summary


def set_operating_point(model, eval_ds, eval_steps: int, config: PipelineConfig) -> dict:
    """Builds the configured operating point into the model (trainer/operating_point.py) from
    one pass over the eval split; returns what was chosen ({} when none is configured)."""
    if not config.operating_point:
        return {}
    name, target = config.operating_point[0]
    probs, labels = [], []
    for images, label_ids in eval_ds.take(eval_steps):  # batched once over the split, then repeated
        probs.append(np.asarray(model(images, training=False), dtype=np.float64))
        labels.append(label_ids.numpy())
    chosen = operating_point.choose(np.concatenate(probs), np.concatenate(labels), list(config.classes), name,
                                    target, config.operating_max_offset)
    operating_point.apply(model, config.classes.index(name), chosen["offset"])
    log.info("operating point for %s: logit offset %.3f (eval recall %s -> %s)", name, chosen["offset"],
             chosen.get("recall_before", {}).get(name), chosen.get("recall_after", {}).get(name))
    return chosen


def _deterministic_gpu_ops() -> None:
    """TF op determinism where it is needed: on GPU (cuDNN's fast convolution and reduction
    kernels add in a nondeterministic order). It is process-global, which is acceptable in this
    stage entry: under KFP the Trainer runs in a process of its own.

    Not on CPU: there the seeded, order-preserving input (trainer/data.py) already gives identical
    weights run after run, at 32 and 224 px (tested, and measured in README); op determinism only
    picked other kernels, and should not change the whole process where it is not needed.
    """
    import tensorflow as tf  # lazy: a Trainer reused from the stage cache never loads TF

    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()


def trained_on(report: dict, resample: dict) -> dict:
    """The sources of the training split and the per-class counts the model was trained on
    (after resampling), from ExampleGen's and Resample's reports."""
    by_source = report.get("by_source", {}).get("train", {})
    return {
        "sources": sorted(src for src, counts in by_source.items() if sum(counts.values()) > 0),
        "counts": {c: int(n) for c, n in resample["counts_after"].items()},
        "by_source": {src: dict(counts) for src, counts in sorted(by_source.items())},
    }


def run_trainer(
    config: PipelineConfig, examples_dir: str, transform_dir: str, resample_dir: str, model_dir: str, run_dir: str
) -> dict:
    """Stage entry: reads the upstream artifacts and calls run_fn."""
    if config.deterministic:
        _deterministic_gpu_ops()
    from cxrflow.stages.example_gen import REPORT_FILE, split_pattern  # lazy: scipy (~1 s), not for a cached Trainer

    report = read_json(os.path.join(examples_dir, REPORT_FILE))
    resample = read_json(os.path.join(resample_dir, RESAMPLE_FILE))
    train_count = sum(resample["counts_after"].values())
    eval_count = sum(report["splits"]["eval"].values())
    if train_count == 0 or eval_count == 0:
        raise ValueError(f"need training and eval examples, got train={train_count} eval={eval_count}: "
                         "add data or lower eval_fraction")
    args = FnArgs(
        train_pattern=train_pattern_for(resample, examples_dir, resample_dir),
        eval_pattern=split_pattern(examples_dir, "eval"),
        transform_output=transform_dir,
        serving_model_dir=model_dir,
        model_run_dir=run_dir,
        train_count=train_count,
        eval_count=eval_count,
        class_weights=resample["class_weights"],
        config=config,
        trained_on=trained_on(report, resample),
        eval_class_counts=dict(report["splits"]["eval"]),
    )
    summary = run_fn(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return summary
