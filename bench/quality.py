"""Quality benchmark on real X-rays: cxrflow's default configuration against a bare Keras script.

    python -m bench.quality [--seeds 1,2,3] [--epochs N] [--image-size 224] [--set KEY=VALUE ...]
                            [--skip-baseline] [--label NAME]

Data: `ieee`, `kaggle` and `actualmed` (when an adapter for it exists) under
`$CXRFLOW_REALDATA` or `../shared/realdata`. For each seed (which also picks the patient split)
it runs cxrflow's stage functions (ExampleGen -> Transform -> Resample -> Trainer -> Evaluator)
and, on the same splits, the bare baseline (bench/quality_baseline.py). It prints macro recall,
COVID recall, macro AUC (sklearn, from the test predictions) and recall per class within each
age group with Wilson 95% intervals, per seed and as a mean, and checks the targets:
mean macro recall >= baseline + 0.03, mean COVID recall >= 0.95, COVID recall range across
seeds <= 0.10, training <= 20 min per seed.

`--set` overrides config fields (`--set weight_decay=0.05 --set augmentation.zoom=0.15`); the
default configuration's results go to `bench/results.json` entry `quality`, others to
`quality_ablations[<label>]`. ExampleGen and Transform outputs are cached under
bench/_data/quality by the config fields and source files they depend on; baseline results are
cached per split, so ablations re-train only cxrflow.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings

import cxrflow
from bench import common, quality_baseline
from bench.quality_report import TARGETS, adult_or_child, fmt_row, print_report, score, shortcut_summary, summarise
from cxrflow.config import PipelineConfig, stage_fields
from cxrflow.io_utils import read_json
from cxrflow.sources import ADAPTERS
from cxrflow.stages.evaluator import predict_split, run_evaluator
from cxrflow.stages.resample import run_resample
from cxrflow.stages.trainer import run_trainer
from cxrflow.stages.transform import run_transform

QUALITY_DIR = os.path.join(common.DATA_DIR, "quality")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.dirname(os.path.abspath(cxrflow.__file__))  # the code measured (may be a snapshot)
REALDATA_DEFAULT = os.path.join(REPO, "..", "shared", "realdata")
# Sources the benchmark reads (the ones an adapter exists for), and the folder each lives in.
SOURCES = (("ieee", "ieee"), ("kaggle", "kaggle"), ("actualmed", "actualmed"))
_EXAMPLES_CODE = ("sources", "stages/example_gen.py", "stages/splitting.py", "images.py", "features.py")
_TRANSFORM_CODE = ("stages/transform.py",)


def realdata_root() -> str | None:
    root = os.path.abspath(os.environ.get("CXRFLOW_REALDATA") or REALDATA_DEFAULT)
    return root if os.path.isfile(os.path.join(root, "SOURCES.md")) else None


def _code_hash(parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        path = os.path.join(SRC, part)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".py"))
        for f in files:
            digest.update(os.path.relpath(f, SRC).encode())  # relative: a snapshot elsewhere hashes alike
            with open(f, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(kind: str, key: str, run) -> str:
    """`QUALITY_DIR/<kind>-<key>`, made by run(tmp_dir) once and renamed into place atomically."""
    out = os.path.join(QUALITY_DIR, f"{kind}-{key}")
    tmp = out + ".tmp"
    while not os.path.exists(os.path.join(out, "_COMPLETE")) and _owner_alive(tmp):
        time.sleep(15)  # another benchmark process is making this very output: wait for it
    if not os.path.exists(os.path.join(out, "_COMPLETE")):
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with open(os.path.join(tmp, "_OWNER"), "w") as f:
            f.write(str(os.getpid()))
        run(tmp)
        open(os.path.join(tmp, "_COMPLETE"), "w").close()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def _owner_alive(tmp: str) -> bool:
    try:
        with open(os.path.join(tmp, "_OWNER")) as f:
            pid = int(f.read())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid != os.getpid()


def build_config(root: str, seed: int, image_size: int, epochs: int | None, overrides: list[str]):
    data = tuple(f"{kind}:{os.path.join(root, folder)}" for kind, folder in SOURCES
                 if kind in ADAPTERS and os.path.isdir(os.path.join(root, folder)))
    raw = json.loads(PipelineConfig().to_json())
    raw.update(data=list(data), seed=seed, image_size=image_size, min_recall=[], min_macro_recall=0.0)
    if epochs:
        raw["epochs"] = epochs
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        *parents, leaf = key.split(".")
        target = raw
        for p in parents:
            target = target[p]
        if leaf not in target:
            raise SystemExit(f"--set: unknown config field {key!r}")
        target[leaf] = parsed
    return PipelineConfig.from_dict(raw)


def _test_groups(examples_dir: str) -> list[str]:
    """Age group of every test example, in the order the evaluator's predict_split reads them."""
    import tensorflow as tf  # lazy: --help and the no-data exit must not load TF

    spec = {fk: tf.io.FixedLenFeature([], tf.string) for fk in ("age_group",)}
    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, "Split-test", "*.tfrecord")))
    return [adult_or_child(tf.io.parse_single_example(r, spec)["age_group"].numpy().decode())
            for r in tf.data.TFRecordDataset(files)]


def _stage_settings(config, stage: str) -> dict:
    """The config fields a stage reads (config.stage_fields), so an ablation of a Trainer knob
    reuses ExampleGen's and Transform's outputs."""
    values = json.loads(config.to_json())
    return {k: values[k] for k in stage_fields(stage) if k not in ("work_dir", "beam_args")}


def rescore_seed(config, label: str, skip_baseline: bool) -> dict | None:
    """Scores a finished run of this label and seed again from its model, without training (for a
    benchmark process that was stopped after some seeds). None when that seed's run is unfinished.
    trainer_s is then the time between Resample's and the Trainer's output files."""
    from cxrflow.stages.example_gen import split_pattern  # lazy: keeps scipy (~1 s) off --help

    run_dir = os.path.join(QUALITY_DIR, "runs", label, f"seed{config.seed}")
    summary_path = os.path.join(run_dir, "trainer", "training_summary.json")
    if not os.path.exists(os.path.join(run_dir, "model", "saved_model.pb")) or not os.path.exists(summary_path):
        return None
    ex_key = _key(_stage_settings(config, "example_gen"), _code_hash(_EXAMPLES_CODE))
    examples = os.path.join(QUALITY_DIR, f"examples-{ex_key}")
    resample_path = os.path.join(run_dir, "resample", "resample.json")
    resample, summary = read_json(resample_path), read_json(summary_path)
    labels, probs, _ = predict_split(os.path.join(run_dir, "model"), split_pattern(examples, "test"),
                                     list(config.classes))
    groups = _test_groups(examples)
    out = {"cxrflow": score(labels, probs, groups, list(config.classes)),
           "times": {"trainer_s": round(os.path.getmtime(summary_path) - os.path.getmtime(resample_path), 1)},
           "epochs_run": summary["epochs_run"], "rescored": True,
           "shortcut": shortcut_summary(os.path.join(run_dir, "evaluation", "metrics.json")),
           "splits": read_json(os.path.join(examples, "ingest_report.json"))["splits"],
           "resample": {k: resample.get(k) for k in ("counts_after", "mix_before", "mix_after", "unbalanced")}}
    base_key = _key(ex_key, config.image_size, config.epochs,
                    open(os.path.join(REPO, "bench", "quality_baseline.py")).read())
    if not skip_baseline and os.path.exists(os.path.join(QUALITY_DIR, f"baseline-{base_key}", "_COMPLETE")):
        out["baseline"] = _baseline(examples, config, base_key, groups)
    saved = os.path.join(run_dir, "seed_result.json")
    if os.path.exists(saved):  # the finished run's own stage times beat the file-time estimate
        out["times"] = read_json(saved)["times"]
    return out


def run_seed(config, label: str, skip_baseline: bool, baseline_only: bool = False) -> dict:
    from cxrflow.stages.example_gen import run_example_gen, split_pattern  # lazy: keeps scipy (~1 s) off --help

    times: dict[str, float] = {}

    def step(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        times[name] = round(time.perf_counter() - start, 1)
        return out

    ex_key = _key(_stage_settings(config, "example_gen"), _code_hash(_EXAMPLES_CODE))
    examples = step("example_gen_s", _cached, "examples", ex_key, lambda d: run_example_gen(config, d))
    base_key = _key(ex_key, config.image_size, config.epochs,
                    open(os.path.join(REPO, "bench", "quality_baseline.py")).read())
    if baseline_only:
        return {"baseline": _baseline(examples, config, base_key, _test_groups(examples)), "times": times}
    tf_key = _key(ex_key, _stage_settings(config, "transform"), _code_hash(_TRANSFORM_CODE))
    transform = step("transform_s", _cached, "transform", tf_key,
                     lambda d: run_transform(config, split_pattern(examples, "train"), d))
    report = read_json(os.path.join(examples, "ingest_report.json"))
    run_dir = os.path.join(QUALITY_DIR, "runs", label, f"seed{config.seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    dirs = {n: os.path.join(run_dir, n) for n in ("resample", "model", "trainer", "evaluation")}
    resample = step("resample_s", run_resample, config, split_pattern(examples, "train"), report["splits"]["train"],
                    dirs["resample"])
    summary = step("trainer_s", run_trainer, config, examples, transform, dirs["resample"], dirs["model"],
                   dirs["trainer"])
    evaluator_error = ""
    try:
        # With the train split the Evaluator also fits its file-trait probe (a shortcut check).
        step("evaluator_s", run_evaluator, config, dirs["model"], split_pattern(examples, "test"), dirs["evaluation"],
             None, (), split_pattern(examples, "train"))
    except Exception as e:  # the benchmark's numbers come from predict_split below; say what failed
        evaluator_error = f"{type(e).__name__}: {e}"
        print(f"quality: evaluator failed ({evaluator_error}); scoring from predictions", file=sys.stderr)
    labels, probs, _ = predict_split(dirs["model"], split_pattern(examples, "test"), list(config.classes))
    groups = _test_groups(examples)
    out = {"cxrflow": score(labels, probs, groups, list(config.classes)), "times": times,
           "epochs_run": summary["epochs_run"], "splits": report["splits"], "evaluator_error": evaluator_error,
           "operating_point": summary.get("operating_point", {}),
           "shortcut": shortcut_summary(os.path.join(dirs["evaluation"], "metrics.json")),
           "resample": {k: resample.get(k) for k in ("counts_after", "mix_before", "mix_after", "unbalanced")}}
    if not skip_baseline:
        out["baseline"] = _baseline(examples, config, base_key, groups)
    with open(os.path.join(run_dir, "seed_result.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def _baseline(examples: str, config, key: str, groups) -> dict:
    def run(d):
        res = quality_baseline.train_and_predict(examples, config.classes, config.image_size, config.epochs,
                                                 config.seed)
        scored = score(res["labels"], res["probabilities"], groups, list(config.classes))
        with open(os.path.join(d, "baseline.json"), "w") as f:
            json.dump({**scored, "train_s": round(res["train_s"], 1), "epochs_run": res["epochs_run"]}, f)

    with open(os.path.join(_cached("baseline", key, run), "baseline.json")) as f:
        return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (each also picks the split)")
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs (smoke runs)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--skip-baseline", action="store_true", help="cxrflow only (ablations)")
    parser.add_argument("--label", default="", help="name of this configuration in results.json")
    parser.add_argument("--rescore", action="store_true",
                        help="no training: score the finished seeds of an earlier run of this label again")
    parser.add_argument("--baseline-only", action="store_true",
                        help="ExampleGen + the bare baseline only (fills the cache; writes no results)")
    args = parser.parse_args(argv)
    root = realdata_root()
    if root is None:
        print("quality: skipped: real X-rays not found (set CXRFLOW_REALDATA or place them in ../shared/realdata)")
        return 0
    warnings.filterwarnings("ignore")
    common.quiet()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    is_default = not args.set and args.epochs is None and args.image_size == 224
    label = args.label or ("default" if is_default else "+".join(args.set) or f"epochs{args.epochs}")
    per_seed, configs = {}, {}
    for seed in seeds:
        config = build_config(root, seed, args.image_size, args.epochs, args.set)
        configs[seed] = config
        print(f"== quality {label}: seed {seed}, data {[d.split(':')[0] for d in config.data]} ==", flush=True)
        if args.rescore:
            result = rescore_seed(config, label, args.skip_baseline)
            if result is None:
                print(f"quality: no finished run of {label} for seed {seed}: left out", flush=True)
                continue
            per_seed[seed] = result
        else:
            per_seed[seed] = run_seed(config, label, args.skip_baseline, args.baseline_only)
        side = "baseline" if args.baseline_only else "cxrflow"
        print(fmt_row(side, per_seed[seed][side]), flush=True)
    if args.baseline_only or not per_seed:
        return 0
    seeds = list(per_seed)
    summary = summarise(per_seed, TARGETS["train_s"])
    print_report(per_seed, summary)
    cfg = json.loads(configs[seeds[0]].to_json())
    entry = {
        "label": label, "seeds": {str(s): r for s, r in per_seed.items()},
        # Means, ranges and pooled age-group counts per side ("baseline" at the top level is the
        # baseline's mean macro recall, as in the file's other entries).
        "summary": summary, "checks": summary["checks"], "ok": summary["ok"],
        "value": summary["cxrflow"]["macro_recall_mean"],
        "baseline": summary.get("baseline", {}).get("macro_recall_mean"),
        "unit": "mean macro recall", "target": dict(TARGETS), "target_kind": "quality",
        "config": {k: v for k, v in cfg.items() if k not in ("data", "seed")},
        "data": [d.split(":")[0] for d in configs[seeds[0]].data], "image_size": args.image_size,
        "measured_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {common.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "tree": _tree(),
    }
    results = common.load_results()
    if is_default and seeds == [1, 2, 3]:
        results["quality"] = entry
    else:
        results.setdefault("quality_ablations", {})[label] = entry
    common.save_results(results)
    print(f"results: {common.RESULTS_FILE}")
    return 0


def _tree() -> str:
    def git(*cmd):
        p = subprocess.run(["git", "-C", REPO, *cmd], capture_output=True, text=True, check=False)
        return p.stdout.strip()

    if not SRC.startswith(REPO + os.sep):  # measuring a snapshot of the code (PYTHONPATH)
        return f"cxrflow from {SRC}" + (f" ({os.environ['CXRFLOW_SRC_COMMIT']})" if "CXRFLOW_SRC_COMMIT" in os.environ
                                         else "")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (
        " + uncommitted src/ edits" if git("status", "--porcelain", "--", "src") else "")


if __name__ == "__main__":
    sys.exit(main())
