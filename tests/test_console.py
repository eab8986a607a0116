"""The console of local runs: stage lines, progress bars, per-stage logs, failures, warnings.

Unit tests feed the router a transcript written the way kfp.local prints; the e2e tests run
`cxrflow demo` twice at tiny settings: once on a pipe (shared by several tests), once under a
pseudo-terminal made to fail in Transform.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from cxrflow import console, progress, stage_summary
from cxrflow.stage_summary import failure_reason, warnings_block

STAGES = ("ExampleGen", "Transform", "Resample", "Trainer", "Evaluator", "Pusher")
DEMO = ("demo", "--per-class", "14", "--image-size", "32", "--epochs", "2")
PER_CLASS, CLASSES = 14, 3


def kfp_lines(task: str, body: list[str], status: str = "SUCCESS") -> str:
    """What kfp.local prints for one task: colour codes, a four-space indent on the task's output."""
    name = f"\x1b[96m'{task}'\x1b[0m"
    out = [f"12:00:00.000 - INFO - Executing task {name}", "12:00:00.001 - INFO - Streamed logs:", ""]
    out += ["    " + line for line in body]
    colour = "92" if status == "SUCCESS" else "91"
    out.append(f"12:00:01.000 - INFO - Task {name} finished with status \x1b[{colour}m{status}\x1b[0m")
    return "\n".join(out) + "\n"


def write_json(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def test_router_sends_each_stage_to_its_log_and_prints_one_line_per_start_and_end(tmp_path):
    root = tmp_path / "pipeline_root"
    # ExampleGen's artifact as the stage writes it: 7 + 2 + 3 images kept, 2 skipped.
    write_json(
        str(root / "run-1" / "example-gen" / "examples" / "ingest_report.json"),
        {
            "splits": {"test": {"a": 3}, "train": {"a": 4, "b": 3}, "eval": {"a": 1, "b": 1}},
            "skipped": [{"path": "x", "reason": "corrupt"}, {"path": "y", "reason": "duplicate"}],
        },
    )
    write_json(
        str(root / "run-1" / "trainer" / "model_run" / "training_summary.json"),
        {
            "history": [
                {"val_loss": 0.9, "val_accuracy": 0.5},
                {"val_loss": 0.4, "val_accuracy": 0.8},
                {"val_loss": 0.6, "val_accuracy": 0.7},
            ]
        },
    )
    out = io.StringIO()
    router = console.StageRouter(console.Console(out, tty=False), str(tmp_path / "logs"), str(root))
    router.write("12:00:00.000 - INFO - Running pipeline: 'cxrflow'\n")
    # Pieces, as print() writes them: the indent and the line arrive separately.
    for piece in kfp_lines(
        "example-gen",
        ["Beam says hi", progress.MARKER + '{"bar": "files checked", "start": true, "total": 14, "unit": "files"}'],
    ):
        router.write(piece)
    router.write(kfp_lines("trainer", ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]))
    router.write(kfp_lines("transform", ["transform: reused the completed output of an earlier run (/w/t)"]))
    router.close()
    lines = out.getvalue().splitlines()  # the bar of 14 files never passed a quarter: no line for it
    assert len(lines) == 7 and lines[0] == "-> ExampleGen ..." and lines[2] == "-> Trainer ...", lines
    assert lines[4:6] == ["-> Transform ...", "    transform: reused the completed output of an earlier run (/w/t)"]
    assert re.fullmatch(
        r"ok ExampleGen done in \d+\.\d s: 12 images kept \(train 7, eval 2, test 3\), 2 excluded", lines[1]
    )
    assert re.fullmatch(r"ok Trainer done in \d+\.\d s: best epoch 2 of 3 \(val_loss 0.400, val_acc 0.800\)", lines[3])
    logs = tmp_path / "logs"
    gen = (logs / "example-gen.log").read_text()
    assert "Beam says hi\n" in gen and "    Beam says hi" not in gen  # kfp's indent taken off
    assert progress.MARKER.strip() not in gen  # progress is drawn, not logged
    assert "Epoch 2/3" in (logs / "trainer.log").read_text() and "Epoch" not in gen
    assert "Running pipeline" in (logs / console.PIPELINE_LOG).read_text()


def test_failed_stage_is_named_with_the_last_exception_and_its_log(tmp_path):
    out = io.StringIO()
    router = console.StageRouter(console.Console(out, tty=False), str(tmp_path / "logs"), str(tmp_path))
    body = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "    raise OSError('no')",
        "OSError: [Errno 2] cannot read /data/transform_module.py",
        "",
        "some trailing chatter",
    ]
    router.write(kfp_lines("transform", body, status="FAILURE"))  # kfp.local logs it, raises later
    assert router.failed == (
        "Transform",
        "OSError: [Errno 2] cannot read /data/transform_module.py",
        str(tmp_path / "logs" / "transform.log"),
    )
    assert "FAILED Transform failed after" in out.getvalue()
    assert f"log: {tmp_path / 'logs' / 'transform.log'}" in out.getvalue()


def test_verbose_streams_every_line_and_still_keeps_the_logs(tmp_path):
    from cxrflow.cli import build_parser

    assert build_parser().parse_args(["demo", "--verbose"]).verbose
    assert build_parser().parse_args(["run", "--data", "folders:x", "--output", "o", "--verbose"]).verbose
    shown, echo = io.StringIO(), io.StringIO()
    router = console.StageRouter(console.Console(shown, tty=False), str(tmp_path / "logs"), str(tmp_path), echo)
    router.write(kfp_lines("resample", ["counts: 3"]))
    router.close()
    assert "    counts: 3\n" in echo.getvalue() and "\x1b[96m'resample'" in echo.getvalue()  # as kfp.local prints
    assert "counts: 3" not in shown.getvalue() and "ok Resample done in" in shown.getvalue()
    assert "counts: 3\n" in (tmp_path / "logs" / "resample.log").read_text()


def test_an_interrupted_stage_is_named_with_its_log(tmp_path):
    out = io.StringIO()
    router = console.StageRouter(console.Console(out, tty=False), str(tmp_path / "logs"), str(tmp_path))
    router.write("12:00:00.000 - INFO - Executing task 'trainer'\n    Epoch 1/30\n")
    router.close()
    assert out.getvalue().splitlines()[-1] == f"Trainer interrupted; log: {tmp_path / 'logs' / 'trainer.log'}"


def test_failure_reason_without_a_traceback_is_the_last_line(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("starting\nKilled\n\n")
    assert failure_reason(str(log)) == "Killed"
    assert failure_reason(str(tmp_path / "none.log")) == "no log was written"


def test_capture_turns_kfp_errors_into_stage_failed_and_restores_stdout(tmp_path):
    saved = sys.stdout
    with pytest.raises(console.StageFailed) as caught:
        with console.capture(str(tmp_path), str(tmp_path / "root")):
            print(kfp_lines("transform", ["ValueError: bad graph"], status="FAILURE"), end="")
            raise RuntimeError("Pipeline 'cxrflow' finished with status FAILURE")
    assert sys.stdout is saved and progress.ENV not in os.environ
    assert caught.value.stage == "Transform" and caught.value.reason == "ValueError: bad graph"
    # An error before any task ran is not a stage's: it passes through unchanged.
    with pytest.raises(RuntimeError, match="before"):
        with console.capture(str(tmp_path / "b"), str(tmp_path / "root")):
            raise RuntimeError("before")


def test_bars_on_a_terminal_and_few_plain_lines_on_a_pipe():
    events = [
        {"bar": "epochs (train)", "done": e, "total": 8, "info": f"loss {1 / e:.3f} val_loss 0.5"} for e in range(1, 9)
    ]
    tty = io.StringIO()
    c = console.Console(tty, tty=True)
    for event in events:
        c.progress(event)
    c.close_bars()
    drawn = tty.getvalue()
    assert "epochs (train)" in drawn and "8/8" in drawn and "%|" in drawn and "loss 0.125" in drawn
    pipe = io.StringIO()
    c = console.Console(pipe, tty=False)
    for event in events:
        c.progress(event)
    # One line as each quarter is passed (2, 4, 6 of 8); the stage's end line reports the last.
    assert [line.split(":")[1].split()[0] for line in pipe.getvalue().splitlines()] == ["2/8", "4/8", "6/8"]
    assert "\r" not in pipe.getvalue()


def test_progress_prints_only_when_the_parent_asks(monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.start("x", 3)
    progress.add("x")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv(progress.ENV, "1")
    items = list(progress.iterate(range(5), "y", unit="batches"))
    lines = [json.loads(line[len(progress.MARKER) :]) for line in capsys.readouterr().out.splitlines()]
    assert items == list(range(5))
    assert lines[0] == {"bar": "y", "start": True, "total": None, "unit": "batches"}
    assert sum(e.get("add", 0) for e in lines) == 5  # throttled, yet every item counted


def test_warnings_block_gathers_training_shortcut_confounding_and_blessing(tmp_path):
    assert warnings_block(str(tmp_path)) == []  # nothing written yet: nothing to say
    write_json(
        str(tmp_path / "metrics.json"),
        {"shortcut": {"trait_probe": {"warning": "file traits alone score 0.9"}, "lungs_hidden": {"warning": None}}},
    )
    write_json(str(tmp_path / "ingest_report.json"), {"confounding": {"warnings": ["covid comes from one source"]}})
    write_json(
        str(tmp_path / "blessing.json"),
        {"blessed": False, "reasons": ["macro_recall = 0.850 >= 0.800", "recall:covid = 0.700 < 0.900"]},
    )
    write_json(str(tmp_path / "training_summary.json"), {"learned": False, "warnings": ["learned nothing usable"]})
    assert warnings_block(str(tmp_path)) == [
        "training: learned nothing usable",
        "shortcut: file traits alone score 0.9",
        "confounding: covid comes from one source",
        "not blessed: recall:covid = 0.700 < 0.900",
    ]


# --- end to end ---------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cxrflow.cli", *args]


@pytest.fixture(scope="session")
def piped_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("console") / "demo"
    done = subprocess.run(_cli(*DEMO, "--output", str(out)), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out, done


@pytest.mark.e2e
def test_demo_on_a_pipe_is_short_and_names_every_stage_with_its_time(piped_demo):
    out, done = piped_demo
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    for stage in STAGES:
        assert any(re.match(rf"ok {stage} done in \d+\.\d s", line) for line in lines), (stage, lines)
    text = "\n".join(lines)
    for noise in ("Traceback", "Executing task", "[KFP Executor", "\r", "%|"):
        assert noise not in text, noise
    # ExampleGen's figure against the files on disk: every sample image kept, none excluded.
    files = sum(len(f) for _, _, f in os.walk(out / "sample_data"))
    assert files == PER_CLASS * CLASSES
    assert f"{files} images kept" in text and ", 0 excluded" in text
    metrics = json.load(open(out / "metrics.json"))
    assert f"test macro recall {metrics['macro_recall']:.3f}" in text
    assert "macro recall" in done.stdout  # the metrics table stays


@pytest.mark.e2e
def test_every_stage_keeps_a_nonempty_log(piped_demo):
    out, _ = piped_demo
    logs = out / console.LOGS_DIR
    names = {p.name for p in logs.iterdir()}
    pusher = "pusher.log" if "pusher.log" in names else "push-skipped.log"  # blessed or not
    for name in ("example-gen.log", "transform.log", "resample.log", "trainer.log", "evaluator.log", pusher):
        assert (logs / name).stat().st_size > 0, name
    assert "Epoch 2/2" in (logs / "trainer.log").read_text()  # Keras's own lines are kept
    assert "[KFP Executor" in (logs / "example-gen.log").read_text()


@pytest.mark.e2e
def test_demo_gallery_holds_every_mistake_with_its_image(piped_demo):
    import tensorflow as tf

    from cxrflow import features as fk

    out, _ = piped_demo
    metrics = json.load(open(out / "metrics.json"))
    confusion = np.array(metrics["confusion_matrix"])
    n_wrong = int(confusion.sum() - np.trace(confusion))  # TFMA's count, not the gallery's
    gallery = json.load(open(out / "gallery.json"))
    entries = gallery["entries"]
    assert gallery["n_wrong"] == n_wrong and sum(not e["correct"] for e in entries) == min(n_wrong, 24)
    # Each entry names the test image it shows: its true class is that example's label.
    run = max((out / "pipeline_root").iterdir(), key=os.path.getmtime)
    labels = {}
    for record in tf.data.TFRecordDataset(sorted(map(str, run.glob("example-gen/examples/Split-test/*")))):
        ex = tf.train.Example.FromString(record.numpy()).features.feature
        labels[ex[fk.IMAGE_ID_KEY].bytes_list.value[0].decode()] = ex[fk.LABEL_KEY].bytes_list.value[0].decode()
    for e in entries:
        assert labels[e["image_id"]] == e["true"], e
        assert (e["predicted"] == e["true"]) == e["correct"]
        assert (out / e["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count('class="card') == len(entries)


FAIL_IN_TRANSFORM = """
import cxrflow.stages.transform as transform

def _unreadable(*args, **kwargs):
    raise FileNotFoundError("transform module not readable: /nonexistent/preprocessing.py")

transform.run_transform = _unreadable
"""


def _run_in_pty(cmd: list[str], env: dict, timeout: float) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # bars need a width
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = -9
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.e2e
def test_in_a_terminal_bars_are_drawn_and_a_failed_transform_is_named_with_its_log(tmp_path):
    """Transform is made to fail the way a bad module path would: its stage function raises in
    the task's own process (a sitecustomize on PYTHONPATH, which every task inherits)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_IN_TRANSFORM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    env.pop("CXRFLOW_DEBUG", None)
    out = tmp_path / "demo"
    code, text = _run_in_pty(_cli(*DEMO, "--output", str(out)), env, timeout=900)
    assert code == 1, text[-4000:]
    assert re.search(r"files checked.*\d+%\|", text), text[-4000:]  # ExampleGen's bar, drawn by tqdm
    log = out / console.LOGS_DIR / "transform.log"
    assert "Transform failed" in text and str(log) in text
    assert "transform module not readable: /nonexistent/preprocessing.py" in text
    assert "Traceback" not in text
    assert "Traceback" in log.read_text()  # the whole story is kept in the stage's log
    assert not (out / console.LOGS_DIR / "trainer.log").exists()  # nothing ran after it


def test_the_trainer_line_names_the_exported_epoch_when_macro_recall_picks_it(tmp_path):
    """Epoch 3 has the lowest loss, but macro recall kept epoch 2 (head phase): the line must say 2."""
    history = [
        {"phase": "head", "epoch": 1, "val_loss": 0.9, "val_accuracy": 0.5, "val_macro_recall": 0.4},
        {"phase": "head", "epoch": 2, "val_loss": 0.6, "val_accuracy": 0.8, "val_macro_recall": 0.9},
        {"phase": "head", "epoch": 3, "val_loss": 0.5, "val_accuracy": 0.7, "val_macro_recall": 0.6},
    ]
    write_json(str(tmp_path / "model_run" / "training_summary.json"),
               {"monitor": "val_macro_recall", "best_epoch": {"phase": "head", "epoch": 2}, "history": history})
    assert stage_summary._trainer_figure(str(tmp_path)) == (
        "best epoch 2 of 3 (val_loss 0.600, val_acc 0.800, val_macro_recall 0.900)")
