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
import io
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
from cxrflow.stage_summary import failure_reason, key_figure

LOGS_DIR = "logs"
PIPELINE_LOG = "pipeline.log"  # kfp.local's lines outside any task
# KFP task names (component names, dashed) -> the names the README and the report use.
STAGE_NAMES = {
    "example-gen": "ExampleGen",
    "transform": "Transform",
    "resample": "Resample",
    "trainer": "Trainer",
    "evaluator": "Evaluator",
    "pusher": "Pusher",
    "push-skipped": "Pusher",  # the not-blessed branch: it records why nothing was pushed
}
MILESTONES = (0.25, 0.5, 0.75)  # plain-line progress on a pipe: a line as each quarter is passed
PLAIN_EVERY_S = 60.0  # ...and at least one a minute, so CI logs show a long stage is alive

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
# Lines a stage prints for the user, shown on the console too: a stage reused from work/ (stage_cache.py).
_SHOWN = re.compile(r"^\w+: reused the completed output")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


def stage_name(task: str) -> str:
    return STAGE_NAMES.get(task, task)


class _Bar:
    """One progress bar: a tqdm bar on a terminal, milestone lines on a pipe."""

    def __init__(self, console: Console, label: str, total: int | None, unit: str):
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.done, self.info = 0, ""
        self.started = self.last_line = time.monotonic()
        self.next_milestone = 0
        self.tqdm = None
        if console.tty:
            # No rate: an epoch bar would show "135300 it/s" when its first update comes in a burst.
            fmt = (
                "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"
                if total
                else "{desc}: {n_fmt} {unit} [{elapsed}{postfix}]"
            )
            self.tqdm = tqdm(
                total=total,
                desc=f"  {label}",
                unit=unit,
                file=console.out,
                leave=False,
                dynamic_ncols=True,
                mininterval=0,
                bar_format=fmt,
            )  # stages send at most ~4 a second

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
            unit = f" {self.unit}" if self.unit else ""
            self.console.line(f"    {self.label}: {done}{of}{unit}" + (f"  {self.info}" if self.info else ""))

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None


class Console:
    """What the user sees of a local run; the stage logs are kept by StageRouter."""

    def __init__(self, out: TextIO, tty: bool | None = None):
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.bars: dict[str, _Bar] = {}

    def line(self, text: str) -> None:
        if self.tty:
            tqdm.write(text, file=self.out)  # above the bars, which are redrawn below it
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def _mark(self, symbol: str, plain: str, colour: str) -> str:
        """A terminal gets a symbol (coloured unless NO_COLOR is set, see no-color.org); a pipe a word."""
        if not self.tty:
            return plain
        return f"\x1b[{colour}m{symbol}\x1b[0m" if colour and not os.environ.get("NO_COLOR") else symbol

    def stage_started(self, task: str) -> None:
        if task not in STAGE_NAMES:  # pipeline plumbing (e.g. looking up the served model): its end line will do
            return
        self.line(f"{self._mark('▶', '->', '')} {stage_name(task)} ...")

    def stage_finished(self, task: str, seconds: float, figure: str) -> None:
        self.close_bars()
        self.line(
            f"{self._mark('✔', 'ok', '32')} {stage_name(task)} done in {seconds:.1f} s"
            + (f": {figure}" if figure else "")
        )

    def stage_failed(self, task: str, seconds: float, reason: str, log_path: str) -> None:
        self.close_bars()
        self.line(f"{self._mark('✘', 'FAILED', '31')} {stage_name(task)} failed after {seconds:.1f} s: {reason}")
        self.line(f"    log: {log_path}")

    def progress(self, event: dict) -> None:
        label = str(event.get("bar", "progress"))
        bar = self.bars.get(label)
        if event.get("start") or bar is None:
            self.close_bars()  # one pass at a time: a new bar ends the stage's previous one
            bar = self.bars[label] = _Bar(self, label, event.get("total"), str(event.get("unit") or ""))
        if "add" in event:
            bar.set(bar.done + int(event["add"]), None, "")
        elif "done" in event:
            bar.set(int(event["done"]), event.get("total"), str(event.get("info") or ""))

    def close_bars(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class StageRouter(io.TextIOBase):
    """Receives everything kfp.local prints and sends each line to its stage's log.

    A text stream (io.TextIOBase) so that whatever takes it for sys.stdout or sys.stderr finds
    the usual attributes.
    """

    encoding = "utf-8"

    def __init__(self, console: Console, logs_dir: str, pipeline_root: str, echo: TextIO | None = None):
        self.console, self.logs_dir, self.pipeline_root, self.echo = console, logs_dir, pipeline_root, echo
        self.lock = threading.RLock()  # fail() runs both from a finished line and from capture()
        self.buffer = ""
        self.running: str | None = None  # started and not yet finished
        self.started = 0.0
        self.log: TextIO | None = None
        self.failed: tuple[str, str, str] | None = None  # (stage, reason, log path) of the first failure
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

    def writable(self) -> bool:
        return True

    def _line(self, raw: str) -> None:
        plain = _ANSI.sub("", raw)
        content = plain.strip()
        if content.startswith(progress.MARKER.strip()):
            try:
                self.console.progress(json.loads(content[len(progress.MARKER.strip()) :]))
            except ValueError:
                pass  # a torn line: progress is decoration, never a reason to fail
            return
        executing = _EXECUTING.search(plain)
        if executing:
            self.running = executing.group(1)
            self.started = time.monotonic()
            self._open(f"{self.running}.log")
            self.console.stage_started(self.running)
        if self.echo is not None:
            self.echo.write(raw + "\n")
            self.echo.flush()
        elif _SHOWN.match(content):
            self.console.line(f"    {content}")
        assert self.log is not None
        # kfp.local indents a task's own output by four spaces: logs keep it as the task wrote it.
        self.log.write((plain[4:] if plain.startswith("    ") else plain) + "\n")
        finished = _FINISHED.search(plain)
        if finished and finished.group(1) == self.running:
            self.log.flush()
            if finished.group(2) == "SUCCESS":
                self.console.stage_finished(
                    self.running, time.monotonic() - self.started, key_figure(self.running, self.task_dir(self.running))
                )
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
            self.failed = stage_name(task), reason, path
            return self.failed

    def close(self) -> None:
        with self.lock:
            if self.buffer:
                self._line(self.buffer)
                self.buffer = ""
            if self.running is not None:  # interrupted (Ctrl-C): say where, and where its log is
                self.console.line(f"{stage_name(self.running)} interrupted; log: {self.log_path(self.running)}")
                self.running = None
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
        # kfp.local raises at the failed task, or (pipelines with conditions) at the pipeline's
        # end after logging the task's failure: either way, name the stage that failed.
        failed = router.fail() or router.failed
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
