"""`cxrflow predict`: classify files with a local SavedModel, one clear error per bad file.

Each file is checked with the same rules as ExampleGen (size limit, decodability, re-encoding
of modes TF cannot decode, such as CMYK JPEG) before the good ones go to the model together.
With `--gradcam DIR` each predicted file also gets DIR/<stem>_gradcam.png from the model's
`gradcam` signature (Grad-CAM of the single-view prediction).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from cxrflow import deploy
from cxrflow.images import ImageRejected, check_image
from cxrflow.io_utils import write_bytes_atomic
from cxrflow.report.gradcam import gradcam_maps, model_view, overlay_png

REASON_TEXT = {
    "empty": "empty file",
    "not_image": "not an image file",
    "too_large": "image exceeds the size limit",
    "too_small": "image too small to be an X-ray",
    "corrupt": "corrupt or truncated image",
}


def check_files(paths: Sequence[str], max_pixels: int) -> tuple[list[tuple[str, bytes]], list[dict]]:
    good, errors = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
            good.append((path, check_image(data, max_pixels).data))
        except ImageRejected as e:
            errors.append({"file": path, "error": f"{REASON_TEXT.get(e.reason, e.reason)} ({e.detail})"})
        except OSError as e:
            errors.append({"file": path, "error": e.strerror or str(e)})
    return good, errors


def predict_bytes(model_dir: str, images: Sequence[bytes], tta: int = 1) -> list[dict]:
    import tensorflow as tf  # lazy: `cxrflow predict --endpoint` needs no TF

    model = tf.saved_model.load(model_dir)
    classes = [c.decode() for c in model.signatures["metadata"]()["classes"].numpy()]
    batch = tf.constant(list(images), dtype=tf.string)
    if tta > 1:
        out = model.signatures["serving_tta"](images=batch, views=tf.constant(tta, tf.int32))
    else:
        out = model.signatures["serving_default"](images=batch)
    results = []
    for i, probs in enumerate(out["probabilities"].numpy()):
        results.append({
            "class": out["class_name"].numpy()[i].decode(),
            "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
        })
    return results


def predict_rest(endpoint: str, images: Sequence[bytes], timeout: float = 60.0) -> list[dict]:
    """Calls TF Serving's REST API: POST <endpoint>:predict with {"instances": [{"b64": ...}]}.

    `endpoint` is `http://HOST:8501/v1/models/NAME` or `.../versions/N`.
    """
    url = endpoint.rstrip("/")
    if not url.endswith(":predict"):
        url += ":predict"
    body = json.dumps({"instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in images]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise ValueError(f"the endpoint answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"could not reach the endpoint {endpoint}: {reason}") from None
    if "predictions" not in payload:
        raise ValueError(f"unexpected answer from {endpoint}: {str(payload)[:300]}")
    return [_from_serving_row(row) for row in payload["predictions"]]


def predict_vertex_endpoint(endpoint: str, images: Sequence[bytes]) -> list[dict]:
    """The same rows from a Vertex AI endpoint serving the exported model."""
    rows = deploy.predict_vertex(endpoint, [{"b64": base64.b64encode(b).decode("ascii")} for b in images])
    return [_from_serving_row(row) for row in rows]


def _from_serving_row(row: dict) -> dict:
    return {"class": row["class_name"],
            "probabilities": {c: float(p) for c, p in zip(row["classes"], row["probabilities"], strict=True)}}


def write_gradcams(model_dir: str, good: Sequence[tuple[str, bytes]], out_dir: str) -> list[str]:
    """Writes `out_dir`/<stem>_gradcam.png per (path, bytes); returns the paths, in order.

    Files with the same stem (a/x.png, b/x.jpg) get _2, _3... rather than overwriting each other.
    """
    import tensorflow as tf  # lazy: `cxrflow predict --endpoint` needs no TF

    model = tf.saved_model.load(model_dir)
    if "gradcam" not in model.signatures:
        raise ValueError(f"{model_dir} has no gradcam signature (exported before Grad-CAM): re-export it")
    classes = [c.decode() for c in model.signatures["metadata"]()["classes"].numpy()]
    size = int(model.signatures["metadata"]()["image_size"].numpy())
    maps, ids = gradcam_maps(model, [data for _, data in good])
    views = model_view([data for _, data in good], size)
    os.makedirs(out_dir, exist_ok=True)
    written, used = [], set()
    for (path, _), view, heatmap, class_id in zip(good, views, maps, ids, strict=True):
        stem, n = os.path.splitext(os.path.basename(path))[0], 1
        name = f"{stem}_gradcam.png"
        while name in used:
            n += 1
            name = f"{stem}_{n}_gradcam.png"
        used.add(name)
        out = os.path.join(out_dir, name)
        title = f"{os.path.basename(path)}: Grad-CAM of {classes[class_id]}"
        write_bytes_atomic(out, overlay_png(view, heatmap, title))
        written.append(out)
    return written


def predict_files(paths: Sequence[str], model_dir: str | None = None, as_json: bool = False, tta: int = 1,
                  max_pixels: int = 50_000_000, endpoint: str | None = None, gradcam_dir: str | None = None) -> int:
    """Prints one result or error per file; exit status 0 all ok, 1 some failed, 2 none predicted."""
    if bool(model_dir) == bool(endpoint):
        raise ValueError("pass exactly one of --model DIR or --endpoint URL")
    if endpoint and gradcam_dir:
        raise ValueError("--gradcam needs --model: Grad-CAM needs the model's gradients, which a TF Serving "
                         "endpoint's default signature does not return")
    if model_dir and not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model dir not found: {model_dir}")
    if endpoint and tta > 1:
        raise ValueError("--tta needs --model: TF Serving's REST default signature runs one view")
    good, errors = check_files(paths, max_pixels)
    results = []
    if good:
        images = [data for _, data in good]
        if endpoint and endpoint.startswith("projects/"):
            predictions = predict_vertex_endpoint(endpoint, images)
        elif endpoint:
            predictions = predict_rest(endpoint, images)
        else:
            predictions = predict_bytes(model_dir, images, tta)
        results = [{"file": path, **p} for (path, _), p in zip(good, predictions, strict=True)]
        if gradcam_dir:
            for r, out in zip(results, write_gradcams(model_dir, good, gradcam_dir), strict=True):
                r["gradcam"] = out
    if as_json:
        print(json.dumps({"predictions": results, "errors": errors}, indent=2))
    else:
        for r in results:
            probs = "  ".join(f"{c}={p:.3f}" for c, p in r["probabilities"].items())
            print(f"{r['file']}: {r['class']}  ({probs})" + (f"  gradcam: {r['gradcam']}" if "gradcam" in r else ""))
        for e in errors:
            print(f"{e['file']}: ERROR {e['error']}", file=sys.stderr)
    if not results:
        return 2
    return 1 if errors else 0
