"""Beam options for ExampleGen: what the user passed, plus cheap local defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence

# More threads than this buys little (the GIL is held between decodes) and each thread holds
# one decoded image, up to max_image_pixels of 16-bit pixels.
MAX_LOCAL_THREADS = 4

# Beam's batch runner, which the DirectRunner hands a batch pipeline to in the end. Named
# directly because the DirectRunner first tries the Prism runner, which it downloads from
# GitHub: where that fails (no network) the attempt costs a translation of the pipeline and a
# failed lookup, 0.4-0.5 s of every run (bench/README.md); where it succeeds, the run would
# depend on a binary fetched at run time.
LOCAL_RUNNER = "FnApiRunner"


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


def with_local_defaults(args: Sequence[str]) -> list[str]:
    """`args`, plus Beam's in-memory batch runner when no runner is named, and no
    construction-time type checks.

    ExampleGen's DoFns run their file work on a thread pool of their own (stages/beam_threads.py),
    so one in-memory worker uses every core; the DirectRunner's `multi_threading` mode costs
    gRPC channels and bundle set-up per run on top. A runner the user names (DirectRunner
    included) and any `--direct_...` option are passed on untouched.
    """
    args = list(args)
    if not _runner(args):
        args.append(f"--runner={LOCAL_RUNNER}")
    if not _given(args, "--no_pipeline_type_check"):
        # Construction-time checks of type hints, which ExampleGen's transforms do not carry:
        # skipping them saves ~0.06 s of CPU a run (20% of Beam's cost for a small ingest).
        args.append("--no_pipeline_type_check")
    return args


def one_local_worker(options) -> bool:
    """Whether `options` (a PipelineOptions) run the pipeline on one local in-process worker,
    where redistributing elements among workers would only cost time."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions  # lazy: imports Beam

    runner = options.view_as(StandardOptions).runner or ""
    direct = options.view_as(DirectOptions)
    local = runner.rsplit(".", 1)[-1] in ("", "DirectRunner", "SwitchingDirectRunner", LOCAL_RUNNER, "direct")
    workers = direct.direct_num_workers  # 0: one per core
    return local and workers in (None, 1) and direct.direct_running_mode == "in_memory"
