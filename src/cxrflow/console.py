"""The console of a local run: one line per stage start and end, progress bars, per-stage logs.

kfp.local prints everything (its own log lines, each task's streamed output, executor JSON
dumps, TF/Beam/Keras chatter) through the parent's `sys.stdout`. While the pipeline runs,
`capture(...)` puts a `StageRouter` there. The router follows kfp.local's "Executing task" and
"finished with status" lines to know which stage is running; every line goes to that stage's
log, `<output>/logs/<task>.log`, and only the summary reaches the console. Progress lines
(progress.py) are drawn as bars on a terminal (tqdm) and as a few plain lines on a pipe or in CI.
`--verbose` also streams the raw output, as kfp.local prints it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

from cxrflow import progress

LOGS_DIR = "logs"
PIPELINE_LOG = "pipeline.log"  # kfp.local's lines outside any task
# KFP task names (component names, dashed) -> the names the README and the report use.
STAGE_NAMES = {
    "example-gen": "ExampleGen", "transform": "Transform", "resample": "Resample",
    "trainer": "Trainer", "evaluator": "Evaluator", "pusher": "Pusher",
}
MILESTONES = (0.25, 0.5, 0.75)  # plain-line progress on a pipe: a line as each quarter is passed
PLAIN_EVERY_S = 60.0  # ...and at least one a minute, so CI logs show a long stage is alive

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure|Failed)\w*)(?::\s*(.*))?$")


def stage_name(task: str) -> str:
    return STAGE_NAMES.get(task, task)


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
    order = ("train", "eval", "test")  # JSON keys come back sorted: pipeline order instead
    splits = {s: sum(c.values()) for s, c in sorted(report["splits"].items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0]))}
    return (f"{sum(splits.values())} images kept ({', '.join(f'{s} {n}' for s, n in splits.items())}), "
            f"{len(report.get('skipped', []))} excluded")


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
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    score = f", val_acc {history[best]['val_accuracy']:.3f}" if "val_accuracy" in history[best] else ""
    return f"best epoch {best + 1} of {len(history)} (val_loss {history[best]['val_loss']:.3f}{score})"


def _evaluator_figure(task_dir: str) -> str:
    metrics, blessing = _find(task_dir, "metrics.json"), _find(task_dir, "blessing.json")
    parts = []
    if metrics:
        parts.append(f"test macro recall {metrics['macro_recall']:.3f} (accuracy {metrics['accuracy']:.3f}, "
                     f"n={metrics['n']})")
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
    "example-gen": _example_gen_figure, "resample": _resample_figure, "trainer": _trainer_figure,
    "evaluator": _evaluator_figure, "pusher": _pusher_figure,
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
        for line in lines[starts[-1] + 1:]:
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


class _Bar:
    """One progress bar: a tqdm bar on a terminal, milestone lines on a pipe."""

    def __init__(self, console: Console, label: str, total: int | None, unit: str):
        self.console, self.label, self.total, self.unit = console, label, total, unit or "it"
        self.done, self.info = 0, ""
        self.started = self.last_line = time.monotonic()
        self.next_milestone = 0
        self.tqdm = None
        if console.tty:
            self.tqdm = tqdm(total=total, desc=f"  {label}", unit=self.unit, file=console.out, leave=False,
                             dynamic_ncols=True, mininterval=0.2)

    def set(self, done: int, total: int | None, info: str) -> None:
        if total is not None and total != self.total:
            self.total = total
            if self.tqdm is not None:
                self.tqdm.total = total
        step, self.done, self.info = done - self.done, done, info or self.info
        if self.tqdm is not None:
            if info:
                self.tqdm.set_postfix_str(info, refresh=False)
            self.tqdm.update(step)
            return
        now, crossed = time.monotonic(), False
        if self.total:
            while self.next_milestone < len(MILESTONES) and done >= MILESTONES[self.next_milestone] * self.total:
                self.next_milestone, crossed = self.next_milestone + 1, True
        if (crossed and done < self.total) or now - self.last_line >= PLAIN_EVERY_S:
            self.last_line = now
            of = f"/{self.total}" if self.total else ""
            self.console.line(f"    {self.label}: {done}{of} {self.unit}" + (f"  {self.info}" if self.info else ""))

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None


class Console:
    """What the user sees of a local run; the stage logs are kept by StageRouter."""

    def __init__(self, out: TextIO, tty: bool | None = None):
        self.out = out
        self.tty = (out.isatty() and not os.environ.get("CI")) if tty is None else tty
        self.bars: dict[str, _Bar] = {}

    def line(self, text: str) -> None:
        if self.tty:
            tqdm.write(text, file=self.out)  # above the bars, which are redrawn below it
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def stage_started(self, task: str) -> None:
        self.line(f"{'▶' if self.tty else '->'} {stage_name(task)} ...")

    def stage_finished(self, task: str, seconds: float, figure: str) -> None:
        self.close_bars()
        self.line(f"{'✔' if self.tty else 'ok'} {stage_name(task)} done in {seconds:.1f} s"
                  + (f": {figure}" if figure else ""))

    def stage_failed(self, task: str, seconds: float, reason: str, log_path: str) -> None:
        self.close_bars()
        self.line(f"{'✘' if self.tty else 'FAILED'} {stage_name(task)} failed after {seconds:.1f} s: {reason}")
        self.line(f"    log: {log_path}")

    def progress(self, event: dict) -> None:
        label = str(event.get("bar", "progress"))
        bar = self.bars.get(label)
        if event.get("start") or bar is None:
            if bar is not None:
                bar.close()
            bar = self.bars[label] = _Bar(self, label, event.get("total"), str(event.get("unit") or ""))
        if "add" in event:
            bar.set(bar.done + int(event["add"]), None, "")
        elif "done" in event:
            bar.set(int(event["done"]), event.get("total"), str(event.get("info") or ""))

    def close_bars(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class StageRouter:
    """Receives everything kfp.local prints and sends each line to its stage's log."""

    def __init__(self, console: Console, logs_dir: str, pipeline_root: str, echo: TextIO | None = None):
        self.console, self.logs_dir, self.pipeline_root, self.echo = console, logs_dir, pipeline_root, echo
        self.lock = threading.Lock()
        self.buffer = ""
        self.task: str | None = None  # the stage whose lines are arriving
        self.running: str | None = None  # started and not yet finished
        self.started = 0.0
        self.log: TextIO | None = None
        os.makedirs(logs_dir, exist_ok=True)
        self._open(PIPELINE_LOG)

    def log_path(self, task: str) -> str:
        return os.path.join(self.logs_dir, f"{task}.log")

    def _open(self, name: str) -> None:
        if self.log is not None:
            self.log.close()
        self.log = open(os.path.join(self.logs_dir, name), "a" if name == PIPELINE_LOG else "w", encoding="utf-8")

    def write(self, text: str) -> int:
        with self.lock:
            self.buffer += text
            *lines, self.buffer = self.buffer.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def isatty(self) -> bool:
        return False

    def _line(self, raw: str) -> None:
        plain = _ANSI.sub("", raw)
        content = plain.strip()
        if content.startswith(progress.MARKER.strip()):
            try:
                self.console.progress(json.loads(content[len(progress.MARKER.strip()):]))
            except ValueError:
                pass  # a torn line: progress is decoration, never a reason to fail
            return
        executing = _EXECUTING.search(plain)
        if executing:
            self.task = self.running = executing.group(1)
            self.started = time.monotonic()
            self._open(f"{self.task}.log")
            self.console.stage_started(self.task)
        if self.echo is not None:
            self.echo.write(raw + "\n")
            self.echo.flush()
        assert self.log is not None
        # kfp.local indents a task's own output by four spaces: logs keep it as the task wrote it.
        self.log.write((plain[4:] if plain.startswith("    ") else plain) + "\n")
        finished = _FINISHED.search(plain)
        if finished and finished.group(1) == self.running:
            self.log.flush()
            if finished.group(2) == "SUCCESS":
                self.console.stage_finished(self.running, time.monotonic() - self.started,
                                            key_figure(self.running, self.task_dir(self.running)))
                self.running = None
            else:  # raise_on_error=False: kfp.local logs the failure instead of raising
                self.fail()

    def task_dir(self, task: str) -> str:
        runs = sorted(glob.glob(os.path.join(self.pipeline_root, "*", task)), key=os.path.getmtime)
        return runs[-1] if runs else ""

    def fail(self) -> tuple[str, str, str] | None:
        """Marks the running stage failed; returns (stage, reason, log path), or None if none ran."""
        with self.lock:
            if self.buffer:
                self._line(self.buffer)
                self.buffer = ""
            if self.running is None:
                return None
            task, self.running = self.running, None
            self.flush()
            path = self.log_path(task)
            reason = failure_reason(path)
            self.console.stage_failed(task, time.monotonic() - self.started, reason, path)
            return stage_name(task), reason, path

    def close(self) -> None:
        with self.lock:
            if self.buffer:
                self._line(self.buffer)
                self.buffer = ""
            if self.log is not None:
                self.log.close()
                self.log = None
        self.console.close_bars()


class StageFailed(RuntimeError):
    """A pipeline stage failed; the message names it, says why in one line and gives its log."""

    def __init__(self, stage: str, reason: str, log_path: str):
        super().__init__(f"{stage} failed: {reason} (log: {log_path})")
        self.stage, self.reason, self.log_path = stage, reason, log_path


@contextlib.contextmanager
def capture(output_dir: str, pipeline_root: str, verbose: bool = False) -> Iterator[StageRouter]:
    """Routes the run's output into `<output_dir>/logs/` for the duration; see the module doc.

    A task failure (kfp.local's RuntimeError) is re-raised as StageFailed naming the stage.
    """
    out, err = sys.stdout, sys.stderr
    console = Console(out, tty=False if verbose else None)  # no bars between streamed lines
    router = StageRouter(console, os.path.join(output_dir, LOGS_DIR), pipeline_root, out if verbose else None)
    saved_env = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = "1"  # the tasks inherit it: they print progress lines
    sys.stdout = sys.stderr = router  # type: ignore[assignment]
    try:
        yield router
    except RuntimeError as e:
        failed = router.fail()
        if failed is None:
            raise
        raise StageFailed(*failed) from e
    finally:
        sys.stdout, sys.stderr = out, err
        router.close()
        if saved_env is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = saved_env


def warnings_block(output_dir: str) -> list[str]:
    """One short list of what a reader must not miss: shortcut, confounding and blessing warnings."""
    metrics = _read_json(os.path.join(output_dir, "metrics.json")) or {}
    ingest = _read_json(os.path.join(output_dir, "ingest_report.json")) or {}
    blessing = _read_json(os.path.join(output_dir, "blessing.json")) or {}
    found = [f"shortcut: {w}" for w in _texts(metrics.get("shortcut"))]
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

