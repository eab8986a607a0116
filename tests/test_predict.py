"""`cxrflow predict` locally and against a TF-Serving-like REST endpoint on loopback."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tensorflow as tf

from cxrflow.cli import main
from tests.conftest import png_bytes
from tests.test_images import forged_png_header

BAD_FILES = {
    "empty.png": b"",
    "truncated.png": png_bytes()[:300],
    "random.png": bytes(range(256)) * 8,
    "page.jpg": b"<!doctype html><html><body>hello</body></html>",
    "bomb.png": forged_png_header(20000, 20000),
    "tiny.png": png_bytes(size=(1, 1)),
}


@pytest.fixture
def image_files(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes())
    (tmp_path / "cmyk.jpg").write_bytes(_cmyk_jpeg())
    bad = []
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
        bad.append(str(tmp_path / name))
    return [str(good), str(tmp_path / "cmyk.jpg")], bad


def _cmyk_jpeg():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes("RGB"))).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


def test_predict_reports_each_bad_file_and_still_predicts_the_good(trained_model, image_files, capsys):
    good, bad = image_files
    code = main(["predict", *good, *bad, str(bad[0]) + ".missing", "--model", trained_model, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [p["file"] for p in out["predictions"]] == good
    assert len(out["errors"]) == len(bad) + 1
    reasons = " ".join(e["error"] for e in out["errors"])
    for text in ("empty file", "not an image", "corrupt", "size limit", "too small", "No such file"):
        assert text in reasons


def test_predict_with_tta_views(trained_model, image_files, capsys):
    good, _ = image_files
    assert main(["predict", good[0], "--model", trained_model, "--tta", "5", "--json"]) == 0
    probs = json.loads(capsys.readouterr().out)["predictions"][0]["probabilities"]
    assert sum(probs.values()) == pytest.approx(1, abs=1e-4)


def test_predict_with_only_bad_files_exits_2_without_traceback(trained_model, image_files, capsys):
    _, bad = image_files
    assert main(["predict", *bad, "--model", trained_model]) == 2
    assert "Traceback" not in capsys.readouterr().err


class _FakeTFServing(BaseHTTPRequestHandler):
    """Decodes the REST body as TF Serving does (b64 -> bytes) and calls serving_default."""

    signature = None
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(self.path)
        images = [base64.b64decode(i["b64"]) for i in body["instances"]]
        out = type(self).signature(images=tf.constant(images, dtype=tf.string))
        rows = []
        for i in range(len(images)):
            rows.append({
                "probabilities": out["probabilities"][i].numpy().tolist(),
                "class_id": int(out["class_id"][i]),
                "class_name": out["class_name"][i].numpy().decode(),
                "classes": [c.decode() for c in out["classes"][i].numpy()],
            })
        payload = json.dumps({"predictions": rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_predict_through_a_rest_endpoint(trained_model, image_files, capsys):
    _FakeTFServing.signature = tf.saved_model.load(trained_model).signatures["serving_default"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeTFServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/models/cxrflow"
        good, _ = image_files
        assert main(["predict", *good, "--endpoint", url, "--json"]) == 0
    finally:
        server.shutdown()
    out = json.loads(capsys.readouterr().out)
    assert _FakeTFServing.requests == ["/v1/models/cxrflow:predict"]
    assert set(out["predictions"][0]["probabilities"]) == {"covid", "bacterial", "normal"}


def test_unreachable_endpoint_is_a_clear_error(image_files, capsys):
    good, _ = image_files
    assert main(["predict", good[0], "--endpoint", "http://127.0.0.1:9/v1/models/cxrflow"]) == 2
    err = capsys.readouterr().err
    assert "could not reach the endpoint" in err and "Traceback" not in err


def test_predict_through_a_vertex_endpoint(trained_model, image_files, capsys, monkeypatch):
    """The Vertex SDK is replaced at its call boundary by a fake that serves the real model."""
    from cxrflow import deploy

    signature = tf.saved_model.load(trained_model).signatures["serving_default"]
    seen = {}

    class FakeEndpoint:
        def __init__(self, endpoint_name):
            seen["name"] = endpoint_name

        def predict(self, instances):
            out = signature(images=tf.constant([base64.b64decode(i["b64"]) for i in instances]))
            rows = [{"probabilities": out["probabilities"][i].numpy().tolist(),
                     "class_name": out["class_name"][i].numpy().decode(),
                     "classes": [c.decode() for c in out["classes"][i].numpy()]} for i in range(len(instances))]
            return type("Prediction", (), {"predictions": rows})()

    real = deploy.predict_vertex
    monkeypatch.setattr(deploy, "predict_vertex", lambda e, i: real(e, i, endpoint_factory=FakeEndpoint))
    good, _ = image_files
    name = "projects/p/locations/europe-west4/endpoints/123"
    assert main(["predict", *good, "--endpoint", name, "--json"]) == 0
    assert seen["name"] == name
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 2
    assert main(["predict", good[0], "--endpoint", "projects/p/endpoints/1"]) == 2
    assert "projects/P/locations/R/endpoints/E" in capsys.readouterr().err
