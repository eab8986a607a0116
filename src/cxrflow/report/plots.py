"""ROC curves and training curves as PNGs, readable in grayscale print.

Every series differs by line style and marker, not only by colour, so a black-and-white printout
(or a colour-blind reader) still tells the classes apart.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Mapping, Sequence

import numpy as np

from cxrflow.io_utils import write_bytes_atomic

LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")


def _pyplot():
    import matplotlib  # lazy (with pyplot below): `cxrflow --help` imports this module

    # Agg: no display on pipeline workers or CI; set before pyplot is first imported.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(i: int) -> dict:
    return {"linestyle": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)]}


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()


def roc_png(labels, probabilities, classes: Sequence[str]) -> bytes:
    """One-vs-rest ROC curve per class, AUC in the legend, as PNG bytes."""
    from sklearn.metrics import roc_auc_score, roc_curve  # lazy: `cxrflow --help` imports this module

    plt = _pyplot()
    labels = np.asarray(labels)
    probs = np.asarray(probabilities, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=1, linestyle=(0, (2, 2)), label="chance")
    for i, name in enumerate(classes):
        positives = labels == i
        if not 0 < positives.sum() < len(labels):
            # A ROC curve needs both positives and negatives; say so instead of drawing nothing.
            ax.plot([], [], color="black", label=f"{name} (no ROC: single-class test set)", **_style(i))
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, i])
        auc = roc_auc_score(positives, probs[:, i])
        # ~12 markers per curve: enough to identify it in print without hiding the line.
        ax.plot(
            fpr,
            tpr,
            color=f"C{i}",
            linewidth=1.8,
            markevery=max(len(fpr) // 12, 1),
            markersize=5,
            label=f"{name} (AUC = {auc:.3f})",
            **_style(i),
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class vs the rest (test split)")
    ax.grid(True, color="0.9")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def plot_roc(labels, probabilities, classes: Sequence[str], path: str) -> str:
    """Writes the ROC PNG to `path` atomically (temp file + rename); returns `path`."""
    write_bytes_atomic(path, roc_png(labels, probabilities, classes))
    return path


def roc_png_from_saved_predictions(run_dir: str, classes: Sequence[str]) -> bytes | None:
    """ROC PNG from the Evaluator's predictions.npz, for runs that predate roc_curves.png.

    Looks beside `run_dir` (an evaluation artifact dir) and then in the newest local pipeline run
    under `run_dir`/pipeline_root; None when neither holds one.
    """
    pattern = os.path.join(run_dir, "pipeline_root", "*", "evaluator", "evaluation", "predictions", "predictions.npz")
    candidates = [os.path.join(run_dir, "predictions", "predictions.npz")]
    candidates += sorted(glob.glob(pattern), key=os.path.getmtime, reverse=True)
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
        return None
    with np.load(path) as data:
        return roc_png(data["labels"], data["probabilities"], classes)


def training_curves_png(history: Sequence[Mapping[str, float]]) -> bytes:
    """Loss and accuracy per epoch (train solid, validation dashed) from training_summary's history.

    Epochs are numbered across phases (head, then fine-tune), with a vertical line where a new
    phase starts, since each phase restarts its own epoch count.
    """
    plt = _pyplot()
    x = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for j, (key, label) in enumerate(((metric, "train"), (f"val_{metric}", "validation"))):
            y = np.array(
                [h.get(key, np.nan) if isinstance(h.get(key), (int, float)) else np.nan for h in history], dtype=float
            )
            if np.isfinite(y).any():
                ax.plot(x, y, color=f"C{j}", label=label, markersize=4, **_style(j))
        phases = [h.get("phase") for h in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="0.5", linewidth=1, linestyle=":")
                ax.text(i + 0.6, 0.98, str(phases[i]), transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(True, color="0.9")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.tight_layout()
    return _png(fig)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str) -> str:
    write_bytes_atomic(path, training_curves_png(history))
    return path
