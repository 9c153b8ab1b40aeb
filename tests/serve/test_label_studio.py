"""The backend against a real Label Studio server (pip label-studio, SQLite, 127.0.0.1, no network).

Label Studio is started with a fixed legacy token and local-files serving; a project gets the
backend's config, a local storage for the photos and the backend as its model; six tasks are
imported and their predictions retrieved through Label Studio's own action. The predictions must be
keypatch's export of the same records, scored with their losses.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from PIL import Image

from keypatch.exports.labelstudio import LABELSTUDIO_CONFIG, export_labelstudio
from keypatch.serve import Backend, BackendServer, ImageFetchError, ImageSource
from keypatch.store import ResultStore
from tests.conftest import brush_patches, photo_array

pytest.importorskip("label_studio")
sdk = pytest.importorskip("label_studio_sdk")

TOKEN = "0123456789abcdef0123456789abcdef01234567"
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on a free local port; yields (url, document root)."""
    root = tmp_path_factory.mktemp("ls")
    docroot = root / "files"
    (docroot / "photos").mkdir(parents=True)
    for i, name in enumerate(PHOTOS):
        Image.fromarray(photo_array(name)[i * 7:, i * 5:]).save(docroot / "photos" / f"{name}.jpg", quality=92)
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
           "ML_BLOCK_LOCAL_IP": "false", "USE_DEFAULT_BANNED_SUBNETS": "false",  # the backend is on 127.0.0.1
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false"}
    log = open(root / "label-studio.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "label_studio.server", "start", "--data-dir", str(root / "data"), "--port", str(port),
         "--no-browser", "--username", "keypatch@example.org", "--password", "keypatch-test",
         "--user-token", TOKEN, "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/health", 420, proc)
        yield f"http://127.0.0.1:{port}", docroot
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_label_studio_gets_keypatch_predictions_equal_to_the_export(label_studio, tmp_path):
    url, docroot = label_studio
    backend = Backend(0.05, "greedy", "default", tmp_path / "results", device="cpu", batch_size=6)
    server = BackendServer(backend, "127.0.0.1", _free_port(), auth=("keypatch-ls", "a pass phrase"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = sdk.LabelStudio(base_url=url, api_key=TOKEN)
        project = client.projects.create(title="keypatch backend", label_config=LABELSTUDIO_CONFIG)
        client.import_storage.local.create(project=project.id, path=str(docroot / "photos"), title="photos",
                                           use_blob_urls=True)
        ml = client.ml.create(url=server.url, project=project.id, title="keypatch", auth_method="BASIC_AUTH",
                              basic_auth_user="keypatch-ls", basic_auth_pass="a pass phrase")
        assert ml.model_version == backend.model_version  # Label Studio called /health and /setup, with credentials
        client.projects.import_tasks(id=project.id,
                                     request=[{"image": f"/data/local-files/?d=photos/{n}.jpg"} for n in PHOTOS])
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
        tasks = list(client.tasks.list(project=project.id, fields="all"))
        pat = client.tokens.create().token  # a personal access token: a JWT refresh token
    finally:
        server.shutdown()
        server.server_close()
        backend.close()
    assert len(tasks) == 6
    first = docroot / "photos" / f"{PHOTOS[0]}.jpg"
    source = ImageSource(label_studio_url=url, api_key=pat)  # exchanged for an access token, sent as Bearer
    assert source.get(f"/data/local-files/?d=photos/{first.name}") == first.read_bytes()
    with pytest.raises(ImageFetchError, match="HTTP 40"):
        ImageSource(label_studio_url=url, api_key="not-a-token").get(f"/data/local-files/?d=photos/{first.name}")
    with ResultStore(backend.store_path) as store:
        records = {r.sha256: r for r in store.records()}
    assert len(records) == 6
    for task in tasks:
        name = task.data["image"].split("photos/")[1]
        path = docroot / "photos" / name
        record = records[hashlib.sha256(path.read_bytes()).hexdigest()]
        assert len(task.predictions) == 1
        pred = task.predictions[0]
        pred = pred if isinstance(pred, dict) else pred.dict()
        assert pred["score"] == pytest.approx(record.loss, rel=1e-6)
        assert pred["model_version"] == backend.model_version
        record.image_path = str(path)
        exported = json.loads(export_labelstudio([record], tmp_path / f"{name}.json", backend.mae.grid).read_text())
        want = exported[0]["predictions"][0]["result"][0]
        got = pred["result"][0]
        assert got["value"]["rle"] == want["value"]["rle"] and got["value"]["brushlabels"] == ["key_patch"]
        assert (got["original_width"], got["original_height"]) == Image.open(path).size


RECTANGLES = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
              '<Label value="cat"/><Label value="dog"/></RectangleLabels></View>')


def test_annotations_pulled_from_label_studio_are_masks_of_their_pixels(label_studio, tmp_path, capsys):
    """``keypatch labels --label-studio-url URL --api-key KEY --project ID``: an annotation created
    through Label Studio's API comes back as its class id on the pixels it covers, 255 elsewhere;
    a task without annotations has no mask."""
    import numpy as np

    from keypatch.cli.main import main

    url, docroot = label_studio
    client = sdk.LabelStudio(base_url=url, api_key=TOKEN)
    project = client.projects.create(title="labels back", label_config=RECTANGLES)
    client.projects.import_tasks(id=project.id,
                                 request=[{"image": f"/data/local-files/?d=photos/{n}.jpg"} for n in PHOTOS[:2]])
    tasks = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
    first = next(t for t in tasks if t.data["image"].endswith(f"{PHOTOS[0]}.jpg"))
    w, h = Image.open(docroot / "photos" / f"{PHOTOS[0]}.jpg").size
    client.annotations.create(id=first.id, result=[{
        "from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": w,
        "original_height": h, "value": {"x": 0, "y": 0, "width": 50, "height": 50, "rotation": 0,
                                         "rectanglelabels": ["dog"]}}])
    out = tmp_path / "labels"
    assert main(["labels", "--label-studio-url", url, "--api-key", TOKEN, "--project", str(project.id),
                 "--out", str(out)]) == 0
    classes = json.loads((out / "classes.json").read_text())
    mask = np.array(Image.open(out / f"{PHOTOS[0]}.png"))
    assert mask.shape == (h, w) and classes == {"dog": 0}
    assert (mask[: h // 2 - 1, : w // 2 - 1] == 0).all()
    assert (mask[h // 2 + 1:] == 255).all() and (mask[:, w // 2 + 1:] == 255).all()
    assert not (out / f"{PHOTOS[1]}.png").exists()
    # the same export with a wrong token: an error naming the project, nothing written
    assert main(["labels", "--label-studio-url", url, "--api-key", "wrong-token", "--project", str(project.id),
                 "--out", str(tmp_path / "no")]) == 2
    assert f"project {project.id}" in capsys.readouterr().err and not (tmp_path / "no" / "classes.json").exists()


def test_after_its_patches_are_annotated_and_the_webhook_fires_the_next_prediction_avoids_them(label_studio,
                                                                                              tmp_path):
    """Label Studio's own webhook (made when the backend is added to a project; given the backend's
    credentials as a header) reports an annotation of a task's proposed patches; the next prediction
    for that task proposes as many patches again, none of them annotated."""
    import base64

    url, docroot = label_studio
    backend = Backend(0.05, "greedy", "default", tmp_path / "results", device="cpu", batch_size=2)
    server = BackendServer(backend, "127.0.0.1", _free_port(), auth=("keypatch-ls", "a pass phrase"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    basic = "Basic " + base64.b64encode(b"keypatch-ls:a pass phrase").decode()
    try:
        client = sdk.LabelStudio(base_url=url, api_key=TOKEN)
        project = client.projects.create(title="rounds", label_config=LABELSTUDIO_CONFIG)
        client.import_storage.local.create(project=project.id, path=str(docroot / "photos"), title="photos",
                                           use_blob_urls=True)
        client.ml.create(url=server.url, project=project.id, title="keypatch", auth_method="BASIC_AUTH",
                         basic_auth_user="keypatch-ls", basic_auth_pass="a pass phrase")
        hooks = [h for h in client.webhooks.list(project=project.id) if h.url.rstrip("/").endswith("/webhook")]
        assert len(hooks) == 1  # Label Studio made it for the backend
        req = urllib.request.Request(f"{url}/api/webhooks/{hooks[0].id}/", method="PATCH",
                                     data=json.dumps({"headers": {"Authorization": basic}}).encode(),
                                     headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).close()
        client.projects.import_tasks(id=project.id, request=[{"image": f"/data/local-files/?d=photos/{PHOTOS[0]}.jpg"}])
        task = next(iter(client.tasks.list(project=project.id, fields="all")))
        body = {"tasks": [{"id": task.id, "data": task.data}], "label_config": LABELSTUDIO_CONFIG}

        def predict() -> dict:
            req = urllib.request.Request(f"{server.url}/predict", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": basic, "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                return json.loads(r.read())["results"][0]

        first = predict()
        proposed = brush_patches(first["result"][0], backend.mae.grid)
        assert len(proposed) == backend.job.k
        client.annotations.create(id=task.id, result=first["result"])  # the annotator labels those patches
        end = time.monotonic() + 60
        while not backend._annotated(hashlib.sha256((docroot / "photos" / f"{PHOTOS[0]}.jpg").read_bytes())
                                     .hexdigest()) and time.monotonic() < end:
            time.sleep(0.5)
        second = predict()
    finally:
        server.shutdown()
        server.server_close()
        backend.close()
    annotated = backend._annotated(hashlib.sha256((docroot / "photos" / f"{PHOTOS[0]}.jpg").read_bytes()).hexdigest())
    assert annotated == sorted(proposed)  # the webhook came, and recorded exactly the annotated patches
    after = brush_patches(second["result"][0], backend.mae.grid)
    assert len(after) == backend.job.k and not set(after) & set(proposed)
    assert second["score"] < first["score"]  # L of the annotated patches and the new ones together
    assert json.loads((tmp_path / "results" / "annotated.json").read_text())  # kept beside the store
