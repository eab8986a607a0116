"""Grad-CAM overlays: where in the image the model looked for the class it predicted.

The heatmaps come from the exported model's `gradcam` signature, so the Evaluator, `cxrflow
predict --gradcam` and any TF Serving client see the same maps. Images are shown as the model
saw them (the transform's decode, grayscale and resize), so a heatmap lies exactly over the
pixels it was computed from. A map lit up outside the lungs (labels, borders, devices) is the
classic sign of a shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrflow.io_utils import write_bytes_atomic
from cxrflow.report.plots import _png, _pyplot
from cxrflow.stages.transform import decode_batch

PER_KIND = 2  # correctly and wrongly classified examples per class in the Evaluator's grid
# Perceptually uniform with luminance rising with the value: the map reads in grayscale too,
# unlike jet.
HEATMAP_CMAP = "inferno"
HEATMAP_ALPHA = 0.45


def pick_examples(labels: np.ndarray, probs: np.ndarray, num_classes: int,
                  per_kind: int = PER_KIND) -> list[list[tuple[int, bool]]]:
    """Per true class, up to `per_kind` correct then `per_kind` wrong (index, correct) pairs.

    The most confident ones first: a confident mistake is the most instructive to look at.
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    preds = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    rows = []
    for c in range(num_classes):
        row = []
        for correct in (True, False):
            idx = np.flatnonzero((labels == c) & ((preds == c) == correct))
            idx = idx[np.argsort(-confidence[idx], kind="stable")][:per_kind]
            row += [(int(i), correct) for i in idx]
        rows.append(row)
    return rows


def model_view(images: Sequence[bytes], image_size: int) -> np.ndarray:
    """Encoded images -> [n, size, size] in [0,1], decoded exactly as the model's transform does."""
    import tensorflow as tf  # lazy: `cxrflow --help` imports this module (via report.shortcut)

    if not images:
        return np.zeros((0, image_size, image_size), np.float32)
    return decode_batch(tf.constant(list(images), tf.string), image_size).numpy()[..., 0]


def gradcam_maps(model, images: Sequence[bytes], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps [n, H, W], predicted class ids [n]) from a loaded SavedModel's `gradcam` signature."""
    import tensorflow as tf  # lazy: `cxrflow --help` imports this module (via report.shortcut)

    signature = model.signatures["gradcam"]
    maps, ids = [], []
    for start in range(0, len(images), batch_size):
        out = signature(images=tf.constant(list(images[start:start + batch_size]), tf.string))
        maps.append(out["heatmap"].numpy())
        ids.append(out["class_id"].numpy())
    if not maps:
        return np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(maps), np.concatenate(ids)


def _overlay(ax, image: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(heatmap, cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=HEATMAP_ALPHA)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_png(image: np.ndarray, heatmap: np.ndarray, title: str) -> bytes:
    """One image with its heatmap beside the plain image, so what lies under the map stays visible."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("image as the model sees it", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    _overlay(axes[1], image, heatmap, "Grad-CAM")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def gradcam_grid_png(rows: list[list[tuple[int, bool]]], images: dict[int, np.ndarray],
                     heatmaps: dict[int, np.ndarray], labels: np.ndarray, preds: np.ndarray,
                     classes: Sequence[str], map_class: dict[int, int] | None = None) -> bytes:
    """One row per true class: its correct examples, then its wrong ones (see pick_examples).

    `map_class`: the class each map explains, when it may differ from `preds` (with TTA the
    Evaluator's prediction averages views, while Grad-CAM explains the single view).
    """
    plt = _pyplot()
    cols = max([len(r) for r in rows] + [1])
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.9 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                if c == len(row) and row and all(ok for _, ok in row):  # say why the cell is empty
                    ax.text(0.5, 0.5, "no wrongly\nclassified images", ha="center", va="center",
                            transform=ax.transAxes, fontsize=9)
                continue
            i, correct = row[c]
            verdict = "correct" if correct else "WRONG"
            title = f"{verdict}\ntrue {classes[labels[i]]} / pred {classes[preds[i]]}"
            if map_class is not None and map_class.get(i, preds[i]) != preds[i]:
                title += f"\n(map of {classes[map_class[i]]}, the single-view prediction)"
            _overlay(ax, images[i], heatmaps[i], title)
        if not row:
            axes[r][0].text(0.5, 0.5, f"no test images of {classes[r]}", ha="center", va="center")
    fig.suptitle("Grad-CAM of the predicted class (bright = evidence for it), test split", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def write_gradcam_grid(model, pick: list[list[tuple[int, bool]]], encoded: dict[int, bytes], labels: np.ndarray,
                       probs: np.ndarray, classes: Sequence[str], image_size: int, path: str) -> None:
    """Computes the chosen images' Grad-CAM maps and writes the grid PNG to `path`."""
    order = sorted(encoded)
    maps, ids = gradcam_maps(model, [encoded[i] for i in order])
    views = model_view([encoded[i] for i in order], image_size)
    preds = np.asarray(probs).argmax(axis=1)
    png = gradcam_grid_png(pick, dict(zip(order, views, strict=True)), dict(zip(order, maps, strict=True)),
                           np.asarray(labels), preds, classes, dict(zip(order, ids.tolist(), strict=True)))
    write_bytes_atomic(path, png)
