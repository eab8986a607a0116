"""Atomic artifact writes, local or on gs:// (through tf.io.gfile).

A run killed at any moment leaves either the old file or the complete new one: every writer
goes to a temporary name beside the target and renames it into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def join(*parts: str) -> str:
    """os.path.join for local paths; plain "/" joins for URIs (os.path would mangle gs://)."""
    if is_remote(parts[0]):
        return "/".join(p.rstrip("/") for p in parts[:-1]) + "/" + parts[-1]
    return os.path.join(*parts)


def write_bytes_atomic(path: str, data: bytes) -> None:
    parent = os.path.dirname(path)
    if is_remote(path):
        gfile = _gfile()
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with gfile.GFile(tmp, "wb") as f:
            f.write(data)
        gfile.rename(tmp, path, overwrite=True)
        return
    os.makedirs(parent or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_text(path: str) -> str:
    if is_remote(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_json(path: str) -> object:
    return json.loads(read_text(path))


@contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yields a temporary sibling directory; renames it to `path` only if the block succeeds.

    Only for local paths: a directory rename is atomic on POSIX filesystems. Callers that write
    to object stores mark completion with a `_SUCCESS` file instead (see pusher).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
