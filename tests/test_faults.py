"""Fault drills: SIGKILL mid-training and mid-push, refusing finished runs, bad input, and the
Beam stages under the multi-process DirectRunner (separate workers, as on Dataflow)."""

import csv
import glob
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from cxrflow.stages import pusher
from tests.conftest import read_json

pytestmark = pytest.mark.faults
MULTI = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cxrflow.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
        if os.path.isfile(path):
            digest.update(path.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_sigkill_during_training_then_same_command_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    cmd = ("run", "--data", f"folders:{tiny_data}", "--output", str(out), "--image-size", "32", "--epochs", "8",
           "--batch-size", "8", "--min-macro-recall", "0", "--min-recall", "")
    proc = _cli(*cmd)
    deadline = time.time() + 600
    history = None
    while time.time() < deadline:
        found = glob.glob(str(out / "work" / "trainer-*" / "history_train.csv"))
        if found and sum(1 for _ in open(found[0])) >= 3:  # header + 2 finished epochs
            history = found[0]
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed:\n" + proc.stdout.read()[-3000:])
        time.sleep(0.2)
    assert history, "training never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stages = sorted(glob.glob(str(out / "work" / "stages" / "*")))
    assert [os.path.basename(s).split("-")[0] for s in stages] == ["example_gen", "resample", "transform"]
    before = {s: _tree_digest(s) for s in stages}
    killed_epochs = [int(r["epoch"]) for r in csv.DictReader(open(history))]

    again = _cli(*cmd)
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output[-3000:]
    for stage in ("example_gen", "transform", "resample"):
        assert f"{stage}: reused the completed output" in output
    assert {s: _tree_digest(s) for s in stages} == before  # completed stages untouched
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(history))]
    assert epochs[: len(killed_epochs)] == killed_epochs
    resumed = epochs[len(killed_epochs):]
    assert resumed and resumed[0] >= killed_epochs[-1]  # continued, not restarted at epoch 0
    assert resumed[0] != 0
    metrics = read_json(out / "metrics.json")
    assert metrics["n"] > 0
    model = tf.saved_model.load(read_json(out / "push.json")["path"])
    assert "serving_default" in model.signatures

    # The finished run is refused; --resume reuses every stage up to the Trainer.
    refused = subprocess.run([sys.executable, "-m", "cxrflow.cli", *cmd], capture_output=True, text=True)
    assert refused.returncode == 2 and "already holds a finished run" in refused.stderr
    assert "Traceback" not in refused.stderr
    rerun = _cli(*cmd, "--resume")
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output[-3000:]
    assert "trainer: reused the completed output" in output


SLOW_PUSH = """
import shutil, sys, time
from cxrflow.stages import pusher
def slow_copy(src, dst, *a, **k):
    time.sleep(0.3)
    return shutil.copy2(src, dst)
real = shutil.copytree
shutil.copytree = lambda s, d, **k: real(s, d, copy_function=slow_copy)
pusher.push(sys.argv[1], sys.argv[2], "cxr")
"""


def test_sigkill_during_push_never_exposes_a_partial_version(tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    for i in range(20):
        (model / "variables" / f"shard{i}").write_bytes(os.urandom(1024))
    (model / "saved_model.pb").write_bytes(b"pb")
    serving = str(tmp_path / "serving")
    pusher.push(str(model), serving, "cxr")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PUSH, str(model), serving], start_new_session=True)
    base = os.path.join(serving, "cxr")
    deadline = time.time() + 60
    while time.time() < deadline and not any(n.startswith(".tmp-") for n in os.listdir(base)):
        time.sleep(0.05)
    time.sleep(1.0)  # mid-copy
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert pusher.complete_versions(serving, "cxr") == [1]
    assert sorted(n for n in os.listdir(base) if n.isdigit()) == ["1"]
    # The next push cleans the leftover and lands complete.
    assert pusher.push(str(model), serving, "cxr")["version"] == 2
    assert not [n for n in os.listdir(base) if n.startswith(".tmp-")]
    assert len(os.listdir(os.path.join(base, "2", "variables"))) == 20


def test_bad_input_through_ingest_and_run_is_reported_not_crashed(tiny_data, tmp_path):
    from tests.test_predict import BAD_FILES

    data = tmp_path / "data"
    subprocess.run(["cp", "-r", tiny_data, str(data)], check=True)
    for name, content in BAD_FILES.items():
        (data / "covid" / name).write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "cxrflow.cli", "ingest", "--data", f"folders:{data}",
                           "--output", str(tmp_path / "ingest")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = read_json(tmp_path / "ingest" / "ingest_report.json")
    reasons = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
    assert {n: reasons.get(n) for n in BAD_FILES} == {
        "empty.png": "empty", "truncated.png": "corrupt", "random.png": "not_image", "page.jpg": "not_image",
        "bomb.png": "too_large", "tiny.png": "too_small",
    }
    # The same corpus through a whole `run`: the bad files are skipped and reported there too.
    run_out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "cxrflow.cli", "run", "--data", f"folders:{data}", "--output",
                           str(run_out), "--image-size", "32", "--epochs", "1", "--min-macro-recall", "0",
                           "--min-recall", ""], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run_report = read_json(run_out / "ingest_report.json")
    run_reasons = {os.path.basename(s["path"]): s["reason"] for s in run_report["skipped"]}
    assert {n: run_reasons.get(n) for n in BAD_FILES} == {n: reasons[n] for n in BAD_FILES}
    assert "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, "-m", "cxrflow.cli", "run", "--data", f"folders:{tmp_path}/nope",
                              "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "data folder not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def _split_ids(examples_dir):
    from cxrflow import features as fk
    from cxrflow.stages.example_gen import split_pattern

    out = {}
    for split in fk.SPLITS:
        ids = []
        for r in tf.data.TFRecordDataset(glob.glob(split_pattern(examples_dir, split))):
            ex = tf.train.Example.FromString(r.numpy())
            ids.append(ex.features.feature[fk.IMAGE_ID_KEY].bytes_list.value[0])
        out[split] = sorted(ids)
    return out


def test_beam_stages_match_under_the_multi_process_runner(tiny_config, stage_dirs, examples, transform_graph,
                                                          tmp_path):
    from cxrflow.stages.example_gen import run_example_gen, split_pattern
    from cxrflow.stages.resample import run_resample
    from cxrflow.stages.transform import run_transform
    from tests.test_transform import _transformed_train

    multi = tiny_config.replace(beam_args=MULTI)
    report = run_example_gen(multi, str(tmp_path / "examples"))
    assert report["splits"] == examples["splits"]
    assert _split_ids(str(tmp_path / "examples")) == _split_ids(stage_dirs["examples"])

    graph = run_transform(multi, split_pattern(stage_dirs["examples"], "train"), str(tmp_path / "tg"))
    np.testing.assert_allclose(_transformed_train(graph, stage_dirs["examples"]),
                               _transformed_train(transform_graph, stage_dirs["examples"]), atol=1e-6)

    over = multi.replace(resample="under")
    train = split_pattern(stage_dirs["examples"], "train")
    counts = {**examples["splits"]["train"], "covid": examples["splits"]["train"]["covid"] + 3}  # force work
    a = run_resample(over.replace(beam_args=()), train, counts, str(tmp_path / "rs1"))
    b = run_resample(over, train, counts, str(tmp_path / "rs2"))
    assert a["counts_after"] == b["counts_after"]
    assert _split_ids(str(tmp_path / "rs1"))["train"] == _split_ids(str(tmp_path / "rs2"))["train"]


def test_evaluator_beam_part_matches_under_the_multi_process_runner(tmp_path):
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    from cxrflow import features as fk
    from cxrflow.stages.evaluator import eval_config, read_tfma_results, write_prediction_examples

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60).astype(np.float32)
    extras = {fk.LABEL_KEY: [str(i) for i in labels], fk.SOURCE_KEY: ["a", "b"] * 30, fk.VIEW_KEY: [""] * 60,
              fk.SEX_KEY: [""] * 60, fk.AGE_GROUP_KEY: [""] * 60, fk.PATIENT_ID_KEY: [str(i) for i in range(60)]}
    path = str(tmp_path / "p.tfrecord")
    write_prediction_examples(path, labels, probs, extras)
    results = {}
    for name, args in (("single", ()), ("multi", MULTI)):
        tfma.run_model_analysis(eval_shared_model=None, eval_config=eval_config(3), data_location=path,
                                output_path=str(tmp_path / name), pipeline_options=PipelineOptions(list(args)))
        results[name] = read_tfma_results(str(tmp_path / name), 3)
    assert set(results["single"]) == set(results["multi"])
    for key, value in results["single"].items():
        np.testing.assert_array_equal(value["confusion"], results["multi"][key]["confusion"])
        assert value["auc"] == pytest.approx(results["multi"][key]["auc"], abs=1e-6)
