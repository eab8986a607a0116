import json
import os

import pytest

from cxrflow.stages import pusher


def _model(tmp_path, name="m"):
    d = tmp_path / name
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"pb")
    return str(d)


def _evaluation(tmp_path, blessed):
    d = tmp_path / f"eval-{blessed}"
    d.mkdir()
    (d / "blessing.json").write_text(json.dumps({"blessed": blessed, "reasons": ["macro_recall = 0.5 < 0.8"]}))
    return str(d)


def test_pushes_increasing_versions_and_prunes(tmp_path):
    serving = str(tmp_path / "serving")
    model = _model(tmp_path)
    for expected in (1, 2, 3):
        result = pusher.run_pusher(model, _evaluation(tmp_path, True) if expected == 1 else str(tmp_path / "eval-True"),
                                   serving, "cxr", keep=2)
        assert result["version"] == expected
    assert pusher.complete_versions(serving, "cxr") == [2, 3]
    assert os.path.exists(os.path.join(serving, "cxr", "3", "saved_model.pb"))


def test_unblessed_model_pushes_nothing_and_says_why(tmp_path):
    result = pusher.run_pusher(_model(tmp_path), _evaluation(tmp_path, False), str(tmp_path / "s"), "cxr")
    assert result["pushed"] is False and "not blessed" in result["reason"]
    assert not os.path.exists(tmp_path / "s")


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
    result = pusher.run_pusher(_model(tmp_path), _evaluation(tmp_path, True), str(tmp_path / "s"), "cxr",
                               config=config)
    assert result["vertex_model"] == "models/42"
    assert calls == [(result["path"], {"project": "p", "region": "europe-west4", "display_name": "cxr",
                                       "serving_image": config.vertex_serving_image, "endpoint": "endpoints/7"})]


def test_vertex_upload_of_a_local_push_is_a_clear_error(tmp_path):
    from cxrflow.config import PipelineConfig
    from cxrflow.deploy import DeployError

    config = PipelineConfig(vertex_model="cxr", vertex_project="p", vertex_region="europe-west4")
    with pytest.raises(DeployError, match="gs://"):
        pusher.run_pusher(_model(tmp_path), _evaluation(tmp_path, True), str(tmp_path / "s"), "cxr", config=config)


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
