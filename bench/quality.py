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
import math
import os
import platform
import shutil
import sys
import time
import warnings

import numpy as np

import cxrflow
from bench import common

QUALITY_DIR = os.path.join(common.DATA_DIR, "quality")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.dirname(os.path.abspath(cxrflow.__file__))  # the code measured (may be a snapshot)
REALDATA_DEFAULT = os.path.join(REPO, "..", "shared", "realdata")
# Sources the benchmark reads (the ones an adapter exists for), and the folder each lives in.
SOURCES = (("ieee", "ieee"), ("kaggle", "kaggle"), ("actualmed", "actualmed"))
TARGETS = {"macro_recall_gain": 0.03, "covid_recall_mean": 0.95, "covid_recall_range": 0.10, "train_s": 1200}
# Config fields that do not change ExampleGen's output (the cache key leaves them out). A field
# not listed here (e.g. one added later) keys the cache, which can only cost a re-run.
_NOT_EXAMPLES = {
    "image_size", "normalization", "resize_mode", "resample", "oversample_ratio", "class_weights", "balance_by",
    "model", "weights", "epochs", "batch_size", "learning_rate", "early_stopping_patience", "augmentation",
    "weight_decay", "deterministic", "label_smoothing", "dropout", "tta", "min_recall", "min_macro_recall",
    "max_regression", "serving_dir", "model_name", "keep_versions", "vertex_model", "vertex_project",
    "vertex_region", "vertex_endpoint", "vertex_serving_image", "work_dir", "base_image", "beam_args",
    "trainer_resources", "default_resources", "monitor", "warmup_epochs",
}
_TRANSFORM_FIELDS = ("image_size", "normalization", "resize_mode")
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
            digest.update(f.encode())
            with open(f, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(kind: str, key: str, run) -> str:
    """`QUALITY_DIR/<kind>-<key>`, made by run(tmp_dir) once and renamed into place atomically."""
    out = os.path.join(QUALITY_DIR, f"{kind}-{key}")
    if not os.path.exists(os.path.join(out, "_COMPLETE")):
        tmp = out + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        run(tmp)
        open(os.path.join(tmp, "_COMPLETE"), "w").close()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def build_config(root: str, seed: int, image_size: int, epochs: int | None, overrides: list[str]):
    from cxrflow.config import PipelineConfig
    from cxrflow.sources import ADAPTERS

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


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """Wilson score 95% interval of k/n: sound at small n and at 0 or n (unlike a bootstrap)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def adult_or_child(group: str) -> str:
    """child / adult / unknown from an age_group value (the older 0-17/18-39/... bins too)."""
    if group in ("child", "adult"):
        return group
    if not group:
        return "unknown"
    return "child" if group.startswith("0-") else "adult"


def score(labels, probs, groups, classes) -> dict:
    """Macro and per-class recall, macro AUC (sklearn), and per-age-group recall counts."""
    from sklearn.metrics import recall_score, roc_auc_score

    labels, probs = np.asarray(labels), np.asarray(probs)
    pred = probs.argmax(axis=1)
    k = list(range(len(classes)))
    recalls = recall_score(labels, pred, labels=k, average=None, zero_division=0)
    try:
        auc = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=k))
    except ValueError:  # a class absent from test: AUC undefined
        auc = float("nan")
    by_group: dict = {}
    for g in sorted(set(groups)):
        for i, c in enumerate(classes):
            mask = (np.asarray(groups) == g) & (labels == i)
            n = int(mask.sum())
            if n:
                hits = {classes[j]: int(((pred == j) & mask).sum()) for j in k}
                by_group.setdefault(g, {})[c] = {"n": n, "correct": hits[c], "predicted": hits,
                                                "recall": round(hits[c] / n, 4), "ci95": wilson(hits[c], n)}
    return {"macro_recall": round(float(recalls.mean()), 4),
            "recall": {c: round(float(r), 4) for c, r in zip(classes, recalls, strict=True)},
            "covid_recall": round(float(recalls[classes.index("covid")]), 4), "macro_auc": round(auc, 4),
            "n_test": int(len(labels)), "by_age_group": by_group}


def _test_groups(examples_dir: str) -> list[str]:
    """Age group of every test example, in the order the evaluator's predict_split reads them."""
    import tensorflow as tf

    spec = {fk: tf.io.FixedLenFeature([], tf.string) for fk in ("age_group",)}
    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, "Split-test", "*.tfrecord")))
    return [adult_or_child(tf.io.parse_single_example(r, spec)["age_group"].numpy().decode())
            for r in tf.data.TFRecordDataset(files)]


def run_seed(config, label: str, skip_baseline: bool) -> dict:
    from cxrflow.io_utils import read_json
    from cxrflow.stages.evaluator import predict_split, run_evaluator
    from cxrflow.stages.example_gen import run_example_gen, split_pattern
    from cxrflow.stages.resample import run_resample
    from cxrflow.stages.trainer import run_trainer
    from cxrflow.stages.transform import run_transform

    settings = json.loads(config.to_json())
    times: dict[str, float] = {}

    def step(name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        times[name] = round(time.perf_counter() - start, 1)
        return out

    ex_key = _key({k: v for k, v in settings.items() if k not in _NOT_EXAMPLES}, _code_hash(_EXAMPLES_CODE))
    examples = step("example_gen_s", _cached, "examples", ex_key, lambda d: run_example_gen(config, d))
    tf_key = _key(ex_key, {k: settings.get(k) for k in _TRANSFORM_FIELDS}, _code_hash(_TRANSFORM_CODE))
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
        step("evaluator_s", run_evaluator, config, dirs["model"], split_pattern(examples, "test"), dirs["evaluation"])
    except Exception as e:  # the benchmark's numbers come from predict_split below; say what failed
        evaluator_error = f"{type(e).__name__}: {e}"
        print(f"quality: evaluator failed ({evaluator_error}); scoring from predictions", file=sys.stderr)
    labels, probs, _ = predict_split(dirs["model"], split_pattern(examples, "test"), list(config.classes))
    groups = _test_groups(examples)
    out = {"cxrflow": score(labels, probs, groups, list(config.classes)), "times": times,
           "epochs_run": summary["epochs_run"], "splits": report["splits"], "evaluator_error": evaluator_error,
           "resample": {k: resample.get(k) for k in ("counts_after", "mix_before", "mix_after", "unbalanced")}}
    if not skip_baseline:
        base_key = _key(ex_key, config.image_size, config.epochs, _code_hash(()),
                        open(os.path.join(REPO, "bench", "quality_baseline.py")).read())
        out["baseline"] = _baseline(examples, config, base_key, groups)
    return out


def _baseline(examples: str, config, key: str, groups) -> dict:
    from bench import quality_baseline

    def run(d):
        res = quality_baseline.train_and_predict(examples, config.classes, config.image_size, config.epochs,
                                                 config.seed)
        scored = score(res["labels"], res["probabilities"], groups, list(config.classes))
        with open(os.path.join(d, "baseline.json"), "w") as f:
            json.dump({**scored, "train_s": round(res["train_s"], 1), "epochs_run": res["epochs_run"]}, f)

    with open(os.path.join(_cached("baseline", key, run), "baseline.json")) as f:
        return json.load(f)


def summarise(per_seed: dict[int, dict], train_limit_s: float) -> dict:
    """Means, ranges, pooled age-group counts over seeds, and the targets."""
    def sides():
        return [s for s in ("cxrflow", "baseline") if all(s in r for r in per_seed.values())]

    out: dict = {}
    for side in sides():
        rows = [r[side] for r in per_seed.values()]
        covid = [r["covid_recall"] for r in rows]
        pooled: dict = {}
        for r in rows:
            for g, by_class in r["by_age_group"].items():
                for c, cell in by_class.items():
                    p = pooled.setdefault(g, {}).setdefault(c, {"n": 0, "correct": 0, "called_covid": 0})
                    p["n"] += cell["n"]
                    p["correct"] += cell["correct"]
                    p["called_covid"] += cell["predicted"].get("covid", 0)
        for by_class in pooled.values():
            for cell in by_class.values():
                cell["recall"] = round(cell["correct"] / cell["n"], 4)
                cell["ci95"] = wilson(cell["correct"], cell["n"])
        out[side] = {"macro_recall_mean": round(float(np.mean([r["macro_recall"] for r in rows])), 4),
                     "covid_recall_mean": round(float(np.mean(covid)), 4),
                     "covid_recall_range": round(max(covid) - min(covid), 4),
                     "macro_auc_mean": round(float(np.nanmean([r["macro_auc"] for r in rows])), 4),
                     "by_age_group_pooled": pooled}
    train_max = max(r["times"]["trainer_s"] for r in per_seed.values())
    cx = out["cxrflow"]
    checks = {"covid_recall_mean": cx["covid_recall_mean"] >= TARGETS["covid_recall_mean"],
              "covid_recall_range": cx["covid_recall_range"] <= TARGETS["covid_recall_range"],
              "train_s": train_max <= train_limit_s}
    if "baseline" in out:
        gain = cx["macro_recall_mean"] - out["baseline"]["macro_recall_mean"]
        out["macro_recall_gain"] = round(gain, 4)
        checks["macro_recall_gain"] = gain >= TARGETS["macro_recall_gain"]
    out.update(checks=checks, ok=all(checks.values()), trainer_s_max=train_max)
    return out


def _fmt_row(name: str, r: dict) -> str:
    adult = r["by_age_group"].get("adult", {})
    cells = "  ".join(f"adult {c} {v['correct']}/{v['n']} (covid {v['predicted'].get('covid', 0)})"
                      for c, v in adult.items() if c != "covid")
    return (f"  {name:<9} macro recall {r['macro_recall']:.3f}  covid recall {r['covid_recall']:.3f}  "
            f"macro AUC {r['macro_auc']:.3f}  {cells}")


def print_report(per_seed: dict, summary: dict) -> None:
    for seed, r in per_seed.items():
        print(f"seed {seed} (train {r['times']['trainer_s']:.0f}s, {r['epochs_run']} epochs; "
              f"baseline train {r.get('baseline', {}).get('train_s', 0):.0f}s):")
        for side in ("cxrflow", "baseline"):
            if side in r:
                print(_fmt_row(side, r[side]))
    for side in ("cxrflow", "baseline"):
        if side not in summary:
            continue
        s = summary[side]
        print(f"mean {side:<9} macro recall {s['macro_recall_mean']:.3f}  covid recall {s['covid_recall_mean']:.3f} "
              f"(range {s['covid_recall_range']:.3f})  macro AUC {s['macro_auc_mean']:.3f}")
        for g, by_class in s["by_age_group_pooled"].items():
            print(f"    {g:<8} " + "  ".join(
                f"{c} {v['correct']}/{v['n']} = {v['recall']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
                f" (called covid {v['called_covid']})" for c, v in by_class.items()))
    verdict = ", ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in summary["checks"].items())
    print(f"targets: {verdict}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (each also picks the split)")
    parser.add_argument("--epochs", type=int, default=None, help="override the default epochs (smoke runs)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--skip-baseline", action="store_true", help="cxrflow only (ablations)")
    parser.add_argument("--label", default="", help="name of this configuration in results.json")
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
        per_seed[seed] = run_seed(config, label, args.skip_baseline)
        print(_fmt_row("cxrflow", per_seed[seed]["cxrflow"]), flush=True)
    summary = summarise(per_seed, TARGETS["train_s"])
    print_report(per_seed, summary)
    cfg = json.loads(configs[seeds[0]].to_json())
    entry = {
        "label": label, "seeds": {str(s): r for s, r in per_seed.items()}, **summary,
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
    import subprocess

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
