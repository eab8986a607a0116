"""peak_rss_ratio_4x: peak RSS of the Beam data stages in a fresh subprocess at 4x the data / at 1x.

The child runs ExampleGen, then Transform with z-score normalisation (so TFT's analyzers make a
full pass over the training pixels), then Resample in `over` mode (reads and rewrites the
training split): every stage that streams the dataset. The Trainer is left out on purpose: it
caches decoded tensors in memory up to 2 GiB by design (then in a file), so its RSS grows with
data until that cap.

Each run is its own child process (`python -m bench.rss --child ...`) that reports its own
high-water mark, VmHWM from /proc/self/status (plus getrusage(RUSAGE_CHILDREN) for any
processes it waited for). Not getrusage(RUSAGE_SELF): Linux carries ru_maxrss over fork+exec,
so a child of a big parent (run_all after the trainer) reports the parent's peak; and not a
parent-side RUSAGE_CHILDREN, which keeps the maximum over all earlier children. A third child only imports
the same modules, so the report can show how much of the peak is the interpreter + TF + Beam
import floor and how much grows with the data.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from bench import common, data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: best effort


def _child(root: str | None, out: str) -> None:
    common.quiet()
    import apache_beam  # noqa: F401  # lazy (these two and the stages): only the measured child loads them, not run_all
    import tensorflow  # noqa: F401

    from cxrflow.stages import example_gen, resample, transform

    if root:
        config = common.config_for(root, normalization="zscore", resample="over", image_size=512)
        examples = common.fresh_dir(out)
        report = example_gen.run_example_gen(config, examples)
        train = example_gen.split_pattern(examples, "train")
        transform.run_transform(config, train, common.fresh_dir(out + "_transform"))
        resample.run_resample(config, train, report["splits"]["train"], common.fresh_dir(out + "_resample"))
    own = _vm_hwm_kb()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("RSS_JSON " + json.dumps({"self_kb": own, "children_kb": kids}), flush=True)


def measure(root: str | None, out: str) -> float:
    """Peak RSS in MB of one child run."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "bench.rss", "--child", "--out", out] + (["--root", root] if root else [])
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RSS_JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"rss child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    got = json.loads(lines[-1].split(" ", 1)[1])
    return max(got["self_kb"], got["children_kb"]) / 1024.0


def run(count: int) -> dict:
    root1 = data.ensure_set(count)
    root4 = data.ensure_set(4 * count)
    floor = measure(None, "rss_none")
    rss1 = measure(root1, "rss_1x")
    rss4 = measure(root4, "rss_4x")
    print(f"[rss] import floor {floor:.0f} MB, 1x ({count}) {rss1:.0f} MB, 4x ({4 * count}) {rss4:.0f} MB", flush=True)
    return {
        "peak_rss_ratio_4x": common.result(
            rss4,
            rss1,
            1.25,
            "MB",
            False,
            images_1x=count,
            images_4x=4 * count,
            import_floor_mb=round(floor, 1),
            above_floor_1x_mb=round(rss1 - floor, 1),
            above_floor_4x_mb=round(rss4 - floor, 1),
            above_floor_ratio=round((rss4 - floor) / max(rss1 - floor, 1.0), 3),
        )
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--root")
    parser.add_argument("--out", default="rss_run")
    args = parser.parse_args()
    if args.child:
        _child(args.root, args.out)
