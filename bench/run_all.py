"""Runs the cxrflow benchmarks and writes bench/results.json.

    python -m bench.run_all [--count N] [--only NAME] [--reps R] [--no-profile]

NAME is a benchmark (ingest_vs_decode, ingest_rerun_cached, ingest_only, ingest_transform, disk_per_1000_images,
their `_realdata` twins, trainer, serving_p50_single, serving_p50_batch16, peak_rss_ratio_4x) or a group
(ingest, trainer, serving, rss). Entries of benchmarks not run keep their earlier values in results.json.
When a target is missed, the group is run once more under cProfile and the top functions are
written to bench/_data/profiles/<name>.txt.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
import warnings

from bench import common, demo, ingest, rss, serving, trainer

GROUPS = {
    "ingest": (
        "ingest_vs_decode", "ingest_rerun_cached", "ingest_only", "ingest_transform", "disk_per_1000_images",
        "ingest_vs_decode_realdata", "ingest_rerun_cached_realdata", "ingest_only_realdata",
    ),
    "trainer": ("trainer",),
    "serving": ("serving_p50_single", "serving_p50_batch16"),
    "rss": ("peak_rss_ratio_4x",),
    "demo": ("demo_wall_time",),
}


def _group_of(name: str) -> str:
    if name in GROUPS:
        return name
    for group, names in GROUPS.items():
        if name in names:
            return group
    raise SystemExit(f"unknown benchmark {name!r}; choose from {sorted(GROUPS)} or {sorted(sum(GROUPS.values(), ()))}")


def _run_group(group: str, args) -> dict:
    if group == "ingest":
        out = ingest.run(args.count, reps=args.reps)
        if args.profile and not all(v["ok"] in (True, None) for v in out.values()):
            ingest.profile(args.count)
        return out
    if group == "trainer":
        out = trainer.run(args.count, reps=args.reps)
        if args.profile and not out["trainer"]["ok"]:
            trainer.profile(args.count)
        return out
    if group == "serving":
        out = serving.run(args.count)
        if args.profile and not all(v["ok"] for v in out.values()):
            serving.profile(args.count)
        return out
    if group == "demo":
        return demo.run()
    return rss.run(args.count)


def _git_tree() -> str:
    """HEAD and whether src/ had uncommitted edits: the code measured is the working tree."""
    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", *cmd], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted src/ edits" if git("status", "--porcelain", "--", "src") else "")


def _fmt(entry: dict) -> str:
    if entry.get("skipped"):
        return f"skipped: {entry['skipped']}"
    if entry.get("target_kind") == "max_absolute":
        verdict = "ok" if entry["ok"] else "MISS"
        return f"{entry['value']:>10.2f} {entry['unit']:<20} (absolute target <= {entry['target']})  {verdict}"
    if entry.get("ratio") is None:
        info = f", ratio {entry['ratio_info_only']:.3f} for information" if "ratio_info_only" in entry else ""
        return f"{entry['value']:>10.2f} {entry['unit']:<20} (recorded, no target{info})"
    sign = ">=" if entry.get("target_kind") == "min" else "<="
    verdict = "ok" if entry["ok"] else "MISS"
    return (
        f"{entry['value']:>10.2f} vs bare {entry['baseline']:>10.2f} {entry['unit']:<10} "
        f"ratio {entry['ratio']:>7.3f} (target {sign} {entry['target']})  {verdict}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500, help="images in the 1x dataset (4x for the RSS run)")
    parser.add_argument("--only", action="append", help="a benchmark or group; repeatable")
    parser.add_argument("--reps", type=int, default=2, help="alternating repetitions per side; best counts")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip cProfile on a miss")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    groups = list(dict.fromkeys(_group_of(n) for n in args.only)) if args.only else list(GROUPS)
    results = common.load_results()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = f"{platform.machine()}, {common.cpu_count()} cores, python {platform.python_version()}"
    tree = _git_tree()
    for group in groups:
        start = time.perf_counter()
        print(f"== {group} (count={args.count}) ==", flush=True)
        out = _run_group(group, args)
        # Loaded again just before saving: bench.quality may have written its entries meanwhile.
        results = common.load_results()
        for name, entry in out.items():
            entry.update(count=args.count, measured_at=stamp, machine=machine, tree=tree)
            results[name] = entry
        common.save_results(results)
        print(f"== {group} done in {time.perf_counter() - start:.0f}s ==", flush=True)

    print(f"\nresults ({common.RESULTS_FILE}):")
    for group in groups:
        for name in GROUPS[group]:
            if name in results:
                print(f"  {name:<22} {_fmt(results[name])}")
    missed = [n for g in groups for n in GROUPS[g] if n in results and results[n]["ok"] is False]
    if missed:
        print(f"missed targets: {', '.join(missed)} (see bench/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
