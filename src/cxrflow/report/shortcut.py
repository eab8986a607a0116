"""Shortcut checks: is the model reading the lungs, or the file, the border and the source?

Public COVID sets confound the class with the source (DeGrave et al. 2021; Roberts et al. 2021):
every COVID film is an adult from one archive, every normal film a child from another, and file
size, resolution and colour mode differ by class. Two checks run beside the CNN's own metrics:

- Trait probe: a random forest trained on the train split's file traits only (bytes, width,
  height, channels, bit depth, format, mode; no pixels) and scored on the test split with the
  CNN's metrics. A probe that scores near the CNN means the labels are readable without the
  image, so the CNN may be reading them the same way.
- Lungs hidden: the model scores the test images again with the central region (the lung
  fields) replaced by a neutral value. A model that stays well above chance without the lungs
  reads something else: borders, markers, body shape, the source. Grad-CAM's share of
  attention outside that region, per class, is a second signal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrflow import features as fk
from cxrflow.metrics import metrics_from_probabilities
from cxrflow.report.gradcam import gradcam_maps
from cxrflow.stages.transform import decode_batch

TRAIT_INT_KEYS, TRAIT_STR_KEYS = fk.TRAIT_INT_KEYS, fk.TRAIT_STR_KEYS  # ExampleGen's file-trait features
MISSING_INT = -1
PROBE_TREES = 200
GRADCAM_PER_CLASS = 16  # images per true class whose Grad-CAM share is measured (cost: one backward pass each)
# A class called for at least half of a group's other films, seen on at least this many films,
# is named: below it a single film decides the share.
GROUP_CALL_MIN_FILMS = 3
GROUP_CALL_SHARE = 0.5


def read_traits(pattern: str) -> tuple[list[str], list[dict]] | None:
    """(labels, one trait dict per example) from TFRecords; None when the examples carry no traits."""
    import tensorflow as tf  # lazy: `cxrflow --help` imports this module and must not load TF

    spec = {fk.LABEL_KEY: tf.io.FixedLenFeature([], tf.string)}
    spec.update({k: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_INT) for k in TRAIT_INT_KEYS})
    spec.update({k: tf.io.FixedLenFeature([], tf.string, default_value=b"") for k in TRAIT_STR_KEYS})
    files = sorted(tf.io.gfile.glob(pattern))
    labels: list[str] = []
    rows: list[dict] = []
    for batch in tf.data.TFRecordDataset(files).batch(256):
        parsed = {k: v.numpy() for k, v in tf.io.parse_example(batch, spec).items()}
        for i, label in enumerate(parsed[fk.LABEL_KEY]):
            if parsed[fk.TRAIT_BYTES_KEY][i] == MISSING_INT:
                return None  # examples written before ExampleGen recorded file traits
            row: dict[str, float | str] = {k: float(parsed[k][i]) for k in TRAIT_INT_KEYS}
            # Compression per pixel tells a 16-bit PNG from an 8-bit JPEG of the same size.
            pixels = max(1.0, row[fk.TRAIT_WIDTH_KEY] * row[fk.TRAIT_HEIGHT_KEY])
            row["bytes_per_pixel"] = row[fk.TRAIT_BYTES_KEY] / pixels
            row.update({k: parsed[k][i].decode() for k in TRAIT_STR_KEYS})
            labels.append(label.decode())
            rows.append(row)
    return labels, rows


def chance(metrics: dict) -> float:
    """Macro recall of a constant guess: 1 / (number of classes present)."""
    present = [c for c, m in metrics["per_class"].items() if m["support"] > 0]
    return 1.0 / max(1, len(present))


def trait_probe(train_pattern: str, test_pattern: str, classes: Sequence[str], cnn: dict, seed: int,
                margin: float, max_macro_recall: float) -> dict:
    """Scores a file-traits-only random forest; `warning` says when it rivals the CNN `cnn`."""
    from sklearn.ensemble import RandomForestClassifier  # lazy (both): `cxrflow --help` imports this module
    from sklearn.feature_extraction import DictVectorizer

    train, test = read_traits(train_pattern), read_traits(test_pattern)
    if train is None or test is None:
        return {"skipped": "the examples carry no file traits (written before ExampleGen recorded them): "
                           "rerun ExampleGen to get the trait probe"}
    index = {c: i for i, c in enumerate(classes)}
    y_train = np.array([index[c] for c in train[0]])
    y_test = np.array([index[c] for c in test[0]])
    if len(set(y_train)) < 2 or len(y_test) == 0:
        return {"skipped": "the train split holds fewer than two classes or the test split is empty"}
    vectorizer = DictVectorizer(sparse=False)  # strings (format, mode) become one-hot columns
    x_train, x_test = vectorizer.fit_transform(train[1]), vectorizer.transform(test[1])
    # Balanced weights: the probe must find every class, as the CNN is asked to (macro recall).
    forest = RandomForestClassifier(n_estimators=PROBE_TREES, class_weight="balanced", random_state=seed, n_jobs=1)
    forest.fit(x_train, y_train)
    probs = np.zeros((len(y_test), len(classes)))
    probs[:, forest.classes_] = forest.predict_proba(x_test)
    metrics = metrics_from_probabilities(y_test, probs, classes)
    probe, model = metrics["macro_recall"], cnn["macro_recall"]
    importance = dict(zip(vectorizer.get_feature_names_out(), forest.feature_importances_, strict=True))
    result = {
        "model": f"RandomForestClassifier(n_estimators={PROBE_TREES}, class_weight='balanced')",
        "features": sorted(vectorizer.get_feature_names_out().tolist()),
        "importance": {k: round(float(v), 4) for k, v in sorted(importance.items(), key=lambda kv: -kv[1])},
        "train_n": len(y_train),
        "metrics": metrics,
        "cnn_macro_recall": model,
        "thresholds": {"margin": margin, "max_macro_recall": max_macro_recall},
        "warning": None,
    }
    # A probe at chance explains nothing, however poor the CNN is: it must beat chance to count.
    beats_chance = probe > chance(metrics) + margin
    if beats_chance and (probe >= model - margin or probe > max_macro_recall):
        result["warning"] = (
            f"file traits alone (no pixels) score macro recall {probe:.3f} against the model's {model:.3f}: "
            "the labels can be read from the files' size, resolution or encoding, and the model may be "
            "doing just that")
    return result


def central_box(size: int, fraction: float) -> tuple[int, int]:
    """[start, stop) of the central `fraction` of `size` pixels (the same box on both axes)."""
    start = int(round(size * (1 - fraction) / 2))
    return start, max(start + 1, int(round(size * (1 + fraction) / 2)))


def hide_center(images: np.ndarray, fraction: float) -> np.ndarray:
    """[n, H, W] in [0,1] with the central box replaced by each image's mean outside the box.

    The fill carries only what the border already shows, so nothing of the lungs leaks into it.
    """
    out = np.array(images, dtype=np.float32, copy=True)
    (r0, r1), (c0, c1) = central_box(out.shape[1], fraction), central_box(out.shape[2], fraction)
    outside = np.ones(out.shape[1:], bool)
    outside[r0:r1, c0:c1] = False
    for img in out:
        img[r0:r1, c0:c1] = img[outside].mean() if outside.any() else 0.5
    return out


def encode_png16(images: np.ndarray) -> list[bytes]:
    """[n, H, W] in [0,1] -> lossless 16-bit PNGs, which the model's own decoder reads back exactly."""
    import tensorflow as tf  # lazy: `cxrflow --help` imports this module and must not load TF

    wide = np.round(np.clip(images, 0, 1) * 65535).astype(np.uint16)[..., None]
    return [tf.io.encode_png(tf.constant(img)).numpy() for img in wide]


def outside_share(heatmaps: np.ndarray, fraction: float) -> np.ndarray:
    """Per map, the share of its mass outside the central box (NaN for an all-zero map)."""
    maps = np.asarray(heatmaps, dtype=np.float64)
    (r0, r1), (c0, c1) = central_box(maps.shape[1], fraction), central_box(maps.shape[2], fraction)
    total = maps.sum(axis=(1, 2))
    inside = maps[:, r0:r1, c0:c1].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (total - inside) / total, np.nan)


def lungs_hidden(model_dir: str, test_pattern: str, classes: Sequence[str], image_size: int, fraction: float,
                 margin: float, cnn: dict, tta: int = 1, batch_size: int = 32) -> dict:
    """Scores the model on the test split with the lungs hidden, plus Grad-CAM's share outside them.

    The images go through the exported model's own signatures as lossless PNGs at the model's
    input size, so the check sees exactly what TF Serving would and needs no extra signature.
    """
    import tensorflow as tf  # lazy: `cxrflow --help` imports this module and must not load TF

    model = tf.saved_model.load(model_dir)
    # Decode as the model's own transform does (stretch, or letterbox with `pad`): the masked
    # square image then passes its decoder unchanged.
    meta = model.signatures["metadata"]() if "metadata" in model.signatures else {}
    resize_mode = meta["resize_mode"].numpy().decode() if "resize_mode" in meta else "stretch"
    spec = fk.raw_feature_spec((fk.IMAGE_KEY, fk.LABEL_KEY))
    index = {c: i for i, c in enumerate(classes)}
    labels, probs, shares = [], [], {c: [] for c in classes}
    for batch in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(test_pattern))).batch(batch_size):
        raw = tf.io.parse_example(batch, spec)
        ids = [index[v.decode()] for v in raw[fk.LABEL_KEY].numpy()]
        encoded = raw[fk.IMAGE_KEY].numpy()
        view = decode_batch(raw[fk.IMAGE_KEY], image_size, resize_mode).numpy()[..., 0]
        masked = encode_png16(hide_center(view, fraction))
        if tta > 1 and "serving_tta" in model.signatures:
            out = model.signatures["serving_tta"](images=tf.constant(masked), views=tf.constant(tta, tf.int32))
        else:
            out = model.signatures["serving_default"](images=tf.constant(masked))
        probs.append(out["probabilities"].numpy())
        labels.extend(ids)
        if "gradcam" in model.signatures:
            wanted = [j for j, c in enumerate(ids) if len(shares[classes[c]]) + ids[:j].count(c) < GRADCAM_PER_CLASS]
            if wanted:
                maps, _ = gradcam_maps(model, [encoded[j] for j in wanted])
                for j, share in zip(wanted, outside_share(maps, fraction), strict=True):
                    shares[classes[ids[j]]].append(float(share))
    y = np.array(labels, dtype=np.int64)
    metrics = metrics_from_probabilities(y, np.concatenate(probs) if probs else np.zeros((0, len(classes))), classes)
    base = chance(metrics)
    r0, r1 = central_box(image_size, fraction)
    area_outside = 1.0 - ((r1 - r0) / image_size) ** 2
    per_class = {}
    for c in classes:
        m, intact = metrics["per_class"][c], cnn["per_class"][c]
        finite = [s for s in shares[c] if np.isfinite(s)]
        per_class[c] = {
            "support": m["support"],
            "recall_intact": intact["recall"] if intact["support"] else None,
            "recall_lungs_hidden": m["recall"] if m["support"] else None,
            "gradcam_outside_share": float(np.mean(finite)) if finite else None,
            "gradcam_images": len(finite),
        }
    result = {
        "fraction": fraction,
        "fill": "each image's mean outside the hidden box",
        "chance": base,
        "macro_recall_intact": cnn["macro_recall"],
        "macro_recall_lungs_hidden": metrics["macro_recall"],
        "gradcam_area_outside": area_outside,
        "per_class": per_class,
        "confusion_matrix": metrics["confusion_matrix"],
        "margin": margin,
        "warning": None,
    }
    if sum(1 for v in per_class.values() if v["support"]) < 2:
        # A constant guess recalls a lone class perfectly: recall cannot tell a shortcut from it.
        result["note"] = "one class present: the lungs-hidden recall cannot tell a shortcut from a constant guess"
    elif metrics["macro_recall"] >= base + margin:
        result["warning"] = (
            f"with the central {fraction:.0%} of the image (the lung fields) hidden, the model still scores "
            f"macro recall {metrics['macro_recall']:.3f} (chance {base:.3f}): it reads something outside the "
            "lungs, such as borders, markers, body shape or the source")
    # Flagged halfway between an even spread and all weight outside: a diffuse map of a barely
    # trained model sits near the even spread, a corner-marker model's well above it.
    result["gradcam_flag_above"] = flag = (area_outside + 1) / 2
    looking_out = [f"{c} ({v['gradcam_outside_share']:.2f})" for c, v in per_class.items()
                   if v["gradcam_outside_share"] is not None and v["gradcam_outside_share"] > flag]
    if looking_out:
        result["gradcam_note"] = (
            f"Grad-CAM puts most of its weight outside the central box (above {flag:.2f}; an even spread gives "
            f"{area_outside:.2f}) for: {', '.join(looking_out)}")
    return result


def age_group_calls(labels: np.ndarray, probs: np.ndarray, groups: Sequence[str], classes: Sequence[str]) -> dict:
    """Per age group and class: how many films of the other classes were called that class.

    The question the confounded public sets raise: is a healthy adult called COVID for being an
    adult? Overall recall hides it when most non-COVID films are children. A class called for at
    least GROUP_CALL_SHARE of a group's other films (GROUP_CALL_MIN_FILMS or more) is named in
    `warning`.
    """
    predicted = np.asarray(probs).argmax(axis=1) if len(labels) else np.zeros(0, int)
    groups = np.array([g or "(unknown)" for g in groups])
    calls: dict[str, dict] = {}
    named = []
    for group in sorted(set(groups.tolist())):
        in_group = groups == group
        calls[group] = {}
        for i, name in enumerate(classes):
            others = in_group & (np.asarray(labels) != i)
            called = int((predicted[others] == i).sum())
            calls[group][name] = {"other_films": int(others.sum()), "called": called}
            if others.sum() >= GROUP_CALL_MIN_FILMS and called >= GROUP_CALL_SHARE * others.sum():
                named.append(f"{called} of {int(others.sum())} non-{name} films in age group {group} "
                             f"were called {name}")
    warning = None
    if named:
        warning = ("; ".join(named) + ". The model may be reading the patient's age or the source rather than the "
                   "disease: check recall within each age group, and add films of the other classes from that group.")
    return {"calls": calls, "warning": warning}


def warnings(metrics: dict) -> list[str]:
    """Every shortcut warning in a metrics.json, in words."""
    section = metrics.get("shortcut") or {}
    out = [section[k]["warning"] for k in ("trait_probe", "lungs_hidden", "age_groups")
           if isinstance(section.get(k), dict) and section[k].get("warning")]
    note = (section.get("lungs_hidden") or {}).get("gradcam_note")
    return out + ([note] if note else [])


def kfp_metrics(metrics: dict) -> dict[str, float]:
    """The shortcut checks' headline numbers for KFP's Metrics artifact (skipped checks left out)."""
    section = metrics.get("shortcut") or {}
    out = {"shortcut_warnings": float(len(section.get("warnings") or []))}
    probe, hidden = section.get("trait_probe") or {}, section.get("lungs_hidden") or {}
    if probe.get("metrics"):
        out["trait_probe_macro_recall"] = float(probe["metrics"]["macro_recall"])
    if "macro_recall_lungs_hidden" in hidden:
        out["lungs_hidden_macro_recall"] = float(hidden["macro_recall_lungs_hidden"])
    return out


def summary_lines(metrics: dict, with_warnings: bool = True) -> list[str]:
    """The CLI's shortcut lines under the metrics table (the warnings last, unless the caller
    lists them itself)."""
    section = metrics.get("shortcut")
    if not isinstance(section, dict):
        return []
    lines = ["shortcut checks:"]
    probe = section.get("trait_probe") or {}
    if probe.get("skipped"):
        lines.append(f"  trait probe skipped: {probe['skipped']}")
    elif probe:
        per_class = probe["metrics"]["per_class"]
        per = ", ".join(f"{c} {_fmt(per_class[c]['recall'] if per_class[c]['support'] else None)}"
                        for c in metrics["classes"])
        lines.append(f"  trait probe (file traits only, no pixels): macro recall {probe['metrics']['macro_recall']:.3f}"
                     f" vs model {probe['cnn_macro_recall']:.3f}; recall {per}")
    hidden = section.get("lungs_hidden") or {}
    if hidden.get("skipped"):
        lines.append(f"  lungs-hidden test skipped: {hidden['skipped']}")
    elif hidden:
        per = ", ".join(f"{c} {_fmt(hidden['per_class'][c]['recall_lungs_hidden'])}" for c in metrics["classes"])
        lines.append(f"  lungs hidden (central {hidden['fraction']:.0%}): macro recall "
                     f"{hidden['macro_recall_lungs_hidden']:.3f} (chance {hidden['chance']:.3f}); recall {per}")
        if hidden.get("note"):
            lines.append(f"  ({hidden['note']})")
    if with_warnings:
        lines += [f"  WARNING: {w}" for w in warnings(metrics)]
    return lines


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
