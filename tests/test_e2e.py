"""End-to-end: the demo's pipeline through kfp.local at a small image size, then serving."""

import os
import subprocess
import sys

import pytest

from tests.conftest import png_bytes, read_json


@pytest.mark.e2e
def test_demo_pipeline_end_to_end_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cxrflow.cli", "demo", "--output", str(out), "--per-class", "60",
           "--image-size", "64", "--epochs", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    assert set(metrics) >= {"classes", "n", "accuracy", "macro_recall", "per_class", "confusion_matrix"}
    assert metrics["macro_recall"] > 0.6  # chance is 0.33
    assert "macro recall" in done.stdout
    for name in ("confusion_matrix.png", "blessing.json", "slices.json", "ingest_report.json"):
        assert (out / name).exists(), name
    push = read_json(out / "push.json")
    assert push["pushed"], push
    # Lineage: the push names the Evaluator's blessing artifact, which holds the verdict.
    lineage = read_json(os.path.join(push["blessing_uri"], "blessing.json"))
    assert lineage["blessed"] and lineage["rule"] == "bootstrap" and lineage["had_baseline"] is False
    assert lineage == read_json(out / "blessing.json")
    # The pushed model classifies a PNG's raw bytes.
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    pred = subprocess.run([sys.executable, "-m", "cxrflow.cli", "predict", str(image), "--model", push["path"],
                           "--json"], capture_output=True, text=True, timeout=300)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert '"class"' in pred.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert "Traceback" not in again.stderr
    assert os.path.exists(out / "metrics.json")
