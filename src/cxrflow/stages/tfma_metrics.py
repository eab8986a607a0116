"""TFMA metrics for the blessing: argmax recall of one class, and macro recall.

TFMA's own `Recall` computes one class's argmax recall (`top_k: 1` with `binarize.class_ids`),
but in TFMA 0.52 neither a threshold nor the macro aggregation finds that key: thresholds are
registered under the class-id-only sub-key, so validation reports "Metric not found", and the
macro average looks for the same missing keys and fails. These metrics derive both numbers
from TFMA's multi-class confusion matrix at threshold 0.0 (every example counted under its
argmax: the matrix metrics.json comes from), so TFMA's `MetricThreshold` (value and change
thresholds) applies to them like to any metric.

Imported by name only, by TFMA (`MetricConfig(module=..., class_name="MacroRecall")`), so the
top-level tensorflow_model_analysis import costs nothing elsewhere.
"""

from __future__ import annotations

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util, multi_class_confusion_matrix_metrics

MACRO_RECALL_NAME = "macro_recall"


def recall_from_matrix(entries: dict, class_id: int | None = None) -> float:
    """{MatrixEntryKey(actual, predicted): count} -> the recall of `class_id`, or (None) the
    mean recall over the classes that have examples. NaN when there is nothing to recall."""
    support: dict[int, float] = {}
    hits: dict[int, float] = {}
    for key, count in entries.items():
        support[key.actual_class_id] = support.get(key.actual_class_id, 0.0) + count
        if key.actual_class_id == key.predicted_class_id:
            hits[key.actual_class_id] = hits.get(key.actual_class_id, 0.0) + count
    wanted = support if class_id is None else {class_id: support.get(class_id, 0.0)}
    recalls = [hits.get(c, 0.0) / n for c, n in wanted.items() if n > 0]
    return float(sum(recalls) / len(recalls)) if recalls else float("nan")


def _argmax_recall(
    name: str = MACRO_RECALL_NAME, class_id: int | None = None, eval_config=None, model_name: str = "",
    output_name: str = "", example_weighted: bool = False,
) -> metric_types.MetricComputations:
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                 example_weighted=example_weighted)
    computations = multi_class_confusion_matrix_metrics.multi_class_confusion_matrices(
        thresholds=[0.0], eval_config=eval_config, model_name=model_name, output_name=output_name,
        example_weighted=example_weighted,
    )
    matrices_key = computations[-1].keys[-1]

    def result(metrics: dict) -> dict:
        matrices = metrics[matrices_key]
        return {key: recall_from_matrix(matrices[next(iter(matrices))], class_id)}

    computations.append(metric_types.DerivedMetricComputation(keys=[key], result=result))
    return computations


class ArgmaxRecall(tfma.metrics.Metric):
    """Recall of the argmax prediction: of class `class_id`, or (None) the unweighted mean over
    the classes that have examples (macro recall)."""

    def __init__(self, name: str = MACRO_RECALL_NAME, class_id: int | None = None):
        super().__init__(metric_util.merge_per_key_computations(_argmax_recall), name=name, class_id=class_id)


metric_types.register_metric(ArgmaxRecall)
