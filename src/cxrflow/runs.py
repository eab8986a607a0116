"""Local runs: an output dir that holds one run's pipeline root, its headline files and the
serving dir, and the rules for reusing or refusing it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys

from cxrflow.config import PipelineConfig
from cxrflow.io_utils import read_json, write_json_atomic
from cxrflow.report import REPORT_FILE, build_report

PIPELINE_ROOT = "pipeline_root"
WORK_DIR = "work"
RUN_CONFIG = "run_config.json"
# Files copied from the run's artifacts to the output dir, by (task, artifact) folder.
HEADLINE_FILES = {
    "metrics.json": ("evaluator", "evaluation"),
    "slices.json": ("evaluator", "evaluation"),
    "blessing.json": ("evaluator", "evaluation"),
    "confusion_matrix.png": ("evaluator", "evaluation"),
    "roc_curves.png": ("evaluator", "evaluation"),
    "tsne.png": ("evaluator", "evaluation"),
    "tsne.json": ("evaluator", "evaluation"),
    "gradcam.png": ("evaluator", "evaluation"),
    "gallery.json": ("evaluator", "evaluation"),
    "gallery": ("evaluator", "evaluation"),  # a folder: the gallery's pictures
    "ingest_report.json": ("example-gen", "examples"),
    "push.json": ("pusher", "pushed"),
    "training_summary.json": ("trainer", "model_run"),
}


class RunExists(RuntimeError):
    """The output dir already holds a finished run."""


def prepare_output(output_dir: str, force: bool = False, resume: bool = False) -> None:
    """Decides what an existing output dir allows.

    - An unfinished run (killed, or failed) is continued: completed stages are reused and the
      Trainer resumes from its last epoch backup (work/).
    - A finished run is refused unless `resume` (reuse every stage whose inputs and settings
      are unchanged, recompute the rest) or `force` (start over: work/ is cleared).
    The serving dir is never cleared: it is the deployment, and the next push compares against
    (and versions after) what it holds.
    """
    finished = os.path.exists(os.path.join(output_dir, "metrics.json"))
    if finished and not (force or resume):
        raise RunExists(
            f"{output_dir} already holds a finished run (metrics.json); pass --resume to reuse its "
            "completed stages, --force to start over (the serving dir is kept), or choose another --output"
        )
    if force:
        shutil.rmtree(os.path.join(output_dir, WORK_DIR), ignore_errors=True)
    shutil.rmtree(os.path.join(output_dir, PIPELINE_ROOT), ignore_errors=True)
    # report.html too: a stale report from the previous run must not outlive a failed rebuild.
    for name in (*HEADLINE_FILES, REPORT_FILE):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    os.makedirs(output_dir, exist_ok=True)


def latest_run_dir(output_dir: str) -> str:
    runs = sorted(glob.glob(os.path.join(output_dir, PIPELINE_ROOT, "*")), key=os.path.getmtime)
    if not runs:
        raise FileNotFoundError(f"no pipeline run found under {output_dir}/{PIPELINE_ROOT}")
    return runs[-1]


def collect_outputs(output_dir: str) -> dict[str, str]:
    """Copies the headline files of the newest run to `output_dir`; returns what was copied."""
    run = latest_run_dir(output_dir)
    copied = {}
    for name, (task, artifact) in HEADLINE_FILES.items():
        src = os.path.join(run, task, artifact, name)
        if name == "push.json" and not os.path.exists(src):  # not blessed: the dsl.Else task wrote it
            src = os.path.join(run, "push-skipped", artifact, name)
        dst = os.path.join(output_dir, name)
        tmp = dst + ".tmp"
        if os.path.isdir(src):  # a folder is replaced whole: no mix of two runs' pictures
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)
            copied[name] = dst
        elif os.path.exists(src):
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            copied[name] = dst
    return copied


def preflight(config: PipelineConfig) -> None:
    """Checks what can be checked before any task starts, so mistakes get a one-line error."""
    from cxrflow.sources import adapter_for  # lazy: PIL and every adapter; `cxrflow --help` imports this module

    if not config.data:
        raise ValueError("no data given: pass --data KIND:PATH at least once")
    for entry in config.data:
        adapter_for(entry, config.classes, config.source_options())  # unknown KIND -> ValueError
        root = entry.partition(":")[2]
        if "://" not in root and not os.path.isdir(root):
            raise FileNotFoundError(f"data folder not found: {root}")


def run_pipeline_locally(config: PipelineConfig, output_dir: str, force: bool = False, resume: bool = False,
                         verbose: bool = False) -> dict:
    """Prepares `output_dir`, runs the pipeline through kfp.local and collects the results.

    The console shows the stages; what they print goes to `output_dir/logs/` (console.py).
    """
    from cxrflow.pipeline import run_local  # lazy: bound per call, tests patch pipeline.run_local

    preflight(config)
    prepare_output(output_dir, force, resume)
    config = config.replace(work_dir=os.path.join(os.path.abspath(output_dir), WORK_DIR))
    write_json_atomic(os.path.join(output_dir, RUN_CONFIG), json.loads(config.to_json()))
    run_local(config, os.path.join(output_dir, PIPELINE_ROOT), output_dir=output_dir, verbose=verbose)
    collect_outputs(output_dir)
    try:
        build_report(output_dir)
    except Exception as e:  # the report is a convenience: never fail a finished run over it
        print(f"cxrflow: warning: {REPORT_FILE} not built: {type(e).__name__}: {e}", file=sys.stderr)
    return read_json(os.path.join(output_dir, "metrics.json"))
