"""report.html: one self-contained page per run (images inlined as base64 data URIs).

Built from the headline files of a finished run dir, so it can be rebuilt at any time
(`cxrflow report RUN_DIR`) without the pipeline. Only metrics.json is required; every other
input that is missing or unreadable becomes a visible note in its section, not a crash. Every
string that comes from data files is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from collections.abc import Iterable, Sequence
from html import escape

from cxrflow.io_utils import write_text_atomic
from cxrflow.report import GRADCAM_PNG, REPORT_FILE, ROC_PNG, TSNE_JSON, TSNE_PNG, shortcut_html
from cxrflow.report.gallery import gallery_section
from cxrflow.report.plots import roc_png_from_saved_predictions, training_curves_png

CONFUSION_PNG = "confusion_matrix.png"
SECTIONS = (
    ("external", "External evaluation"),
    ("blessing", "Blessing decision"),
    ("data", "Data"),
    ("training", "Training"),
    ("metrics", "Test metrics"),
    ("shortcut", "Shortcut checks: file traits and lungs hidden"),
    ("age", "Recall within each age group"),
    ("slices", "Slices"),
    ("confusion", "Confusion matrix"),
    ("gallery", "Error gallery: the mistakes themselves"),
    ("roc", "ROC curves"),
    ("tsne", "t-SNE of the test embeddings: disease or dataset?"),
    ("gradcam", "Grad-CAM: where the model looked"),
)
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#111;background:#fff;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #333;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #999;padding:.25em .6em;text-align:right}th{background:#eee}
td.t,th:first-child{text-align:left}
.note{background:#fff7d6;border-left:4px solid #c90;padding:.4em .8em}
.blessed{font-size:1.3em;font-weight:bold;border:3px solid #161;padding:.3em .8em;display:inline-block}
.not-blessed{font-size:1.3em;font-weight:bold;border:3px dashed #a00;padding:.3em .8em;display:inline-block}
img{max-width:100%;border:1px solid #ccc}.meta{color:#444}
"""


def _load_json(run_dir: str, name: str) -> tuple[object | None, str | None]:
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        return None, f"{name} not found in the run dir"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"{name} could not be read: {e}"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)

    # Numbers right-aligned (they compare down a column), names left-aligned.
    def cell(c: object) -> str:
        text = str(c)
        numeric = text[:1].isdigit() or text[:1] in ("-", "")  # "-": a missing number
        return f"<td>{escape(text)}</td>" if numeric else f'<td class="t">{escape(text)}</td>'

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _with_ci(value: object, ci: object) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"{_num(value)} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return _num(value)


def _blessing_section(run_dir: str) -> str:
    blessing, note = _load_json(run_dir, "blessing.json")
    if not isinstance(blessing, dict):
        return _note(note or "blessing.json has an unexpected layout")
    ok = bool(blessing.get("blessed"))
    verdict = (
        f'<p class="{"blessed" if ok else "not-blessed"}">'
        f"{'BLESSED: eligible to be pushed' if ok else 'NOT BLESSED: not pushed'}</p>"
    )
    reasons = "".join(f"<li>{escape(str(r))}</li>" for r in blessing.get("reasons", []))
    baseline = "compared with the served model" if blessing.get("had_baseline") else "no served baseline model"
    return f"{verdict}<p>Reasons ({escape(baseline)}):</p><ul>{reasons}</ul>"


def _data_section(run_dir: str) -> str:
    report, note = _load_json(run_dir, "ingest_report.json")
    if not isinstance(report, dict):
        return _note(note or "ingest_report.json has an unexpected layout")
    classes = [str(c) for c in report.get("classes", [])]
    by_source = report.get("by_source", {}) or {}
    if not classes:  # older reports: take the classes from the counts themselves
        classes = sorted({c for s in by_source.values() for cnt in s.values() for c in cnt})
    rows = []
    # JSON files are written with sorted keys: put the splits back in pipeline order.
    order = {"train": 0, "eval": 1, "test": 2}
    for split, sources in sorted(by_source.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])):
        for source, counts in (sources or {}).items():
            values = [int(counts.get(c, 0)) for c in classes]
            rows.append([split, source, *values, sum(values)])
    out = ["<h3>Images per split, source and class (after exclusions and deduplication)</h3>"]
    out.append(_table(["split", "source", *classes, "total"], rows) if rows else _note("no by_source counts"))
    sources = report.get("sources", {}) or {}
    reasons = sorted({r for s in sources.values() for r in (s.get("excluded") or {})})
    ex_rows = [
        [
            name,
            s.get("rows", "-"),
            sum((s.get("kept") or {}).values()),
            *[(s.get("excluded") or {}).get(r, 0) for r in reasons],
            sum((s.get("excluded") or {}).values()),
        ]
        for name, s in sources.items()
    ]
    out.append("<h3>Exclusions per source</h3>")
    out.append(
        _table(["source", "rows", "kept", *reasons, "excluded"], ex_rows)
        if ex_rows
        else _note("no per-source information")
    )
    out.append(
        f'<p class="meta">duplicates removed: {escape(str(report.get("duplicates_removed", "-")))}; '
        f"patients crossing splits: {escape(str(report.get('patient_overlap', '-')))}</p>"
    )
    out.append(_confounding_html(report))
    return "".join(out)


def _confounding_html(report: dict) -> str:
    """ExampleGen's confounding section (stages/confounding.py): Cramér's V, age mix, warnings."""
    conf = report.get("confounding")
    if not isinstance(conf, dict):
        return ""  # an ingest report written before ExampleGen measured confounding
    out = ["<h3>Confounding: what besides the disease tells the classes apart</h3>"]
    if report.get("test_source"):
        out.append(f'<p class="meta">test split: every image of {escape(str(report["test_source"]))} '
                   "(external validation)</p>")
    out.append(f'<p class="meta">Cramér\'s V between class and source: {escape(_num(conf.get("cramers_v"), 2))} '
               "(0: independent; 1: the source gives the class away)</p>")
    mix, distance = conf.get("age_mix") or {}, conf.get("age_mix_distance") or {}
    rows = [[c, *(f"{m.get(g, 0):.0%}" for g in ("child", "adult", "unknown")), _num(distance.get(c), 2)]
            for c, m in mix.items()]
    if rows:
        out.append(_table(["class", "child", "adult", "unknown age", "distance from the other classes' mix"], rows))
    out.extend(_note(str(w)) for w in conf.get("warnings") or [])
    return "".join(out)


def _training_section(run_dir: str) -> str:
    summary, note = _load_json(run_dir, "training_summary.json")
    if not isinstance(summary, dict):
        return _note(note or "training_summary.json has an unexpected layout")
    history = [h for h in summary.get("history") or [] if isinstance(h, dict)]
    facts = ", ".join(
        f"{k}: {summary[k]}" for k in ("model", "epochs_run", "train_count", "eval_count") if k in summary
    )
    phases: dict[str, int] = {}  # epochs per phase, in training order (head, then fine-tune)
    for h in history:
        phases[str(h.get("phase", "train"))] = phases.get(str(h.get("phase", "train")), 0) + 1
    if len(phases) > 1:
        facts += "; phases: " + ", ".join(f"{name} ({n} epochs)" for name, n in phases.items())
    out = [f'<p class="meta">{escape(facts)}</p>' if facts else ""]
    out.extend(_note(str(w)) for w in summary.get("warnings") or [])
    if not history:
        out.append(_note("training_summary.json has no per-epoch history: no training curves"))
    else:
        out.append(_img(training_curves_png(history), "training and validation loss and accuracy per epoch"))
    return "".join(out)


def _metrics_section(metrics: dict) -> str:
    ci = metrics.get("ci95") or {}
    out = [
        f"<p>n = {escape(str(metrics.get('n', '-')))} test images; accuracy {_num(metrics.get('accuracy'))}; "
        f"macro recall {_num(metrics.get('macro_recall'))}</p>"
    ]
    rows = []
    per_class = metrics.get("per_class") or {}
    for name in [c for c in metrics.get("classes", []) if c in per_class] or list(per_class):
        m, c = per_class[name], ci.get(name) or {}
        rows.append(
            [
                name,
                _num(m.get("precision")),
                _with_ci(m.get("recall"), c.get("recall")),
                _with_ci(m.get("specificity"), c.get("specificity")),
                _num(m.get("f1")),
                _num(m.get("auc")),
                m.get("support", "-"),
            ]
        )
    out.append(
        _table(
            ["class", "precision", "recall (sensitivity) [95% CI]", "specificity [95% CI]", "F1", "AUC", "support"],
            rows,
        )
    )
    out.append(
        '<p class="meta">95% CIs: percentile bootstrap resampling patients (all images of a drawn patient '
        "together). A zero-width interval means every resample agreed, which with few patients is not "
        "certainty.</p>"
        if ci
        else _note("metrics.json has no ci95: confidence intervals not available")
    )
    return "".join(out)


def _slices_section(run_dir: str, classes: Sequence[str]) -> str:
    slices, note = _load_json(run_dir, "slices.json")
    if not isinstance(slices, dict):
        return _note(note or "slices.json has an unexpected layout")
    rows = []
    for name, m in sorted(slices.items(), key=lambda kv: (kv[0] != "overall", kv[0])):
        m = m if isinstance(m, dict) else {}
        per = m.get("per_class") or {}
        support = {c: (per.get(c) or {}).get("support", 0) for c in classes}
        # A class absent from the slice has no recall (metrics.json stores 0 there): show "-".
        recalls = [f"{_num(per[c].get('recall')) if support[c] else '-'} (n={support[c]})" for c in classes]
        rows.append([name, m.get("n", "-"), _num(m.get("accuracy")), _num(m.get("macro_recall")), *recalls])
    header = ["slice", "n", "accuracy", "macro recall", *[f"recall {c}" for c in classes]]
    return _table(header, rows) if rows else _note("slices.json is empty")


def _png_section(run_dir: str, name: str, alt: str, fallback=None) -> str:
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return _img(f.read(), alt)
    if fallback is not None:
        png = fallback()
        if png:
            return _img(png, alt) + _note(f"{name} not found: redrawn from the saved test predictions")
    return _note(f"{name} not found in the run dir")


def _tsne_section(run_dir: str) -> str:
    info, note = _load_json(run_dir, TSNE_JSON)
    text = info.get("note") if isinstance(info, dict) else None
    # The source warning gets the note box: it questions every number above it.
    flagged = isinstance(info, dict) and info.get("sources_separate_more_than_classes")
    if not text:
        words = _note(note or f"{TSNE_JSON} has no note")
    else:
        words = _note(str(text)) if flagged else f"<p>{escape(str(text))}</p>"
    return words + _png_section(run_dir, TSNE_PNG, "t-SNE of the test embeddings, by class and by source")


def render_report(run_dir: str) -> str:
    """The report's HTML text for `run_dir` (raises FileNotFoundError without metrics.json)."""
    if not os.path.exists(os.path.join(run_dir, "metrics.json")):
        raise FileNotFoundError(f"{run_dir} has no metrics.json: not a finished run dir")
    metrics, note = _load_json(run_dir, "metrics.json")
    if not isinstance(metrics, dict):
        raise ValueError(note or "metrics.json has an unexpected layout")
    classes = [str(c) for c in metrics.get("classes", [])]
    external = isinstance(metrics.get("external"), dict)
    bodies = {
        "external": shortcut_html.external_section(metrics),
        "shortcut": shortcut_html.shortcut_section(metrics),
        "age": shortcut_html.age_section(metrics),
        # An external evaluation trains nothing and blesses nothing.
        "blessing": None if external else _blessing_section(run_dir),
        "training": None if external else _training_section(run_dir),
        "data": _data_section(run_dir),
        "metrics": _metrics_section(metrics),
        "slices": _slices_section(run_dir, classes),
        "confusion": _png_section(run_dir, CONFUSION_PNG, "confusion matrix, counts and row-normalised"),
        "gallery": gallery_section(run_dir),
        "roc": _png_section(
            run_dir,
            ROC_PNG,
            "one-vs-rest ROC curves per class",
            lambda: roc_png_from_saved_predictions(run_dir, classes),
        ),
        "tsne": _tsne_section(run_dir),
        "gradcam": '<p class="meta">Per class: the most confident correct, then wrong, test predictions; '
        "bright = evidence for the predicted class.</p>"
        + _png_section(run_dir, GRADCAM_PNG, "Grad-CAM overlays of correct and wrong test predictions"),
    }
    config, _ = _load_json(run_dir, "run_config.json")
    facts = ""
    if isinstance(config, dict):
        facts = ", ".join(f"{k}: {config[k]}" for k in ("model", "image_size", "epochs", "seed") if k in config)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    shown = [(key, title) for key, title in SECTIONS if bodies[key] is not None]
    toc = " | ".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in shown)
    sections = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{bodies[key]}</section>' for key, title in shown)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>cxrflow report: {escape(os.path.basename(os.path.abspath(run_dir)))}</title>"
        f"<style>{CSS}</style></head><body>"
        f'<h1>cxrflow run report</h1><p class="meta">run dir {escape(os.path.abspath(run_dir))}; '
        f"classes {escape(', '.join(classes))}; {escape(facts)}{'; ' if facts else ''}built {now}</p>"
        f"<nav>{toc}</nav>{sections}</body></html>\n"
    )


def build_report(run_dir: str) -> str:
    """Writes `run_dir`/report.html atomically and returns its path."""
    path = os.path.join(run_dir, REPORT_FILE)
    write_text_atomic(path, render_report(run_dir))
    return path
