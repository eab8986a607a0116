"""Pusher: a blessed model goes to `<serving_dir>/<model_name>/<version>/` (TF Serving layout).

Versions are increasing integers. A version appears atomically: locally the model is copied to
a hidden temporary dir and renamed into place; on object stores (gs://), where a rename is a
copy, a `_SUCCESS` marker is written last and readers (including the Evaluator's baseline
lookup) ignore versions without it. Hidden temporary dirs are not integers, so TF Serving
never loads them.
"""

from __future__ import annotations

import os
import shutil
import uuid

from cxrflow.io_utils import is_remote, join, read_json

SUCCESS_MARKER = "_SUCCESS"


def _gfile():
    import tensorflow as tf

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


def _copy_tree_remote(src: str, dst: str) -> None:
    gfile = _gfile()
    for dirpath, _, files in gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else join(dst, rel)
        gfile.makedirs(target)
        for name in files:
            gfile.copy(join(dirpath, name), join(target, name), overwrite=True)


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


def run_pusher(
    model_dir: str, evaluation_dir: str, serving_dir: str, model_name: str, keep: int = 0, config=None
) -> dict:
    """Pushes only a blessed model; otherwise pushes nothing and says why.

    With `config.vertex_model`, the pushed version (which must be on gs://) is also registered
    in Vertex AI Model Registry and, with `config.vertex_endpoint`, deployed there.
    """
    from cxrflow.stages.evaluator import BLESSING_FILE

    blessing = read_json(join(evaluation_dir, BLESSING_FILE))
    if not blessing["blessed"]:
        return {"pushed": False, "reason": "model not blessed", "blessing_reasons": blessing["reasons"]}
    if not serving_dir:
        return {"pushed": False, "reason": "no serving_dir configured"}
    result = push(model_dir, serving_dir, model_name, keep)
    if config is not None and config.vertex_model:
        from cxrflow import deploy

        result["vertex_model"] = deploy.upload_vertex_model(
            result["path"], project=config.vertex_project, region=config.vertex_region,
            display_name=config.vertex_model, serving_image=config.vertex_serving_image,
            endpoint=config.vertex_endpoint or None,
        )
    return result
