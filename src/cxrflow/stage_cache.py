"""Reuse of completed stages for local runs, so a killed run continues instead of starting over.

kfp.local has no cache of its own and gives every run a fresh pipeline root. With a work dir
(`config.work_dir`, set by the local runner to `<output>/work`), every stage's finished output
is kept under `work/stages/<stage>-<fingerprint>/`, hard-linked (no extra disk) and completed by
an atomic rename. A later run whose stage has the same fingerprint copies that output into its
artifact instead of recomputing. The fingerprint covers the stage name, the config values the
stage reads (config.STAGE_FIELDS) and the fingerprints of its inputs, and ExampleGen's also
covers the data files' names, sizes and modification times (local or gs://), so changed data or
settings always recompute, and a setting one stage ignores never recomputes it.

Remote runs (KFP, Vertex) leave `work_dir` empty: there, KFP's own caching is the mechanism,
keyed by the same per-stage fields (pipeline.py) and the same data fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence

from cxrflow.config import PipelineConfig, stage_fields

FINGERPRINT_FILE = "_cxrflow_fingerprint"
COMPLETE_MARKER = "_COMPLETE"
# A field a stage reads that never changes its output (where the Trainer keeps its backups).
_NEUTRAL_FIELDS = {"work_dir"}


def _gfile():
    import tensorflow as tf  # lazy: only remote data listings need it

    return tf.io.gfile


def _gcs_listing(root: str, client_factory: Callable[[], object] | None = None) -> list:
    """Names, sizes and generations under gs://BUCKET/PREFIX from the bucket listing itself
    (1,000 objects per request; a stat per file would be one request each). An object's
    generation changes on every write, even one that keeps its size."""
    from google.cloud import storage  # lazy: only gs:// data needs the client

    bucket, _, prefix = root[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = (client_factory or storage.Client)()
    blobs = client.list_blobs(bucket, prefix=prefix, fields="items(name,size,generation),nextPageToken")
    return sorted([b.name[len(prefix):], int(b.size or 0), int(b.generation or 0)]
                  for b in blobs if not b.name.endswith("/"))


def _remote_listing(root: str) -> list:
    """Names, sizes and modification times under a gfile root (ram://, ...), like os.walk's."""
    if root.startswith("gs://"):
        return _gcs_listing(root)
    gfile = _gfile()
    listing = []
    for dirpath, dirnames, files in gfile.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = dirpath.rstrip("/") + "/" + name
            st = gfile.stat(path)
            listing.append([path[len(root.rstrip("/")) + 1:], st.length, st.mtime_nsec])
    return listing


def data_listing(data: Sequence[str]) -> list:
    """What ExampleGen's output depends on beyond its settings: every data file's relative name,
    size and modification time, local or remote (a changed, added or removed file changes it)."""
    listing: list = []
    for entry in data:
        root = entry.partition(":")[2]
        listing.append(entry)
        if "://" in root:
            listing.extend(_remote_listing(root))
            continue
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(dirpath, name))
                listing.append([os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns])
    return listing


def data_fingerprint(data: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(data_listing(data)).encode()).hexdigest()


def fingerprint(stage: str, config: PipelineConfig, input_dirs: Sequence[str]) -> str:
    """The stage name, the settings it reads (config.STAGE_FIELDS), its inputs' fingerprints and,
    for ExampleGen, the data files' listing."""
    values = json.loads(config.to_json())
    settings = {k: values[k] for k in stage_fields(stage) if k not in _NEUTRAL_FIELDS}
    upstream = []
    for d in input_dirs:
        path = os.path.join(d, FINGERPRINT_FILE)
        upstream.append(open(path).read().strip() if os.path.exists(path) else f"unfingerprinted:{d}")
    payload = {"stage": stage, "settings": settings, "inputs": upstream}
    if stage == "example_gen":
        payload["data"] = data_fingerprint(config.data)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def _copy_tree(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(COMPLETE_MARKER))


def stage_cache_dir(config: PipelineConfig, stage: str, fp: str) -> str:
    return os.path.join(config.work_dir, "stages", f"{stage}-{fp[:16]}")


def reuse_or_run(
    stage: str, config: PipelineConfig, input_dirs: Sequence[str], output_dir: str, run: Callable[[], object]
) -> bool:
    """Fills `output_dir` from a completed earlier run of this stage, or runs it and keeps the result.

    Returns True when the output was reused. The output dir always ends with its fingerprint
    file, which downstream stages fold into theirs.
    """
    fp = fingerprint(stage, config, input_dirs)
    local = bool(config.work_dir) and "://" not in output_dir
    cached = stage_cache_dir(config, stage, fp) if local else ""
    if cached and os.path.exists(os.path.join(cached, COMPLETE_MARKER)):
        _copy_tree(cached, output_dir)
        print(f"{stage}: reused the completed output of an earlier run ({cached})", flush=True)
        return True
    run()
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, FINGERPRINT_FILE), "w") as f:
        f.write(fp)
    if cached:
        tmp = cached + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _copy_tree(output_dir, tmp)
        open(os.path.join(tmp, COMPLETE_MARKER), "w").close()
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    return False
