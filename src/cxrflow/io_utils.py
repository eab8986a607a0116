"""Atomic artifact writes, local or on gs:// (through tf.io.gfile).

A run killed at any moment leaves either the old file or the complete new one: every writer
goes to a temporary name beside the target and renames it into place at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid


def is_remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # lazy: only gs:// paths need TF's gfile

    return tf.io.gfile


def makedirs(path: str) -> None:
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def listdir(path: str) -> list[str]:
    """Entry names in a folder, local or remote ("/" stripped); [] when it does not exist."""
    if is_remote(path):
        gfile = _gfile()
        return [n.rstrip("/") for n in gfile.listdir(path)] if gfile.isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


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
