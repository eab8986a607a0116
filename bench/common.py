"""Shared helpers: timing, quiet TF logs, cached ExampleGen output, results and profiles."""

from __future__ import annotations

import cProfile
import functools
import hashlib
import io
import json
import logging
import os
import pstats
import shutil
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from bench.data import DATA_DIR  # noqa: E402
from cxrflow.config import PipelineConfig  # noqa: E402
from cxrflow.stages.transform import run_transform  # noqa: E402

RESULTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
WORK_DIR = os.path.join(DATA_DIR, "work")
PROFILE_DIR = os.path.join(DATA_DIR, "profiles")


def quiet() -> None:
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def timed(fn: Callable, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


class Clock:
    """Wall and process-CPU seconds per named step, over repetitions; best (minimum) counts."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, key: str, fn: Callable, *args, **kwargs):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.wall.setdefault(key, []).append(time.perf_counter() - w0)
        self.cpu.setdefault(key, []).append(time.process_time() - c0)
        return out

    def best_wall(self, key: str) -> float:
        return min(self.wall[key])

    def best_cpu(self, key: str) -> float:
        return min(self.cpu[key])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def fresh_dir(*parts: str) -> str:
    path = os.path.join(WORK_DIR, *parts)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def config_for(root: str, **changes):
    return PipelineConfig(data=(f"folders:{root}",), **changes)


def ensure_examples(root: str, name: str) -> str:
    """ExampleGen output for the image folder `root`, cached under _data/work/<name>_<code version>."""
    from cxrflow.stages.example_gen import REPORT_FILE, run_example_gen  # lazy: scipy (~1 s); not every bench needs it

    name = f"{name}_{code_version()}"
    out = os.path.join(WORK_DIR, name)
    if not os.path.exists(os.path.join(out, REPORT_FILE)):
        out = fresh_dir(name)
        run_example_gen(config_for(root), out)
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of cxrflow's source: cached artifacts from other code must never be measured."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "cxrflow")
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(src)):
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    digest.update(fh.read())
    return digest.hexdigest()[:10]


def ensure_transform(examples_dir: str, image_size: int, name: str) -> str:
    """A transform graph (unit normalisation) written by cxrflow's run_transform, cached per code version."""
    from cxrflow.stages.example_gen import split_pattern  # lazy: scipy (~1 s); not every bench needs it

    name = f"{name}_{code_version()}"
    out = os.path.join(WORK_DIR, name)
    if not os.path.exists(os.path.join(out, "transform_config.json")):
        out = fresh_dir(name)
        run_transform(config_for("unused", image_size=image_size), split_pattern(examples_dir, "train"), out)
    return out


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, files in os.walk(path) for f in files)


def result(
    value: float, baseline: float | None, target: float | None, unit: str, higher_is_better: bool, **extra
) -> dict:
    """One results.json entry: ratio = cxrflow / bare; ok against a minimum or a maximum target."""
    if baseline is None or target is None:
        return {"value": value, "baseline": baseline, "ratio": None, "target": None, "ok": True, "unit": unit, **extra}
    ratio = value / baseline if baseline else float("inf")
    ok = ratio >= target if higher_is_better else ratio <= target
    return {
        "value": round(value, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ratio, 4),
        "target": target,
        "ok": bool(ok),
        "unit": unit,
        "target_kind": "min" if higher_is_better else "max",
        **extra,
    }


def load_results() -> dict:
    if os.path.exists(RESULTS_FILE):
        with open(RESULTS_FILE) as f:
            return json.load(f)
    return {}


def save_results(results: dict) -> None:
    tmp = RESULTS_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, RESULTS_FILE)


def profile(name: str, fn: Callable, *args, top: int = 18, **kwargs) -> str:
    """Runs fn under cProfile; writes the top functions by cumulative and by own time."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn(*args, **kwargs)
    finally:
        prof.disable()
    text = io.StringIO()
    for key in ("cumulative", "tottime"):
        text.write(f"=== {name}: top {top} by {key} ===\n")
        pstats.Stats(prof, stream=text).strip_dirs().sort_stats(key).print_stats(top)
    os.makedirs(PROFILE_DIR, exist_ok=True)
    path = os.path.join(PROFILE_DIR, f"{name}.txt")
    with open(path, "w") as f:
        f.write(text.getvalue())
    return path


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
