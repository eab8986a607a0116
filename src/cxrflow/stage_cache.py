"""Reuse of completed stages for local runs, so a killed run continues instead of starting over.

kfp.local has no cache of its own and gives every run a fresh pipeline root. With a work dir
(`config.work_dir`, set by the local runner to `<output>/work`), every stage's finished output
is kept under `work/stages/<stage>-<fingerprint>/`, hard-linked (no extra disk) and completed by
an atomic rename. A later run whose stage has the same fingerprint copies that output into its
artifact instead of recomputing. The fingerprint covers the stage name, the config values the
stage reads and the fingerprints of its inputs, and ExampleGen's also covers the data files'
names, sizes and modification times, so changed data or settings always recompute.

Remote runs (KFP, Vertex) leave `work_dir` empty: there, KFP's own caching is the mechanism.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence

from cxrflow.config import PipelineConfig

FINGERPRINT_FILE = "_cxrflow_fingerprint"
COMPLETE_MARKER = "_COMPLETE"
# Config fields that never change a stage's output.
_NEUTRAL_FIELDS = {"work_dir", "base_image", "trainer_resources", "default_resources", "serving_dir",
                   "model_name", "keep_versions"}


def _data_listing(config: PipelineConfig) -> list:
    listing = []
    for entry in config.data:
        root = entry.partition(":")[2]
        if "://" in root or not os.path.isdir(root):
            listing.append(entry)
            continue
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(dirpath, name))
                listing.append([os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns])
    return listing


def fingerprint(stage: str, config: PipelineConfig, input_dirs: Sequence[str]) -> str:
    settings = {k: v for k, v in json.loads(config.to_json()).items() if k not in _NEUTRAL_FIELDS}
    upstream = []
    for d in input_dirs:
        path = os.path.join(d, FINGERPRINT_FILE)
        upstream.append(open(path).read().strip() if os.path.exists(path) else f"unfingerprinted:{d}")
    payload = {"stage": stage, "settings": settings, "inputs": upstream}
    if stage == "example_gen":
        payload["data"] = _data_listing(config)
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
