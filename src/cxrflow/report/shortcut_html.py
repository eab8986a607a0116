"""report.html sections for trustworthy evaluation: external evaluation, recall within each age
group, and the shortcut checks (trait probe, lungs hidden, Grad-CAM outside the lungs).

Each builder takes metrics.json's content and returns an HTML fragment, or None when the run
has no such section (an external evaluation has no blessing; a run has no `external`).
"""

from __future__ import annotations

from html import escape

# Module import (not `from ... import name`): html.py imports this module in turn.
from cxrflow.report import html as page


def external_section(metrics: dict) -> str | None:
    ext = metrics.get("external")
    if not isinstance(ext, dict):
        return None
    present = ext.get("classes_present") or []
    absent = [c for c in metrics.get("classes", []) if c not in present]
    rows = [["model", ext.get("model_dir", "-")],
            ["trained on", ext.get("trained_on_text") or "not recorded"],
            ["evaluated on", ", ".join(ext.get("data") or []) or "-"],
            ["classes present", ", ".join(present) or "-"],
            ["classes absent", ", ".join(absent) or "none"]]
    return page._note(str(ext.get("note", "External evaluation."))) + page._table(["", ""], rows)


def _ci_cell(value: object, ci: object, support: int) -> str:
    return f"{page._with_ci(value, ci)} (n={support})" if value is not None else f"- (n={support})"


def age_section(metrics: dict) -> str | None:
    groups = metrics.get("by_age_group")
    if not isinstance(groups, dict) or not groups:
        return None
    classes = [str(c) for c in metrics.get("classes", [])]
    rec_rows, spec_rows = [], []
    for group, g in groups.items():
        per = g.get("per_class") or {}
        cells = [per.get(c) or {} for c in classes]
        rec_rows.append([group, g.get("n", "-"), *[
            _ci_cell(m.get("recall"), m.get("recall_ci95"), m.get("support", 0)) for m in cells]])
        spec_rows.append([group, g.get("n", "-"), *[
            _ci_cell(m.get("specificity"), m.get("specificity_ci95"), g.get("n", 0) - m.get("support", 0))
            for m in cells]])
    return (
        '<p class="meta">Where age and class are confounded in the public sets, the overall numbers hide '
        "the question that matters: is a healthy adult called COVID? Each cell: the point estimate "
        "[95% patient-bootstrap CI] (n = images of that class in the group, or of the other classes for "
        "specificity). With few images the intervals are wide.</p>"
        + page._table(["age group", "n", *[f"recall {c}" for c in classes]], rec_rows)
        + page._table(["age group", "n", *[f"specificity {c}" for c in classes]], spec_rows))


def shortcut_section(metrics: dict) -> str | None:
    section = metrics.get("shortcut")
    if not isinstance(section, dict):
        return None
    out = [page._note(f"Warning: {w}") for w in section.get("warnings") or []]
    if not out:
        out.append("<p>No shortcut warning: file traits alone do not rival the model, and it falls to chance "
                   "with the lungs hidden.</p>")
    out.append("<h3>Trait probe: the labels from file traits alone (no pixels)</h3>")
    out.append(_probe(section.get("trait_probe") or {}, metrics))
    out.append("<h3>Lungs hidden: the model with the central region replaced</h3>")
    out.append(_hidden(section.get("lungs_hidden") or {}, metrics))
    return "".join(out)


def _in_class_order(per_class: dict, metrics: dict) -> list[tuple[str, dict]]:
    """metrics.json is written with sorted keys: put the classes back in the model's order."""
    order = [c for c in metrics.get("classes", []) if c in per_class]
    return [(c, per_class[c]) for c in order + sorted(set(per_class) - set(order))]


def _probe(probe: dict, metrics: dict) -> str:
    if probe.get("skipped") or not probe.get("metrics"):
        return page._note(f"not run: {probe.get('skipped', 'no result')}")
    pm, cnn = probe["metrics"], metrics.get("per_class") or {}
    rows = []
    for c, m in _in_class_order(pm["per_class"], metrics):
        support = m.get("support", 0)
        model = (cnn.get(c) or {}).get("recall")
        rows.append([c, page._num(model) if support else "-", page._num(m.get("recall")) if support else "-",
                     support])
    rows.append(["macro recall", page._num(probe.get("cnn_macro_recall")), page._num(pm.get("macro_recall")), ""])
    ranked = sorted((probe.get("importance") or {}).items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{k} {v:.2f}" for k, v in ranked[:5])
    return (
        f'<p class="meta">{escape(str(probe.get("model", "")))} trained on the train split\'s file traits '
        f"({probe.get('train_n', '-')} images) and scored on the test split. Warns when it comes within "
        f"{probe['thresholds']['margin']:.2f} of the model's macro recall or exceeds "
        f"{probe['thresholds']['max_macro_recall']:.2f} (and beats chance by the margin).</p>"
        + page._table(["class", "model recall", "trait probe recall", "support"], rows)
        + (f'<p class="meta">Most used traits: {escape(top)}</p>' if top else ""))


def _hidden(hidden: dict, metrics: dict) -> str:
    if hidden.get("skipped") or not hidden.get("per_class"):
        return page._note(f"not run: {hidden.get('skipped', 'no result')}")
    rows = []
    for c, v in _in_class_order(hidden["per_class"], metrics):
        share = v.get("gradcam_outside_share")
        rows.append([c, v.get("support", 0), page._num(v.get("recall_intact")),
                     page._num(v.get("recall_lungs_hidden")),
                     f"{share:.2f} ({v.get('gradcam_images', 0)} images)" if share is not None else "-"])
    rows.append(["macro recall", "", page._num(hidden.get("macro_recall_intact")),
                 page._num(hidden.get("macro_recall_lungs_hidden")), ""])
    text = (
        f"The central {hidden['fraction']:.0%} of width and height (the lung fields) is filled with "
        f"{escape(str(hidden.get('fill', 'a neutral value')))}, and the model scores the test images again "
        f"through its serving signature. Chance is {hidden['chance']:.3f}; the test warns at "
        f"{hidden['chance'] + hidden['margin']:.3f} or more. Grad-CAM share outside: the part of each "
        f"map's weight outside the box (an even spread gives {hidden['gradcam_area_outside']:.2f}; flagged above "
        f"{hidden.get('gradcam_flag_above', 1):.2f}).")
    note = "".join(page._note(hidden[k]) for k in ("note", "gradcam_note") if hidden.get(k))
    return (f'<p class="meta">{text}</p>'
            + page._table(["class", "support", "recall", "recall, lungs hidden", "Grad-CAM share outside"], rows)
            + note)
