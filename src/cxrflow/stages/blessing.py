"""The blessing: may the candidate model replace the one being served?

Two checks on the same test examples:

1. Thresholds, by TFMA. The candidate's and the served model's probabilities are stored side
   by side in one set of prediction examples, and TFMA evaluates them as two models, the
   served one as the baseline (`ModelSpec(is_baseline=True)`). Each gated metric (macro recall,
   and the recall of every class in `min_recall`, all of the argmax prediction) carries a
   `MetricThreshold`: a `GenericValueThreshold` (the floor) and, when a model is being served, a
   `GenericChangeThreshold` (at most `max_regression` worse). `tfma.load_validation_result`
   gives the verdict; the TFMA output stays in `validation/` beside blessing.json.
2. The change, with its uncertainty (`blessing_rule`, default "bootstrap"). With about 15 test
   films per class one film moves a recall by about 0.07, so comparing two point estimates
   against a 0.02 allowance flips on a single film. The paired bootstrap draws test PATIENTS
   with replacement (all films of a drawn patient come along, and both models are scored on
   the same draw) and recomputes each gated metric's drop, served minus candidate. A metric
   fails when the lower one-sided 95% bound of its drop (the 5th percentile) exceeds
   `max_regression`, that is, when we are 95% confident the candidate is worse by more than
   allowed. The value floors still apply to the candidate's point estimates.
   "point" instead blocks on TFMA's change threshold, i.e. on the point estimates.

Rule 2 on a small test set only blocks clear regressions; a tighter gate needs more test
patients, not a stricter rule (a "prove it is not worse" rule would block every retrain, even
an identical model, at this size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from cxrflow import features as fk
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import join, write_json_atomic

BLESSING_FILE = "blessing.json"
VALIDATION_DIR = "validation"
CANDIDATE, BASELINE = "candidate", "baseline"
LABEL_KEY, CANDIDATE_KEY, BASELINE_KEY = "label_id", "candidate_probabilities", "baseline_probabilities"
N_BOOT = 2000
CONFIDENCE = 0.95
_METRICS_MODULE = "cxrflow.stages.tfma_metrics"


def gated(config: PipelineConfig) -> list[tuple[str, int | None, float]]:
    """(name, class id or None for macro recall, floor) for every metric the blessing gates."""
    index = config.class_index()
    return [("macro_recall", None, config.min_macro_recall)] + [
        (f"recall:{name}", index[name], floor) for name, floor in config.min_recall
    ]


def validation_config(config: PipelineConfig, has_baseline: bool):
    """TFMA EvalConfig: the candidate (and the served model as baseline) with MetricThresholds."""
    from tensorflow_model_analysis.proto import config_pb2 as cfg  # lazy: the Evaluator imports this; TFMA only to gate

    models = [CANDIDATE, BASELINE] if has_baseline else [CANDIDATE]
    specs = [cfg.ModelSpec(name=CANDIDATE, label_key=LABEL_KEY, prediction_key=CANDIDATE_KEY)]
    if has_baseline:
        specs.append(cfg.ModelSpec(name=BASELINE, label_key=LABEL_KEY, prediction_key=BASELINE_KEY, is_baseline=True))

    def threshold(floor: float):
        t = cfg.MetricThreshold(value_threshold=cfg.GenericValueThreshold(lower_bound={"value": floor}))
        if has_baseline:
            t.change_threshold.CopyFrom(cfg.GenericChangeThreshold(
                direction=cfg.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -config.max_regression}))
        return t

    metrics_specs = []
    for name, class_id, floor in gated(config):
        args = json.dumps({"name": metric_name(name), "class_id": class_id})
        metric = cfg.MetricConfig(class_name="ArgmaxRecall", module=_METRICS_MODULE, config=args,
                                  threshold=threshold(floor))
        metrics_specs.append(cfg.MetricsSpec(metrics=[metric], model_names=models))
    return cfg.EvalConfig(model_specs=specs, slicing_specs=[cfg.SlicingSpec()], metrics_specs=metrics_specs)


def _write_examples(path: str, labels: np.ndarray, probs: np.ndarray, base_probs: np.ndarray | None) -> None:
    import tensorflow as tf  # lazy: the Evaluator imports this; TF only to gate

    def floats(values) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    with tf.io.TFRecordWriter(path) as writer:
        for i, label in enumerate(labels):
            feature = {LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                       CANDIDATE_KEY: floats(probs[i])}
            if base_probs is not None:
                feature[BASELINE_KEY] = floats(base_probs[i])
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def metric_name(gated_name: str) -> str:
    """TFMA metric names hold no ':' (`recall:covid` -> `recall__covid`)."""
    return gated_name.replace(":", "__")


def _gated_name(key) -> str:
    return key.name.replace("__", ":")


def tfma_validation(config: PipelineConfig, labels, probs, base_probs, output_dir: str,
                    beam_args: Sequence[str] = ()) -> dict:
    """Runs TFMA with the thresholds; {"validation_ok", "values": {metric: {model: value}},
    "failures": [{"metric", "change": bool, "message"}]}."""
    import tensorflow_model_analysis as tfma  # lazy (both): the Evaluator imports this; TFMA and Beam only to gate
    from apache_beam.options.pipeline_options import PipelineOptions

    os.makedirs(output_dir, exist_ok=True)
    data = join(output_dir, "predictions.tfrecord")
    _write_examples(data, labels, probs, base_probs)
    has_baseline = base_probs is not None
    # Model-agnostic models: TFMA reads each model's probabilities from the examples
    # (its prediction_key). Naming both models is what lets TFMA apply change thresholds.
    models = [tfma.types.EvalSharedModel(model_name=name, model_type=tfma.constants.MATERIALIZED_PREDICTION,
                                         is_baseline=name == BASELINE)
              for name in ([CANDIDATE, BASELINE] if has_baseline else [CANDIDATE])]
    tfma.run_model_analysis(eval_shared_model=models if has_baseline else None,
                            eval_config=validation_config(config, has_baseline), data_location=data,
                            output_path=output_dir, pipeline_options=PipelineOptions(list(beam_args)))
    values: dict[str, dict[str, float]] = {}
    for result in tfma.load_metrics(output_dir):
        for kv in result.metric_keys_and_values:
            key = tfma.metrics.MetricKey.from_proto(kv.key)
            name = _gated_name(key)
            if name and not key.is_diff and kv.value.HasField("double_value"):
                values.setdefault(name, {})[key.model_name or CANDIDATE] = kv.value.double_value.value
    validation = tfma.load_validation_result(output_dir)
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            key = tfma.metrics.MetricKey.from_proto(failure.metric_key)
            failures.append({"metric": _gated_name(key), "change": key.is_diff,
                             "message": failure.message})
    return {"validation_ok": bool(validation.validation_ok), "values": values, "failures": failures}


def paired_bootstrap_drops(labels, probs, base_probs, patient_ids: Sequence[str], class_ids: Sequence[int | None],
                           n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, metrics) drops, served minus candidate, of each metric (a class's recall, or
    macro recall for None) on patient resamples shared by both models; NaN where a resample
    holds no film of the class."""
    labels = np.asarray(labels, dtype=np.int64)
    k = np.asarray(probs).shape[1]
    ids = np.asarray(patient_ids).astype(str)
    # A film without a patient id is its own patient (pooling them would tie unrelated films).
    ids = np.where(ids == "", np.char.add("\0film:", np.arange(len(ids)).astype(str)), ids)
    _, patient = np.unique(ids, return_inverse=True)
    n_patients = int(patient.max()) + 1
    positives = np.zeros((n_patients, k))
    np.add.at(positives, patient, np.eye(k)[labels])

    def hits(p) -> np.ndarray:
        out = np.zeros((n_patients, k))
        np.add.at(out, patient, np.eye(k)[labels] * (np.asarray(p).argmax(axis=1) == labels)[:, None])
        return out

    rng = np.random.default_rng(seed)  # local generator: no global RNG state touched
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    multiplicity = np.stack([np.bincount(row, minlength=n_patients) for row in draws]).astype(float)
    pos = multiplicity @ positives
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_c = np.where(pos > 0, (multiplicity @ hits(probs)) / pos, np.nan)
        recall_b = np.where(pos > 0, (multiplicity @ hits(base_probs)) / pos, np.nan)
        drops = recall_b - recall_c
        columns = [np.nanmean(recall_b, axis=1) - np.nanmean(recall_c, axis=1) if c is None else drops[:, c]
                   for c in class_ids]
    return np.stack(columns, axis=1)


def decide(config: PipelineConfig, labels, probs, patient_ids: Sequence[str], output_dir: str,
           base_probs=None, baseline: dict | None = None, beam_args: Sequence[str] = ()) -> dict:
    """The blessing (written to blessing.json): floors and changes by TFMA, changes judged by
    `config.blessing_rule`. `baseline` describes the served model (uri, version) for lineage."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    reasons: list[str] = []
    if base_probs is not None and np.asarray(base_probs).shape != probs.shape:
        reasons.append(f"served model predicts {np.asarray(base_probs).shape[1]} classes, the candidate "
                       f"{probs.shape[1]}: no comparison (the classes changed)")
        base_probs = None
    tfma_result = tfma_validation(config, labels, probs, base_probs, join(output_dir, VALIDATION_DIR),
                                  beam_args or config.beam_args)
    value_failed = {f["metric"] for f in tfma_result["failures"] if not f["change"]}
    change_failed = {f["metric"] for f in tfma_result["failures"] if f["change"]}
    ok = True
    gates = gated(config)
    current = {name: tfma_result["values"][name][CANDIDATE] for name, _, _ in gates}
    for name, _, floor in gates:
        if np.isnan(current[name]):  # TFMA would let NaN pass its lower bound
            ok = False
            reasons.append(f"{name}: the test split holds no film to measure it: cannot check its floor {floor:.3f}")
            continue
        passed = name not in value_failed
        ok &= passed
        reasons.append(f"{name} = {current[name]:.3f} {'>=' if passed else '<'} {floor:.3f}")
    comparison = {}
    if base_probs is None:
        reasons.append("no served baseline model: change threshold not applied (first push)")
    else:
        drops = paired_bootstrap_drops(labels, probs, base_probs, patient_ids, [c for _, c, _ in gates],
                                       seed=config.seed)
        for j, (name, _, _) in enumerate(gates):
            served = tfma_result["values"][name][BASELINE]
            column = drops[:, j][np.isfinite(drops[:, j])]
            lower = float(np.quantile(column, 1 - CONFIDENCE)) if column.size else float("nan")
            upper = float(np.quantile(column, CONFIDENCE)) if column.size else float("nan")
            point_ok = name not in change_failed
            boot_ok = not lower > config.max_regression
            passed = boot_ok if config.blessing_rule == "bootstrap" else point_ok
            ok &= passed
            comparison[name] = {"candidate": current[name], "served": served, "drop": served - current[name],
                                "drop_one_sided_95": [lower, upper], "passed_point": point_ok,
                                "passed_bootstrap": boot_ok, "passed": passed}
            if config.blessing_rule == "bootstrap":
                reasons.append(
                    f"{name} vs served model: {current[name]:.3f} vs {served:.3f}, drop {served - current[name]:+.3f}, "
                    f"95% lower bound {lower:+.3f} ({'within' if passed else 'exceeds'} allowed drop "
                    f"{config.max_regression:.3f})")
            else:
                reasons.append(
                    f"{name} vs served model: {current[name]:.3f} vs {served:.3f} "
                    f"({'within' if passed else 'exceeds'} allowed drop {config.max_regression:.3f})")
    blessing = {
        "blessed": bool(ok), "rule": config.blessing_rule, "reasons": reasons, "gated": current,
        "had_baseline": base_probs is not None, "baseline": baseline, "comparison": comparison,
        "tfma": {**tfma_result, "output": VALIDATION_DIR}, "n_boot": N_BOOT if comparison else 0,
    }
    write_json_atomic(join(output_dir, BLESSING_FILE), blessing)
    return blessing


def bless(config: PipelineConfig, labels, probs, test_pattern: str, output_dir: str,
          baseline_model_dir: str | None = None, baseline: dict | None = None,
          beam_args: Sequence[str] = ()) -> dict:
    """Scores the served model (if any) on the same test examples, then `decide`."""
    from cxrflow.stages.evaluator import predict_split  # lazy: the Evaluator imports this module

    base_probs, patient_ids = None, []
    if baseline_model_dir:
        base_labels, base_probs, extras = predict_split(baseline_model_dir, test_pattern, list(config.classes),
                                                        config.batch_size)
        if not np.array_equal(base_labels, labels):
            raise ValueError("the served model was scored on other test examples than the candidate")
        patient_ids = extras[fk.PATIENT_ID_KEY]
    lineage = {"uri": baseline_model_dir, **(baseline or {})} if baseline_model_dir else None
    return decide(config, labels, probs, patient_ids, output_dir, base_probs, lineage, beam_args)
