"""The Label Studio ML backend over HTTP on 127.0.0.1: predictions, errors per task, batching, limits."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keypatch.exports.labelstudio import LABELSTUDIO_CONFIG, export_labelstudio
from keypatch.serve import Backend, BackendServer, ImageSource, fit_config
from keypatch.store import ResultStore
from tests.conftest import brush_patches, photo_array


def _post(url: str, body: dict | bytes, timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:  # the HTTP server's own answers (413) are plain text
            return e.code, {"error": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docroot")
    for i, name in enumerate(["chelsea", "coffee", "astronaut", "rocket", "camera", "retina"]):
        Image.fromarray(photo_array(name)[i * 5:, i * 3:]).save(root / f"{name}.jpg", quality=92)
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def server(images, toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    backend = Backend(0.25, "greedy", toy_model, out, batch_size=4, linger=0.05,
                      source=ImageSource(document_root=images), max_pixels=3_000_000)
    srv = BackendServer(backend, "127.0.0.1", 0, max_request=200_000)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    backend.close()


def _task(ref: str) -> dict:
    return {"id": 1, "data": {"image": ref}}


def test_predictions_are_the_export_masks_with_the_loss_as_score_and_bad_tasks_get_errors(server, images):
    tasks = [_task("/data/local-files/?d=chelsea.jpg"), _task("coffee.jpg"), _task("broken.jpg"),
             _task("/data/local-files/?d=nothere.jpg"), {"id": 5, "data": {"other": "x"}}, _task("../etc/passwd")]
    status, body = _post(server.url + "/predict", {"tasks": tasks, "label_config": LABELSTUDIO_CONFIG})
    assert status == 200 and len(body["results"]) == 6
    good, errors = body["results"][:2], body["results"][2:]
    assert all(r["result"] == [] and r["error"] for r in errors)
    assert "broken.jpg" in errors[0]["error"] and "no Label Studio host" in errors[1]["error"]
    assert "no data field 'image'" in errors[2]["error"] and "--document-root" in errors[3]["error"]
    with ResultStore(server.backend.store_path) as store:
        records = {r.sha256: r for r in store.records()}
    assert len(records) == 2
    for name, pred in zip(["chelsea.jpg", "coffee.jpg"], good, strict=True):
        import hashlib

        rec = records[hashlib.sha256((images / name).read_bytes()).hexdigest()]
        assert pred["score"] == rec.loss and pred["model_version"] == server.backend.model_version
        rec.image_path = str(images / name)  # the export reads the file for its size
        export = export_labelstudio([rec], images.parent / f"ls-{name}.json", server.backend.mae.grid)
        expected = json.loads(export.read_text())[0]["predictions"][0]["result"][0]
        got = pred["result"][0]
        assert got["value"] == expected["value"] and got["original_width"] == expected["original_width"]
        assert (got["from_name"], got["to_name"], got["type"]) == ("tag", "image", "brushlabels")
    before = dict(server.backend.stats)
    _, again = _post(server.url + "/predict", {"tasks": tasks[:2], "label_config": LABELSTUDIO_CONFIG})
    assert [r["result"] for r in again["results"]] == [r["result"] for r in good]
    assert server.backend.stats["from_store"] == before["from_store"] + 2
    assert server.backend.stats["computed"] == before["computed"]


def test_concurrent_requests_share_batches_and_none_is_lost(server, images):
    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "retina"]
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(24):
        n = int(rng.integers(1, 5))
        picked = [f"{names[j]}.jpg" for j in rng.integers(0, 6, n)]
        if rng.random() < 0.25:
            picked.append("broken.jpg")
        requests.append(picked)
    before = dict(server.backend.stats)

    def call(refs):
        return refs, _post(server.url + "/predict", {"tasks": [_task(r) for r in refs], "label_config": ""})

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, requests))
    for refs, (status, body) in answers:
        assert status == 200 and len(body["results"]) == len(refs)
        for ref, r in zip(refs, body["results"], strict=True):
            assert (r["result"] == []) == (ref == "broken.jpg")
    stats = server.backend.stats
    assert stats["requests"] - before["requests"] == 24
    assert stats["batches"] - before["batches"] < stats["tasks"] - before["tasks"]  # tasks shared batches
    _, health = _get(server.url + "/health")
    assert health["status"] == "UP"


def _get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, json.loads(r.read())


def test_limits_and_malformed_requests(server, images, tmp_path):
    status, body = _post(server.url + "/predict", b"{not json")
    assert status == 400 and "malformed" in body["error"]
    status, body = _post(server.url + "/predict", {"tasks": [_task("x")] * 20_000})
    assert status == 413
    Image.new("RGB", (2000, 1600), (1, 2, 3)).save(images / "big.png")
    _, body = _post(server.url + "/predict", {"tasks": [_task("big.png")]})
    assert "over the limit" in body["results"][0]["error"]
    _, body = _post(server.url + "/predict", {"tasks": [_task("coffee.jpg")], "label_config": "<View><Text/></View>"})
    assert "no <Image>" in body["results"][0]["error"]
    status, body = _post(server.url + "/setup", {"hostname": "http://127.0.0.1:1", "access_token": "t"})
    assert status == 200 and body["model_version"] == server.backend.model_version


def test_config_fit_reads_names_and_refuses_configs_without_a_brush_on_an_image():
    fit = fit_config('<View><Image name="img" value="$photo"/><BrushLabels name="b" toName="img">'
                     '<Label value="x"/><Label value="key_patch"/></BrushLabels></View>')
    assert (fit.from_name, fit.to_name, fit.data_key, fit.label) == ("b", "img", "photo", "key_patch")
    assert fit_config(None).data_key == "image"
    for bad, message in [("<View", "not valid XML"), ('<View><Image name="i" value="$x"/></View>', "no <BrushLabels>"),
                         ('<View><Image name="i" value="x"/><BrushLabels name="b" toName="i"><Label value="a"/>'
                          "</BrushLabels></View>", "not from a task field")]:
        with pytest.raises(ValueError, match=message):
            fit_config(bad)


def test_the_webhook_records_annotated_patches_and_the_next_prediction_goes_past_them(server, images):
    """Without Label Studio: the webhook's events as it sends them (toy model, 4x4 grid): an annotation
    covering the left half of an image; the next prediction for it proposes k other patches; a deleted
    annotation is forgotten; an event without its task is refused (400), the server goes on."""
    import hashlib

    grid = server.backend.mae.grid
    ref = "rocket.jpg"
    w, h = Image.open(images / ref).size
    first = _post(server.url + "/predict", {"tasks": [_task(ref)]})[1]["results"][0]
    annotation = {"id": 41, "result": [{"type": "rectanglelabels", "original_width": w, "original_height": h,
                                        "from_name": "r", "to_name": "image",
                                        "value": {"x": 0, "y": 0, "width": 50, "height": 100,
                                                  "rectanglelabels": ["sky"]}}]}
    event = {"action": "ANNOTATION_CREATED", "task": {"id": 9, "data": {"image": ref}}, "annotation": annotation}
    status, body = _post(server.url + "/webhook", event)
    assert status == 200 and body["patches"] == 8 and body["annotated"] == 8
    left = [r * grid.cols + c for r in range(grid.rows) for c in range(2)]
    digest = hashlib.sha256((images / ref).read_bytes()).hexdigest()
    assert server.backend._annotated(digest) == left
    second = _post(server.url + "/predict", {"tasks": [_task(ref)]})[1]["results"][0]
    after = brush_patches(second["result"][0], grid)
    assert len(after) == server.backend.job.k and not set(after) & set(left)
    assert second["score"] < first["score"]
    assert _post(server.url + "/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 41}]})[0] == 200
    assert server.backend._annotated(digest) == []
    assert _post(server.url + "/predict", {"tasks": [_task(ref)]})[1]["results"][0]["result"] == first["result"]
    status, body = _post(server.url + "/webhook", {"action": "ANNOTATION_CREATED", "annotation": annotation})
    assert status == 400 and "task" in body["error"]
    assert _post(server.url + "/webhook", {"action": "PROJECT_UPDATED"})[0] == 200


def test_a_gain_score_is_what_the_proposed_patches_lower_L_by(images, toy_model, tmp_path):
    """``score="gain"``: from the empty set's L for an image with nothing annotated, from the annotated
    patches' L after the webhook; both positive, and equal to those L less the prediction's."""
    import hashlib

    import torch

    from keypatch.geometry import load_image
    from keypatch.objective import Objective

    backend = Backend(0.25, "greedy", toy_model, tmp_path / "gain", source=ImageSource(document_root=images),
                      score="gain")
    try:
        ref = "camera.jpg"
        first = backend.predict([_task(ref)])[0]
        x = load_image(images / ref, toy_model.config.image_size)[None]
        objective = Objective(toy_model, x, precision="float32")
        empty = float(objective.score(torch.empty(1, 0, dtype=torch.long))[0])
        with ResultStore(backend.store_path) as store:
            record = store.records()[0]
        assert first["score"] == pytest.approx(empty - record.loss, rel=1e-5) and first["score"] > 0
        w, h = Image.open(images / ref).size
        backend.webhook({"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {"image": ref}},
                         "annotation": {"id": 5, "result": [{
                             "type": "rectanglelabels", "original_width": w, "original_height": h,
                             "value": {"x": 0, "y": 0, "width": 100, "height": 25, "rectanglelabels": ["a"]}}]}})
        annotated = backend._annotated(hashlib.sha256((images / ref).read_bytes()).hexdigest())
        second = backend.predict([_task(ref)])[0]
        proposed = brush_patches(second["result"][0], toy_model.grid)
        before = float(objective.score(torch.tensor([annotated]))[0])
        after = float(objective.score(torch.tensor([annotated + proposed]))[0])
        assert annotated == [0, 1, 2, 3] and second["score"] == pytest.approx(before - after, rel=1e-4, abs=1e-6)
    finally:
        backend.close()
    with pytest.raises(ValueError, match="score must be one of"):
        Backend(0.25, "greedy", toy_model, tmp_path / "x", score="best")


def test_a_webhook_whose_annotation_is_not_on_the_tasks_image_is_refused_before_drawing(server, images):
    """A hostile caller's event claims a 32768x32768 image (a gigabyte mask to draw): refused from the
    image's own header, the server goes on."""
    w, h = Image.open(images / "coffee.jpg").size
    for size in ((32768, 32768), (w + 1, h)):
        event = {"action": "ANNOTATION_UPDATED", "task": {"id": 3, "data": {"image": "coffee.jpg"}},
                 "annotation": {"id": 77, "result": [{
                     "type": "rectanglelabels", "original_width": size[0], "original_height": size[1],
                     "value": {"x": 0, "y": 0, "width": 100, "height": 100, "rectanglelabels": ["a"]}}]}}
        status, body = _post(server.url + "/webhook", event)
        assert status == 400 and f"not the task's {w}x{h}" in body["error"]
    assert _post(server.url + "/health", b"")[0] in (200, 405)
