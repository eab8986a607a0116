"""The error gallery: every misclassified test image (the most confident mistakes first, at most
MAX_ERRORS), plus a few correctly classified ones per class for contrast.

The Evaluator writes it into its artifact: `gallery/NN.png` (the image as the model saw it,
beside the same image under its Grad-CAM map) and `gallery.json`, one entry per picture with
its true and predicted class, the probability, source, patient and image id. report.html shows
it as cards, so a reader can see each mistake, not only count it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
from html import escape

import numpy as np

from cxrflow import features as fk
from cxrflow import progress
from cxrflow.config import PipelineConfig
from cxrflow.io_utils import write_json_atomic
from cxrflow.report.gradcam import gradcam_maps, model_view

GALLERY_DIR = "gallery"
GALLERY_JSON = "gallery.json"
MAX_ERRORS = 24  # beyond this, the most confident mistakes: the ones that most need a look
CORRECT_PER_CLASS = 2
PANEL_PX = 160  # each half of a picture; small test images are enlarged to it
HEATMAP_CMAP = "inferno"  # as in gradcam.py: luminance rises with the value, readable in grayscale
HEATMAP_ALPHA = 0.45


def pick_gallery(
    labels: np.ndarray, probs: np.ndarray, max_errors: int = MAX_ERRORS, correct_per_class: int = CORRECT_PER_CLASS
) -> tuple[list[int], list[int], int]:
    """(wrong indices, correct indices, number of wrong in all).

    Wrong: the most confident mistakes first (highest probability of the wrongly predicted
    class), at most `max_errors`. Correct: per true class, its `correct_per_class` most
    confident correct predictions, in class order.
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    if not len(labels):
        return [], [], 0
    preds, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(preds != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    correct = []
    for c in range(probs.shape[1]):
        idx = np.flatnonzero((labels == c) & (preds == c))
        correct += idx[np.argsort(-confidence[idx], kind="stable")][:correct_per_class].tolist()
    return wrong[:max_errors].tolist(), correct, len(wrong)


def _read_images(pattern: str, wanted: set[int], batch_size: int) -> dict[int, tuple[bytes, str]]:
    """{index: (encoded image, image id)} for the wanted test examples, in predict_split's order."""
    import tensorflow as tf  # lazy: the report side of this module must not load TF

    spec = fk.raw_feature_spec((fk.IMAGE_KEY, fk.IMAGE_ID_KEY))
    found, seen = {}, 0
    batches = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))).batch(batch_size)
    for batch in progress.iterate(batches, "test pass: gallery images", unit="batches"):
        parsed = tf.io.parse_example(batch, spec)
        for j, (data, image_id) in enumerate(
            zip(parsed[fk.IMAGE_KEY].numpy(), parsed[fk.IMAGE_ID_KEY].numpy(), strict=True)
        ):
            if seen + j in wanted:
                found[seen + j] = (data, image_id.decode())
        seen += len(parsed[fk.IMAGE_KEY])
    return found


def picture_png(image: np.ndarray, heatmap: np.ndarray | None) -> bytes:
    """The image as the model saw it beside the same image under its heatmap, as PNG bytes."""
    from matplotlib import colormaps  # lazy: the colormap table only, no pyplot
    from PIL import Image  # lazy: `cxrflow --help` imports this module and stays PIL-free

    gray = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    panels = [rgb]
    if heatmap is not None:
        heat = colormaps[HEATMAP_CMAP](np.clip(heatmap, 0, 1))[..., :3]
        panels.append((1 - HEATMAP_ALPHA) * rgb + HEATMAP_ALPHA * heat)
    size = max(PANEL_PX, gray.shape[0])
    images = [Image.fromarray((p * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR) for p in panels]
    canvas = Image.new("RGB", (size * len(images) + 4 * (len(images) - 1), size), "white")
    for k, img in enumerate(images):
        canvas.paste(img, (k * (size + 4), 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def write_gallery(
    config: PipelineConfig,
    model_dir: str,
    test_pattern: str,
    labels: np.ndarray,
    probs: np.ndarray,
    extras: dict,
    output_dir: str,
) -> dict | None:
    """Writes `output_dir/gallery/` and `gallery.json`; returns the JSON written, None on failure.

    `labels`, `probs` and `extras` are the Evaluator's predictions over `test_pattern`, in file
    order. A picture for people: any failure is a warning on stderr, never a failed evaluation.
    """
    try:
        return _write_gallery(
            model_dir,
            test_pattern,
            labels,
            probs,
            extras,
            list(config.classes),
            config.image_size,
            output_dir,
            config.batch_size,
        )
    except Exception as e:
        print(f"cxrflow: warning: error gallery not written: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def _write_gallery(
    model_dir: str,
    test_pattern: str,
    labels: np.ndarray,
    probs: np.ndarray,
    extras: dict,
    classes: list[str],
    image_size: int,
    output_dir: str,
    batch_size: int,
) -> dict:
    import tensorflow as tf  # lazy: the report side of this module must not load TF

    labels, probs = np.asarray(labels), np.asarray(probs)
    wrong, correct, n_wrong = pick_gallery(labels, probs)
    chosen = wrong + correct
    found = _read_images(test_pattern, set(chosen), batch_size)
    encoded = [found[i][0] for i in chosen]
    model = tf.saved_model.load(model_dir)
    has_gradcam = "gradcam" in model.signatures
    maps, map_ids = gradcam_maps(model, encoded) if has_gradcam and encoded else (None, None)
    views = model_view(encoded, image_size)

    tmp_dir = os.path.join(output_dir, GALLERY_DIR + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    blank = [""] * len(labels)
    sources, patients = extras.get(fk.SOURCE_KEY, blank), extras.get(fk.PATIENT_ID_KEY, blank)
    entries = []
    for k, i in enumerate(chosen):
        name = f"{k:03d}.png"
        with open(os.path.join(tmp_dir, name), "wb") as f:
            f.write(picture_png(views[k], None if maps is None else maps[k]))
        pred = int(probs[i].argmax())
        entry = {
            "file": f"{GALLERY_DIR}/{name}",
            "index": int(i),
            "correct": bool(pred == labels[i]),
            "true": classes[labels[i]],
            "predicted": classes[pred],
            "probability": float(probs[i][pred]),
            "true_class_probability": float(probs[i][labels[i]]),
            "source": sources[i],
            "patient_id": patients[i],
            "image_id": found[i][1],
        }
        if map_ids is not None and int(map_ids[k]) != pred:  # with TTA the map explains the single view
            entry["map_class"] = classes[int(map_ids[k])]
        entries.append(entry)
    final = os.path.join(output_dir, GALLERY_DIR)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp_dir, final)
    gallery = {
        "classes": list(classes),
        "n_test": int(len(labels)),
        "n_wrong": n_wrong,
        "shown_wrong": len(wrong),
        "max_errors": MAX_ERRORS,
        "correct_per_class": CORRECT_PER_CLASS,
        "gradcam": maps is not None,
        "entries": entries,
    }
    write_json_atomic(os.path.join(output_dir, GALLERY_JSON), gallery)
    return gallery


# --- report.html ------------------------------------------------------------------------------
CSS = """
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:.8em;margin:.8em 0}
.card{border:3px solid #161;padding:.3em;font-size:.85em;break-inside:avoid}
.card.wrong{border:3px dashed #a00}.card img{width:100%;border:0}
.card .verdict{font-weight:bold}.card .meta{color:#444;word-break:break-all}
"""


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _card(run_dir: str, e: dict) -> str:
    path = os.path.join(run_dir, str(e.get("file", "")))
    try:
        with open(path, "rb") as f:
            img = (
                f'<img alt="{escape(str(e.get("image_id", "")))}" '
                f'src="data:image/png;base64,{base64.b64encode(f.read()).decode("ascii")}">'
            )
    except OSError:
        img = _note(f"{e.get('file')} not found")
    ok = bool(e.get("correct"))
    verdict = "correct" if ok else "WRONG"
    prob = e.get("probability")
    prob_text = f" ({prob:.2f})" if isinstance(prob, (int, float)) else ""
    lines = [
        f'<div class="verdict">{verdict}: true {escape(str(e.get("true")))}, predicted '
        f"{escape(str(e.get('predicted')))}{prob_text}</div>"
    ]
    if not ok and isinstance(e.get("true_class_probability"), (int, float)):
        lines.append(f"<div>probability of the true class: {e['true_class_probability']:.2f}</div>")
    if e.get("map_class"):
        lines.append(f"<div>map of {escape(str(e['map_class']))}, the single-view prediction</div>")
    lines.append(
        f'<div class="meta">source {escape(str(e.get("source") or "(unknown)"))}; patient '
        f"{escape(str(e.get('patient_id') or '(unknown)'))}; {escape(str(e.get('image_id', '')))}</div>"
    )
    return f'<div class="card{"" if ok else " wrong"}">{img}{"".join(lines)}</div>'


def gallery_section(run_dir: str) -> str:
    """The report section: the mistakes, then the correct examples (a note when absent)."""
    path = os.path.join(run_dir, GALLERY_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            gallery = json.load(f)
        entries = [e for e in gallery["entries"] if isinstance(e, dict)]
    except FileNotFoundError:
        return _note(f"{GALLERY_JSON} not found in the run dir (a run from before the gallery, or it failed)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return _note(f"{GALLERY_JSON} could not be read: {e}")
    wrong = [e for e in entries if not e.get("correct")]
    correct = [e for e in entries if e.get("correct")]
    n_wrong, n_test = gallery.get("n_wrong", len(wrong)), gallery.get("n_test", "?")
    intro = f"{n_wrong} of {n_test} test images misclassified"
    if n_wrong > len(wrong):
        intro += f"; shown: the {len(wrong)} most confident mistakes"
    out = [
        f"<style>{CSS}</style>",
        f"<p>{escape(intro)}. Left: the image as the model saw it; right: Grad-CAM "
        "of the predicted class (bright = evidence for it). Dashed red: wrong; solid green: correct.</p>",
    ]
    if not gallery.get("gradcam", True):
        out.append(_note("the model has no gradcam signature: images shown without heatmaps"))
    out.append("<h3>Misclassified</h3>")
    out.append(
        f'<div class="gallery">{"".join(_card(run_dir, e) for e in wrong)}</div>'
        if wrong
        else "<p>No test image was misclassified.</p>"
    )
    out.append("<h3>Correctly classified, for contrast</h3>")
    out.append(
        f'<div class="gallery">{"".join(_card(run_dir, e) for e in correct)}</div>'
        if correct
        else "<p>No test image was classified correctly.</p>"
    )
    return "".join(out)
