"""Progress events from inside a stage to the console of a local run.

kfp.local runs each task as a subprocess and relays its output line by line to the parent
(`cxrflow run`/`demo`). A stage reports progress by printing one marked JSON line per update;
the parent's console (console.py) takes these lines out of the stage's log and draws them. The
lines are printed only when the parent asks for them (`CXRFLOW_PROGRESS` set in the
environment the tasks inherit), so a stage on Kubeflow or Vertex, or called from a test, prints
nothing extra.

Increments ("add") rather than absolute counts, so Beam workers in several threads or
processes can all report into one bar. Updates are throttled per process: a bar over 100,000
files costs a few hundred lines, not 100,000.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator

ENV = "CXRFLOW_PROGRESS"
MARKER = "@@cxrflow-progress "
INTERVAL_S = 0.25  # at most ~4 updates per second per bar and process

_lock = threading.Lock()
_pending: dict[str, int] = {}
_last: dict[str, float] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def emit(event: dict) -> None:
    """Prints one progress event for the parent console (nothing when not asked for)."""
    if not enabled():
        return
    # One write of a whole line: lines from Beam's threads never interleave mid-line.
    sys.stdout.write(MARKER + json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def start(bar: str, total: int | None = None, unit: str = "") -> None:
    """Opens (or restarts) a bar; `total` None draws a counter without an end."""
    with _lock:
        _pending.pop(bar, None)
        _last[bar] = time.monotonic()
    emit({"bar": bar, "start": True, "total": total, "unit": unit})


def add(bar: str, n: int = 1) -> None:
    """Counts `n` more items done; sends the sum at most every INTERVAL_S (see flush)."""
    if not enabled():
        return
    now = time.monotonic()
    with _lock:
        _pending[bar] = _pending.get(bar, 0) + n
        if now - _last.get(bar, 0.0) < INTERVAL_S:
            return
        count, _pending[bar], _last[bar] = _pending[bar], 0, now
    emit({"bar": bar, "add": count})


def flush(bar: str) -> None:
    """Sends what `add` held back (call once the work is done, in the process that did it)."""
    with _lock:
        count = _pending.pop(bar, 0)
    if count:
        emit({"bar": bar, "add": count})


def update(bar: str, done: int, total: int | None = None, info: str = "") -> None:
    """Sets a bar to an absolute position, with a short text (e.g. the latest losses)."""
    emit({"bar": bar, "done": done, "total": total, "info": info})


def passthrough(item, bar: str):
    """`beam.Map(progress.passthrough, BAR)`: counts one element and returns it unchanged."""
    add(bar)
    return item


def iterate(items: Iterable, bar: str, total: int | None = None, unit: str = "") -> Iterator:
    """Yields `items`, counting each into a bar of its own."""
    start(bar, total, unit)
    for item in items:
        yield item
        add(bar)
    flush(bar)


def keras_callback(total_epochs: int, bar: str = "epochs"):
    """A Keras callback: one update per finished epoch with its train/eval loss and accuracy."""
    import keras  # lazy: only the Trainer pays for importing Keras

    class EpochProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            start(bar, total_epochs, "epochs")  # the bar's clock starts with training, not epoch 1

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [
                f"{name} {float(logs[key]):.3f}"
                for key, name in (
                    ("loss", "loss"),
                    ("accuracy", "acc"),
                    ("val_loss", "val_loss"),
                    ("val_accuracy", "val_acc"),
                )
                if key in logs
            ]
            update(bar, epoch + 1, total_epochs, " ".join(parts))

    return EpochProgress()
