"""Beam options for the data stages: what the user passed, plus local parallelism by default."""

from __future__ import annotations

import os
from collections.abc import Sequence

# More threads than this buys little (the GIL is held between decodes) and each thread holds
# one decoded image, up to max_image_pixels of 16-bit pixels.
MAX_LOCAL_THREADS = 4


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _runner(args: Sequence[str]) -> str:
    for i, arg in enumerate(args):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and i + 1 < len(args):
            return args[i + 1]
    return ""


def local_workers() -> int:
    """Threads for local data work: one per core this process may use, at most MAX_LOCAL_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_LOCAL_THREADS))


def with_local_threads(args: Sequence[str]) -> list[str]:
    """`args`, plus DirectRunner worker threads on every core when the run is local.

    For stages whose per-element work releases the GIL (ExampleGen: PIL decoding, hashing), the
    DirectRunner's `multi_threading` mode uses every core without multi_processing's pickling
    and start-up (ExampleGen, 500 images of 1-3 MP, 2 cores: 10.4 s -> 7.3 s). Another runner,
    or any `--direct_running_mode` / `--direct_num_workers` the user gave, is left untouched.
    """
    args = list(args)
    if _runner(args) not in ("", "DirectRunner", "direct"):
        return args
    if _given(args, "--direct_running_mode") or _given(args, "--direct_num_workers"):
        return args
    workers = local_workers()
    if workers < 2:
        return args
    return [*args, "--direct_running_mode=multi_threading", f"--direct_num_workers={workers}"]
