"""A content-addressed memory of ExampleGen's pixel checks, for re-ingesting the same files.

Scheduled retraining re-reads a dataset that mostly has not changed. Decoding is nearly all of
ExampleGen's cost (bench/), and its result depends only on the file's bytes, so it is kept by
the bytes' SHA-256: a later run hashes each file (which it must do anyway, for exact-duplicate
detection) and decodes only files it has never seen. A changed file has a new hash and is
checked again; nothing is looked up by path or modification time.

Layout: `<dir>/v<VERSION>/<name>.json`, one file per run that checked new images, each written
atomically and never modified; a run loads them all. VERSION changes whenever the fingerprint
recipe does, so old entries are ignored, never misread. Only accepted images are kept: a
rejected file is rare and is simply checked again. Size limits (`too_large`, `too_small`) are
re-applied to every hit, because they depend on the run's settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging

from cxrflow import images
from cxrflow.io_utils import join, listdir, makedirs, read_text, write_json_atomic

log = logging.getLogger(__name__)

# Bump on any change to what check_image computes for an accepted image.
VERSION = f"1-p{images.PREVIEW_SIZE}-h{images.HASH_SIZE}-t{images.THUMB_SIZE}"


def _version_dir(cache_dir: str) -> str:
    return join(cache_dir, f"v{VERSION}")


def entry(checked: images.CheckedImage) -> dict:
    """What a later run needs of an accepted image, without its pixels."""
    return {
        "width": checked.width,
        "height": checked.height,
        "reencoded": checked.reencoded,
        "pixel_hash": checked.pixel_hash,
        "thumbnail": checked.thumbnail.hex(),
    }


_FIELDS = {"width": int, "height": int, "reencoded": bool, "pixel_hash": str, "thumbnail": str}


def _valid(item: object) -> bool:
    """Whether a loaded entry has every field, each of its type (a hand-edited file may not)."""
    return isinstance(item, dict) and all(isinstance(item.get(k), t) for k, t in _FIELDS.items())


@functools.lru_cache(maxsize=4)
def load(cache_dir: str) -> tuple[dict[str, dict], tuple[str, ...]]:
    """(sha256 -> entry, names of unreadable cache files). Loaded once per process and dir.

    A cache file that cannot be read is skipped and named, never fatal: the cache only saves
    time, and every image it would have answered for is simply decoded again.
    """
    folder = _version_dir(cache_dir)
    entries: dict[str, dict] = {}
    bad: list[str] = []
    for name in sorted(listdir(folder)):
        if not name.endswith(".json"):
            continue  # an interrupted writer's temporary file
        try:
            part = json.loads(read_text(join(folder, name)))
            if not isinstance(part, dict) or not all(map(_valid, part.values())):
                raise ValueError("not a map of file hashes to checks")
            entries.update(part)
        except (OSError, ValueError) as e:
            log.warning("ingest cache file %s skipped: %s", name, e)
            bad.append(name)
    return entries, tuple(bad)


def lookup(cache_dir: str, sha256: str) -> dict | None:
    return load(cache_dir)[0].get(sha256) if cache_dir else None


def save(cache_dir: str, new_entries: dict[str, dict]) -> str | None:
    """Writes the entries not cached yet as one new file; returns its path (None: nothing new)."""
    if not cache_dir:
        return None
    known = load(cache_dir)[0]
    fresh = {k: v for k, v in new_entries.items() if k not in known}
    if not fresh:
        return None
    folder = _version_dir(cache_dir)
    makedirs(folder)
    # Named by content: two runs that checked the same new files write the same file.
    name = hashlib.sha256("\n".join(sorted(fresh)).encode()).hexdigest()[:32] + ".json"
    path = join(folder, name)
    write_json_atomic(path, fresh)
    load.cache_clear()
    return path
