"""`cxrflow` command line: builds a config from flags and calls the runners; no logic of its own.

User errors (bad flags, missing data, a finished run in the way) print one clear line and exit
with status 2; nothing prints a traceback unless CXRFLOW_DEBUG=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from cxrflow.cli_flags import (
    SHORTCUT_KNOBS,
    absolute_data,
    absolute_path,
    add_config_flags,
    add_shortcut_flags,
    config_from_args,
    csv_list,
    knob_values,
)
from cxrflow.config import ConfigError, PipelineConfig
from cxrflow.console import LOGS_DIR, StageFailed
from cxrflow.io_utils import read_json
from cxrflow.report import build_report
from cxrflow.report.shortcut import summary_lines
from cxrflow.report.shortcut import warnings as shortcut_warnings
from cxrflow.runs import RunExists, run_pipeline_locally
from cxrflow.stage_summary import warnings_block

# What loads TF, Beam, KFP, TFMA, scipy or PIL is imported lazily, inside each cmd_* (runs.py does
# the same for its own): `cxrflow --help` and a bad flag answer in a fraction of a second instead
# of after seconds of TF start-up.

DEMO_OUTPUT = os.path.join("runs", "demo")


def _f(value, width: int) -> str:
    """A metric right-aligned to `width`; "-" where it is undefined (a class absent from the data)."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def print_metrics(metrics: dict) -> None:

    classes = metrics["classes"]
    print(f"\nTest split: n={metrics['n']}  accuracy={metrics['accuracy']:.3f}  "
          f"macro recall={metrics['macro_recall']:.3f}")
    print(f"{'class':<12}{'precision':>10}{'recall':>10}{'specif.':>10}{'f1':>8}{'auc':>8}{'support':>9}")
    for name in classes:
        m = metrics["per_class"][name]
        auc = "-" if m["auc"] is None else f"{m['auc']:.3f}"
        print(f"{name:<12}{_f(m['precision'], 10)}{_f(m['recall'], 10)}{_f(m['specificity'], 10)}"
              f"{_f(m['f1'], 8)}{auc:>8}{m['support']:>9}")
    print("confusion matrix (rows true, columns predicted):")
    width = max(len(c) for c in classes) + 2
    print(" " * width + "".join(f"{c:>{width}}" for c in classes))
    for name, row in zip(classes, metrics["confusion_matrix"], strict=True):
        print(f"{name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    print(*summary_lines(metrics, with_warnings=False), sep="\n")  # the warnings block lists the warnings


def _finish_run(output: str) -> None:

    print_metrics(read_json(os.path.join(output, "metrics.json")))
    blessing = read_json(os.path.join(output, "blessing.json"))
    print("\nblessed" if blessing["blessed"] else "\nNOT blessed", *blessing["reasons"], sep="\n  ")
    push_path = os.path.join(output, "push.json")
    push = read_json(push_path) if os.path.exists(push_path) else {"pushed": False}
    print(f"pushed version {push['version']} to {push['path']}" if push.get("pushed")
          else f"nothing pushed: {push.get('reason', 'see blessing')}")
    warnings = warnings_block(output)
    if warnings:
        print(f"\nwarnings ({len(warnings)}):", *warnings, sep="\n  ")
    print(f"results in {output}/: report.html, metrics.json, slices.json, ingest_report.json and the pictures; "
          f"stage logs in {os.path.join(output, LOGS_DIR)}/")


def cmd_demo(args: argparse.Namespace) -> int:
    from cxrflow.sample_data import write_sample_dataset  # lazy: keeps PIL off `cxrflow --help` and other commands

    output = os.path.abspath(args.output)
    data_dir = os.path.join(output, "sample_data")
    if not os.path.isdir(data_dir):
        print(f"writing the synthetic sample dataset to {data_dir} ...", flush=True)
        write_sample_dataset(data_dir, per_class=args.per_class)
    config = PipelineConfig(
        data=(f"folders:{data_dir}",), image_size=args.image_size, epochs=args.epochs, batch_size=16,
        serving_dir=os.path.join(output, "serving"), seed=args.seed,
    )
    print(f"running the pipeline locally through kfp.local into {output} ...", flush=True)
    run_pipeline_locally(config, output, force=args.force, resume=args.resume, verbose=args.verbose)
    _finish_run(output)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    output = os.path.abspath(args.output)
    config = config_from_args(args, output)
    run_pipeline_locally(config, output, force=args.force, resume=args.resume, verbose=args.verbose)
    _finish_run(output)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from cxrflow.stages.example_gen import run_example_gen  # lazy: pulls in scipy (~1 s), which --help must not pay

    config = config_from_args(args)
    report = run_example_gen(config, os.path.abspath(args.output))
    for source, s in report["sources"].items():
        print(f"{source}: {s['rows']} rows, kept {s['kept']}, excluded {s['excluded']}")
        if s.get("split_unit") == "image":
            print(f"{source}: split by image, not by patient (no patient ids: see --patient-map, --patient-pattern)")
        elif s.get("images_without_patient"):
            print(f"{source}: {s['images_without_patient']} images without a patient, each split as its own patient")
    print(f"duplicates removed: {report['duplicates_removed']}; patient overlap: {report['patient_overlap']}")
    for split, counts in report["splits"].items():
        print(f"{split:>5}: {counts}")
    if report.get("test_source"):
        print(f"test split: every image of {report['test_source']} (external validation)")
    for warning in report.get("confounding", {}).get("warnings", []):
        print(f"warning: {warning}")
    cache = report.get("check_cache")
    if cache:
        bad = cache["unreadable_cache_files"]
        print(f"ingest cache: {cache['reused']} checks reused, {cache['decoded']} images decoded"
              + (f", unreadable cache files {bad}" if bad else ""))
    print(f"report: {os.path.join(args.output, 'ingest_report.json')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrflow.external import run_external_evaluation  # lazy: pulls in scipy (~1 s) through example_gen

    output = os.path.abspath(args.output)
    metrics = run_external_evaluation(
        absolute_path(args.model), [absolute_data(d) for d in args.data], output, label=args.label,
        model_name=args.model_name, force=args.force, views=tuple(args.views), class_map=args.class_map,
        finding_map=args.finding_map, patient_map=absolute_path(args.patient_map), patient_pattern=args.patient_pattern,
        batch_size=args.batch_size, seed=args.seed, beam_args=tuple(args.beam_arg), **knob_values(args, SHORTCUT_KNOBS))
    external = metrics["external"]
    print(f"external evaluation of {external['model_dir']} (trained on: {external['trained_on_text']})")
    print_metrics(metrics)
    absent = metrics.get("classes_absent") or []
    if absent:
        print(f"not in this data: {', '.join(absent)} (no recall, and no AUC where a class has no negatives)")
    found = shortcut_warnings(metrics)
    if found:
        print(f"\nwarnings ({len(found)}):", *found, sep="\n  ")
    print(f"results in {output}/: report.html, metrics.json, slices.json, ingest_report.json and the pictures")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from cxrflow.pipeline import compile_pipeline  # lazy: bound per call, tests patch pipeline.compile_pipeline

    path = compile_pipeline(config_from_args(args), args.output)
    print(f"wrote {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxrflow.predict import predict_files  # lazy: keeps PIL off `cxrflow --help` and other commands

    return predict_files(args.images, args.model, as_json=args.json, tta=args.tta,
                         max_pixels=args.max_pixels, endpoint=args.endpoint, gradcam_dir=args.gradcam)


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = os.path.abspath(args.run_dir)
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
        raise FileNotFoundError(f"{args.run_dir} has no metrics.json: give the output dir of a finished run")
    print(f"wrote {build_report(run_dir)}")
    return 0


def _deploy(args: argparse.Namespace, cron: str | None) -> int:
    """submit/schedule: exactly one target, KFP (--kfp-host) or Vertex AI (--vertex)."""
    from cxrflow import deploy  # lazy: keeps croniter off `cxrflow --help` and other commands

    if bool(args.vertex) == bool(args.kfp_host):
        raise ValueError("choose one target: --kfp-host URL or --vertex (with --project, --region, --pipeline-root)")
    if args.vertex:
        common = {"project": args.project or "", "region": args.region or "", "pipeline_root": args.pipeline_root or "",
                  "display_name": args.display_name, "service_account": args.service_account}
        if cron is None:
            result = deploy.submit_vertex(args.package, **common)
        else:
            result = deploy.schedule_vertex(args.package, cron=cron, **common)
    elif cron is None:
        result = deploy.submit_kfp(args.package, args.kfp_host, experiment=args.experiment)
    else:
        result = deploy.schedule_kfp(args.package, args.kfp_host, cron=cron, experiment=args.experiment or "cxrflow")
    print(f"{'scheduled' if cron else 'submitted'}: {result}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    return _deploy(args, None)


def cmd_schedule(args: argparse.Namespace) -> int:
    return _deploy(args, args.cron)


def _add_deploy_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--package", default="pipeline.yaml", help="compiled pipeline YAML (cxrflow compile)")
    p.add_argument("--kfp-host", default="", help="Kubeflow Pipelines API URL")
    p.add_argument("--vertex", action="store_true", help="submit to Vertex AI Pipelines")
    p.add_argument("--project", default="")
    p.add_argument("--region", default="")
    p.add_argument("--pipeline-root", default="", help="gs:// root for Vertex run artifacts")
    p.add_argument("--service-account", default=None)
    p.add_argument("--display-name", default="cxrflow")
    p.add_argument("--experiment", default=None)


def _add_rerun_flags(p: argparse.ArgumentParser) -> None:
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="start over in an output dir with a finished run")
    again.add_argument("--resume", action="store_true",
                       help="rerun in an output dir with a finished run, reusing its unchanged stages")
    p.add_argument("--verbose", action="store_true",
                   help="also stream everything the stages print (kept in OUTPUT/logs/<stage>.log either way)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on the bundled synthetic sample")
    demo.add_argument("--output", default=DEMO_OUTPUT)
    demo.add_argument("--per-class", type=int, default=120)
    demo.add_argument("--image-size", type=int, default=128)
    demo.add_argument("--epochs", type=int, default=25)
    demo.add_argument("--seed", type=int, default=42)
    _add_rerun_flags(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the whole pipeline locally on your data")
    add_config_flags(run, data_required=True)
    run.add_argument("--output", required=True)
    _add_rerun_flags(run)
    run.set_defaults(func=cmd_run)

    ingest = sub.add_parser("ingest", help="run ExampleGen alone and print the ingestion report")
    add_config_flags(ingest, data_required=True)
    ingest.add_argument("--output", required=True)
    ingest.set_defaults(func=cmd_ingest)

    comp = sub.add_parser("compile", help="write the KFP IR YAML for Kubeflow or Vertex AI Pipelines")
    add_config_flags(comp, data_required=False)
    comp.add_argument("--output", default="pipeline.yaml")
    comp.set_defaults(func=cmd_compile)

    pred = sub.add_parser("predict", help="classify image files with an exported or pushed model")
    pred.add_argument("images", nargs="+")
    pred.add_argument("--model", default=None, help="a SavedModel dir (e.g. runs/demo/serving/cxrflow/1)")
    pred.add_argument("--endpoint", default=None,
                      help="TF Serving REST model URL (http://HOST:8501/v1/models/cxrflow) or a Vertex endpoint "
                      "(projects/P/locations/R/endpoints/E)")
    pred.add_argument("--tta", type=int, default=1)
    pred.add_argument("--json", action="store_true")
    pred.add_argument("--max-pixels", type=int, default=50_000_000)
    pred.add_argument("--gradcam", default=None, metavar="OUT_DIR",
                      help="also write OUT_DIR/<image stem>_gradcam.png per predicted image (needs --model)")
    pred.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="score an existing model on any dataset (external validation; no training)")
    ev.add_argument("--model", required=True, help="a SavedModel dir, or a serving dir (its newest version is used)")
    ev.add_argument("--data", action="append", required=True, metavar="KIND:PATH", help="a dataset (repeatable)")
    ev.add_argument("--output", required=True)
    ev.add_argument("--label", default="", metavar="CLASS",
                    help="the class of images lying directly in a folders: root (a flat folder of one class)")
    ev.add_argument("--model-name", default="cxrflow", help="the model's name inside a serving dir")
    ev.add_argument("--views", type=csv_list, default=PipelineConfig.views,
                    help="views to keep where metadata names them")
    ev.add_argument("--class-map", default="", help="FOLDER=CLASS,... folder-name overrides")
    ev.add_argument("--finding-map", default="", help="[KIND:]FINDING_PREFIX=CLASS,... overrides for findings")
    ev.add_argument("--patient-map", default="", metavar="CSV",
                    help="folders sources: CSV file,patient naming each file's patient (bootstrap CIs by patient)")
    ev.add_argument("--patient-pattern", default="", metavar="REGEX",
                    help="folders sources: the patient from the file name (group `patient`, else the first group)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--seed", type=int, default=42, help="seeds the bootstrap CIs")
    ev.add_argument("--beam-arg", action="append", default=[], metavar="ARG")
    ev.add_argument("--force", action="store_true", help="redo an evaluation already in --output")
    add_shortcut_flags(ev)
    ev.set_defaults(func=cmd_evaluate)

    report = sub.add_parser("report", help="(re)build report.html from a finished run's output dir")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's --output dir (holds metrics.json)")
    report.set_defaults(func=cmd_report)

    submit = sub.add_parser("submit", help="submit the compiled pipeline to KFP or Vertex AI")
    _add_deploy_flags(submit)
    submit.set_defaults(func=cmd_submit)

    schedule = sub.add_parser("schedule", help="retrain on a cron schedule on KFP or Vertex AI")
    _add_deploy_flags(schedule)
    schedule.add_argument("--cron", required=True, help='standard 5-field cron, e.g. "0 3 * * 1"')
    schedule.set_defaults(func=cmd_schedule)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunExists, ValueError, FileNotFoundError, KeyboardInterrupt) as e:
        if os.environ.get("CXRFLOW_DEBUG"):
            raise
        message = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"cxrflow: error: {message}", file=sys.stderr)
        return 2
    except StageFailed as e:  # the console has named the stage; its log holds the traceback
        if os.environ.get("CXRFLOW_DEBUG"):
            raise
        print(f"cxrflow: failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a failed pipeline task (kfp.local), a stage, or something unforeseen
        if os.environ.get("CXRFLOW_DEBUG"):
            raise
        prefix = "failed" if isinstance(e, RuntimeError) else f"unexpected {type(e).__name__}"
        print(f"cxrflow: {prefix}: {e}", file=sys.stderr)
        print(json.dumps({"hint": "rerun with CXRFLOW_DEBUG=1 for the full traceback"}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
