"""What a stage's artifacts and log say, in a line: the key figure of a finished stage, the
reason a failed one gave, and the warnings a reader must not miss at the end of a run.

Read from files only (JSON artifacts, the stage's log), tolerant of layouts from other
versions: a missing or unexpected file means saying less, never failing the run.
"""

from __future__ import annotations

import glob
import json
import os
import re

from cxrflow import features as fk

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Failed)\w*)(?::\s*(.*))?$")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _find(task_dir: str, name: str) -> dict | None:
    """A JSON file in one of the task's output artifacts (whatever the artifact is called)."""
    for path in sorted(glob.glob(os.path.join(task_dir, "*", name))):
        data = _read_json(path)
        if data is not None:
            return data
    return None


def key_figure(task: str, task_dir: str) -> str:
    """A finished stage's headline, read from its artifacts ("" when it has none to show)."""
    try:
        return _KEY_FIGURES.get(task, lambda _d: "")(task_dir)
    except (KeyError, TypeError, ValueError, IndexError):  # a layout from another version: say nothing
        return ""


def _example_gen_figure(task_dir: str) -> str:
    report = _find(task_dir, "ingest_report.json")
    if not report:
        return ""
    # JSON keys come back sorted: pipeline order instead.
    splits = {s: sum(report["splits"][s].values()) for s in fk.SPLITS if s in report["splits"]}
    return (
        f"{sum(splits.values())} images kept ({', '.join(f'{s} {n}' for s, n in splits.items())}), "
        f"{len(report.get('skipped', []))} excluded"
    )


def _resample_figure(task_dir: str) -> str:
    summary = _find(task_dir, "resample.json")
    if not summary:
        return ""
    return f"{summary['mode']}: {sum(summary['counts_after'].values())} training examples"


def _trainer_figure(task_dir: str) -> str:
    summary = _find(task_dir, "training_summary.json")
    history = [h for h in (summary or {}).get("history", []) if "val_loss" in h]
    if not history:
        return ""
    kept = summary.get("best_epoch")
    exported = [i for i, h in enumerate(history)
                if kept and (h.get("phase"), h.get("epoch")) == (kept["phase"], kept["epoch"])]
    # Summaries written before `best_epoch` was recorded picked by the eval loss.
    best = exported[0] if exported else min(range(len(history)), key=lambda i: history[i]["val_loss"])
    scores = [f"val_loss {history[best]['val_loss']:.3f}"]
    if "val_accuracy" in history[best]:
        scores.append(f"val_acc {history[best]['val_accuracy']:.3f}")
    if summary.get("monitor", "val_loss") != "val_loss" and summary["monitor"] in history[best]:
        scores.append(f"{summary['monitor']} {history[best][summary['monitor']]:.3f}")
    return f"best epoch {best + 1} of {len(history)} ({', '.join(scores)})"


def _evaluator_figure(task_dir: str) -> str:
    metrics, blessing = _find(task_dir, "metrics.json"), _find(task_dir, "blessing.json")
    parts = []
    if metrics:
        parts.append(
            f"test macro recall {metrics['macro_recall']:.3f} (accuracy {metrics['accuracy']:.3f}, n={metrics['n']})"
        )
    if blessing:
        parts.append("blessed" if blessing.get("blessed") else "NOT blessed")
    return "; ".join(parts)


def _pusher_figure(task_dir: str) -> str:
    push = _find(task_dir, "push.json")
    if not push:
        return ""
    if push.get("pushed"):
        return f"pushed version {push['version']}"
    return f"nothing pushed: {push.get('reason', 'see blessing')}"


_KEY_FIGURES = {
    "example-gen": _example_gen_figure,
    "resample": _resample_figure,
    "trainer": _trainer_figure,
    "evaluator": _evaluator_figure,
    "pusher": _pusher_figure,
    "push-skipped": _pusher_figure,
}


def failure_reason(log_path: str) -> str:
    """One line saying why a stage failed: the last exception its log shows, else its last line."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip() for line in f]
    except OSError:
        return "no log was written"
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("Traceback (most recent call last)")]
    if starts:
        # The exception line is the first unindented line after the frames ("  File ...").
        for line in lines[starts[-1] + 1 :]:
            if line and not line[0].isspace() and _EXCEPTION.match(line):
                return _one_line(line)
    for line in reversed(lines):
        if _EXCEPTION.match(line.strip()):
            return _one_line(line.strip())
    tail = [line.strip() for line in lines if line.strip() and not _ANSI.sub("", line).startswith("-" * 10)]
    return _one_line(tail[-1]) if tail else "the task exited with an error and printed nothing"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(_ANSI.sub("", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warnings_block(output_dir: str) -> list[str]:
    """One short list of what a reader must not miss: training, shortcut, confounding and blessing
    warnings."""
    metrics = _read_json(os.path.join(output_dir, "metrics.json")) or {}
    training = _read_json(os.path.join(output_dir, "training_summary.json")) or {}
    ingest = _read_json(os.path.join(output_dir, "ingest_report.json")) or {}
    blessing = _read_json(os.path.join(output_dir, "blessing.json")) or {}
    found = [f"training: {w}" for w in _texts(training.get("warnings"))]
    found += [f"shortcut: {w}" for w in _texts(metrics.get("shortcut"))]
    found += [f"confounding: {w}" for w in _texts((ingest.get("confounding") or {}).get("warnings"))]
    if blessing and not blessing.get("blessed"):
        reasons = [str(r) for r in blessing.get("reasons", [])]
        failing = [r for r in reasons if " < " in r or "exceeds" in r] or reasons
        found += [f"not blessed: {r}" for r in failing]
    return found


def _texts(value) -> list[str]:
    """Warning texts from a string, a list, or a dict holding `warnings`/`warning` (or dicts that do:
    metrics.json's `shortcut` holds one dict per check)."""
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        if "warnings" in value or "warning" in value:
            return _texts(value.get("warnings")) + _texts(value.get("warning"))
        return [t for item in value.values() if isinstance(item, dict) for t in _texts(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _texts(item)]
    return []
