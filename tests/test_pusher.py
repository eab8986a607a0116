import os

import pytest

from cxrflow.stages import pusher


def _model(tmp_path, name="m"):
    """A SavedModel's layout: the graph, variables, assets and the extra assets."""
    d = tmp_path / name
    (d / "variables").mkdir(parents=True)
    (d / "assets").mkdir()
    (d / "assets.extra").mkdir()
    (d / "saved_model.pb").write_bytes(b"pb")
    (d / "fingerprint.pb").write_bytes(b"fp")
    (d / "variables" / "variables.index").write_bytes(b"index")
    (d / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    (d / "assets" / "vocab.txt").write_text("covid")
    (d / "assets.extra" / "cxrflow_model.json").write_text("{}")
    return str(d)


def test_pushes_increasing_versions_and_prunes(tmp_path):
    serving = str(tmp_path / "serving")
    model = _model(tmp_path)
    for expected in (1, 2, 3):
        result = pusher.run_pusher(model, serving, "cxr", keep=2)
        assert result["version"] == expected
    assert pusher.complete_versions(serving, "cxr") == [2, 3]
    assert os.path.exists(os.path.join(serving, "cxr", "3", "saved_model.pb"))


def test_without_a_serving_dir_nothing_is_pushed_and_says_why(tmp_path):
    result = pusher.run_pusher(_model(tmp_path), "", "cxr")
    assert result == {"pushed": False, "reason": "no serving_dir configured"}


def test_a_failed_copy_leaves_no_version_behind(tmp_path, monkeypatch):
    serving = str(tmp_path / "serving")
    pusher.push(_model(tmp_path), serving, "cxr")

    def broken_copy(src, dst):
        os.makedirs(dst)
        open(os.path.join(dst, "saved_model.pb"), "w").close()
        raise OSError("disk full")

    monkeypatch.setattr(pusher.shutil, "copytree", broken_copy)
    with pytest.raises(OSError):
        pusher.push(_model(tmp_path), serving, "cxr")
    assert os.listdir(os.path.join(serving, "cxr")) == ["1"]
    assert pusher.latest_model_dir(serving, "cxr").endswith("/1")


def test_blessed_push_is_registered_in_vertex_with_exact_arguments(tmp_path, monkeypatch):
    from cxrflow import deploy
    from cxrflow.config import PipelineConfig

    calls = []
    monkeypatch.setattr(deploy, "upload_vertex_model", lambda path, **kw: calls.append((path, kw)) or "models/42")
    config = PipelineConfig(vertex_model="cxr", vertex_project="p", vertex_region="europe-west4",
                            vertex_endpoint="endpoints/7")
    result = pusher.run_pusher(_model(tmp_path), str(tmp_path / "s"), "cxr", config=config)
    assert result["vertex_model"] == "models/42"
    assert calls == [(result["path"], {"project": "p", "region": "europe-west4", "display_name": "cxr",
                                       "serving_image": config.vertex_serving_image, "endpoint": "endpoints/7"})]


def test_vertex_upload_of_a_local_push_is_a_clear_error(tmp_path):
    from cxrflow.config import PipelineConfig
    from cxrflow.deploy import DeployError

    config = PipelineConfig(vertex_model="cxr", vertex_project="p", vertex_region="europe-west4")
    with pytest.raises(DeployError, match="gs://"):
        pusher.run_pusher(_model(tmp_path), str(tmp_path / "s"), "cxr", config=config)


def test_object_store_push_writes_success_last_and_readers_honour_it(tmp_path):
    """tf.io.gfile's in-memory ram:// filesystem stands in for gs://: same code path, no network."""
    import tensorflow as tf

    serving = f"ram://{tmp_path.name}/serving"
    first = pusher.push(_model(tmp_path), serving, "cxr")
    assert first["version"] == 1
    assert tf.io.gfile.exists(f"{serving}/cxr/1/_SUCCESS")
    assert tf.io.gfile.exists(f"{serving}/cxr/1/saved_model.pb")
    # A version without _SUCCESS (a copy cut short) is invisible to readers and to the baseline.
    tf.io.gfile.makedirs(f"{serving}/cxr/2/variables")
    assert pusher.complete_versions(serving, "cxr") == [1]
    assert pusher.latest_model_dir(serving, "cxr") == f"{serving}/cxr/1"


def test_object_store_push_writes_the_graph_after_every_other_file(tmp_path, monkeypatch):
    """TF Serving loads a version folder once saved_model.pb is there: on gs:// (ram:// here)
    the weights and assets must be complete before it appears, and _SUCCESS comes last."""
    import tensorflow as tf

    model = _model(tmp_path)
    written = []
    real_copy, real_open = tf.io.gfile.copy, tf.io.gfile.GFile

    def copy(src, dst, overwrite=False):
        written.append(dst)
        return real_copy(src, dst, overwrite=overwrite)

    def gfile_open(name, mode="r"):
        if "w" in mode:
            written.append(name)
        return real_open(name, mode)

    monkeypatch.setattr(tf.io.gfile, "copy", copy)
    monkeypatch.setattr(tf.io.gfile, "GFile", gfile_open)
    serving = f"ram://{tmp_path.name}-order/serving"
    pusher.push(model, serving, "cxr")
    names = [w.split("/cxr/1/", 1)[1] for w in written]
    # Every file of the model, each once; then the graph; then the marker.
    local = sorted(os.path.relpath(os.path.join(d, f), model) for d, _, fs in os.walk(model) for f in fs)
    assert sorted(names[:-1]) == local
    assert names[-2:] == ["saved_model.pb", "_SUCCESS"]
    assert names.index("saved_model.pb") > max(names.index(n) for n in local if n != "saved_model.pb")


def test_a_cut_short_object_store_push_is_redone_clean(tmp_path):
    import tensorflow as tf

    serving = f"ram://{tmp_path.name}-redo/serving"
    tf.io.gfile.makedirs(f"{serving}/cxr/1/variables")
    with tf.io.gfile.GFile(f"{serving}/cxr/1/variables/stale.bin", "w") as f:
        f.write("left by a killed push")
    assert pusher.complete_versions(serving, "cxr") == []
    result = pusher.push(_model(tmp_path), serving, "cxr")
    assert result["version"] == 1
    assert not tf.io.gfile.exists(f"{serving}/cxr/1/variables/stale.bin")
    assert pusher.complete_versions(serving, "cxr") == [1]


def test_an_unblessed_runs_push_json_comes_from_the_else_branch(tmp_path):
    """The Pusher runs only under dsl.If(blessed); otherwise push-skipped writes push.json."""
    from cxrflow import runs

    skipped = tmp_path / "out" / runs.PIPELINE_ROOT / "cxrflow-1" / "push-skipped" / "pushed"
    skipped.mkdir(parents=True)
    (skipped / "push.json").write_text('{"pushed": false, "reason": "model not blessed"}')
    copied = runs.collect_outputs(str(tmp_path / "out"))
    assert "push.json" in copied
    assert (tmp_path / "out" / "push.json").read_text() == '{"pushed": false, "reason": "model not blessed"}'
