"""Pusher: a blessed model goes to `<serving_dir>/<model_name>/<version>/` (TF Serving layout).

Versions are increasing integers. A version appears atomically: locally the model is copied to
a hidden temporary dir and renamed into place; on object stores (gs://), where a rename is a
copy, TF Serving would load a version folder as soon as it holds `saved_model.pb`, so the
variables, assets and everything else are copied first, `saved_model.pb` last, and a
`_SUCCESS` marker after it; cxrflow's readers (the served-model resolver) ignore versions
without the marker. Hidden temporary dirs are not integers, so TF Serving never loads them.

The Pusher pushes what it is given: the pipeline runs it only under `dsl.If` on the
Evaluator's `blessed` output (pipeline.py), so it never reads blessing.json itself.
"""

from __future__ import annotations

import os
import shutil
import uuid

from cxrflow import deploy
from cxrflow.io_utils import is_remote, join

SUCCESS_MARKER = "_SUCCESS"
# What makes a folder a loadable SavedModel for TF Serving: copied after everything else.
_LOADED_LAST = ("saved_model.pb", "saved_model.pbtxt")


def _gfile():
    import tensorflow as tf  # lazy: only gs:// serving dirs need TF's gfile

    return tf.io.gfile


def complete_versions(serving_dir: str, model_name: str) -> list[int]:
    """Pushed versions that are complete, ascending. Half-written versions are never listed."""
    base = join(serving_dir, model_name)
    if is_remote(base):
        gfile = _gfile()
        if not gfile.exists(base):
            return []
        names = [n.rstrip("/") for n in gfile.listdir(base)]
        return sorted(int(n) for n in names if n.isdigit() and gfile.exists(join(base, n, SUCCESS_MARKER)))
    if not os.path.isdir(base):
        return []
    return sorted(int(n) for n in os.listdir(base) if n.isdigit() and os.path.isdir(os.path.join(base, n)))


def latest_model_dir(serving_dir: str, model_name: str) -> str | None:
    versions = complete_versions(serving_dir, model_name) if serving_dir else []
    return join(serving_dir, model_name, str(versions[-1])) if versions else None


def copy_order(src: str) -> list[str]:
    """Relative file paths under `src` in push order: variables/, assets/ and the rest first,
    the top-level saved_model.pb(txt) last, so no reader sees a graph without its weights."""
    gfile = _gfile()
    files = []
    for dirpath, _, names in gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        files.extend(name if rel == "." else f"{rel}/{name}" for name in sorted(names))
    return sorted(files, key=lambda f: (f in _LOADED_LAST, f))


def _copy_tree_remote(src: str, dst: str) -> None:
    gfile = _gfile()
    if gfile.exists(dst):  # left by a push cut short (no _SUCCESS): start it again clean
        gfile.rmtree(dst)
    for rel in copy_order(src):
        target = join(dst, rel)
        gfile.makedirs(os.path.dirname(target) if "/" in rel else dst)
        gfile.copy(join(src, rel), target, overwrite=True)


def push(model_dir: str, serving_dir: str, model_name: str, keep: int = 0) -> dict:
    """Copies `model_dir` in as the next version; prunes to the newest `keep` (0 keeps all)."""
    versions = complete_versions(serving_dir, model_name)
    version = (versions[-1] + 1) if versions else 1
    base = join(serving_dir, model_name)
    target = join(base, str(version))
    if is_remote(target):
        _copy_tree_remote(model_dir, target)
        with _gfile().GFile(join(target, SUCCESS_MARKER), "w") as f:
            f.write("")
    else:
        os.makedirs(base, exist_ok=True)
        for stale in (n for n in os.listdir(base) if n.startswith(".tmp-")):
            shutil.rmtree(os.path.join(base, stale), ignore_errors=True)  # left by a killed push
        tmp = os.path.join(base, f".tmp-{version}-{uuid.uuid4().hex}")
        try:
            shutil.copytree(model_dir, tmp)
            open(os.path.join(tmp, SUCCESS_MARKER), "w").close()
            os.rename(tmp, target)  # atomic on POSIX; fails rather than merge if it exists
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    pruned = prune(serving_dir, model_name, keep) if keep else []
    return {"pushed": True, "version": version, "path": target, "pruned": pruned}


def prune(serving_dir: str, model_name: str, keep: int) -> list[int]:
    versions = complete_versions(serving_dir, model_name)
    old = versions[:-keep] if keep > 0 else []
    for v in old:
        path = join(serving_dir, model_name, str(v))
        if is_remote(path):
            _gfile().rmtree(path)
        else:
            shutil.rmtree(path)
    return old


def run_pusher(model_dir: str, serving_dir: str, model_name: str, keep: int = 0, config=None) -> dict:
    """Pushes the model (the pipeline calls this only for a blessed one).

    With `config.vertex_model`, the pushed version (which must be on gs://) is also registered
    in Vertex AI Model Registry and, with `config.vertex_endpoint`, deployed there.
    """
    if not serving_dir:
        return {"pushed": False, "reason": "no serving_dir configured"}
    result = push(model_dir, serving_dir, model_name, keep)
    if config is not None and config.vertex_model:
        result["vertex_model"] = deploy.upload_vertex_model(
            result["path"], project=config.vertex_project, region=config.vertex_region,
            display_name=config.vertex_model, serving_image=config.vertex_serving_image,
            endpoint=config.vertex_endpoint or None,
        )
    return result
