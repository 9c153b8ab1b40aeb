"""``python tools/labelstudio_screenshot.py --out docs/serve_labelstudio.png``: an annotator's view.

Starts a local Label Studio (its own data folder), starts ``keypatch serve`` in this process, makes
a project with the backend's config, imports one photo, lets Label Studio retrieve its prediction,
logs in with headless Chromium and photographs the task's labelling page with the key patches
pre-annotated. Needs ``label-studio`` and ``label-studio-sdk`` here, and Playwright with a Chromium
(``--python`` names an interpreter that has Playwright, ``--chromium`` the browser binary).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

EMAIL, PASSWORD, TOKEN = "annotator@example.org", "keypatch-demo", "0123456789abcdef0123456789abcdef01234567"

SHOT = textwrap.dedent("""
    import sys
    from playwright.sync_api import sync_playwright
    url, chromium, email, password, page_url, out = sys.argv[1:7]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url + "/user/login/")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(page_url)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(6000)
        page.screenshot(path=out)
        browser.close()
""")


@contextlib.contextmanager
def local_label_studio(photo: str, ratio: float, port: int) -> Iterator[tuple[str, Any, Any, Path]]:
    """A Label Studio on 127.0.0.1:``port`` (its own data folder) serving one test photo as local files
    under ``photos/``, and ``keypatch serve`` (greedy, default model, ``ratio``) in this process:
    yields ``(url, backend, server, work folder)``; both are stopped afterwards."""
    from keypatch.experiments.photos import load_test_photos
    from keypatch.serve import Backend, BackendServer

    work = Path(tempfile.mkdtemp(prefix="keypatch-ls-"))
    (work / "files" / "photos").mkdir(parents=True)
    Image.fromarray(load_test_photos([photo])[photo]).save(work / "files" / "photos" / f"{photo}.jpg", quality=92)
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(work / "files"), "ML_BLOCK_LOCAL_IP": "false",
           "USE_DEFAULT_BANNED_SUBNETS": "false"}
    url = f"http://127.0.0.1:{port}"
    ls = subprocess.Popen([sys.executable, "-m", "label_studio.server", "start", "--data-dir", str(work / "data"),
                           "--port", str(port), "--no-browser", "--username", EMAIL, "--password", PASSWORD,
                           "--user-token", TOKEN, "--enable-legacy-api-token"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backend = Backend(ratio, "greedy", "default", work / "results", device="cpu")
    server = BackendServer(backend, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except OSError:
                time.sleep(2)
        yield url, backend, server, work
    finally:
        server.shutdown()
        backend.close()
        ls.terminate()
        ls.wait(timeout=30)


def arguments(doc: str, out: str, photo: str, ratio: float, port: int) -> argparse.Namespace:
    """The command line the screenshot tools share, with each tool's defaults."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--photo", default=photo, help="a test photo name (keypatch.experiments.photos)")
    ap.add_argument("--ratio", type=float, default=ratio)
    ap.add_argument("--python", default=sys.executable, help="an interpreter with Playwright")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--port", type=int, default=port)
    return ap.parse_args()


def project_with_photo(client: Any, title: str, config: str, server: Any, work: Path, photo: str) -> tuple:
    """A project on ``client`` with ``config``, the work folder's photos as local storage, the backend
    ``server`` as its model and ``photo`` imported as its one task: ``(project, ml backend, task)``."""
    project = client.projects.create(title=title, label_config=config)
    client.import_storage.local.create(project=project.id, path=str(work / "files" / "photos"), title="photos",
                                       use_blob_urls=True)
    ml = client.ml.create(url=server.url, project=project.id, title="keypatch")
    client.projects.import_tasks(id=project.id, request=[{"image": f"/data/local-files/?d=photos/{photo}.jpg"}])
    return project, ml, next(iter(client.tasks.list(project=project.id)))


def photograph(args: argparse.Namespace, url: str, page: str) -> None:
    """Log in to Label Studio at ``url`` with headless Chromium and photograph ``page`` into ``args.out``."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([args.python, "-c", SHOT, url, args.chromium, EMAIL, PASSWORD, page, str(args.out.resolve())],
                   check=True)


def main() -> None:
    args = arguments(__doc__, "docs/serve_labelstudio.png", "chelsea", 0.1, 8097)

    from label_studio_sdk import LabelStudio

    from keypatch.serve import LABELSTUDIO_CONFIG

    with local_label_studio(args.photo, args.ratio, args.port) as (url, _, server, work):
        client = LabelStudio(base_url=url, api_key=TOKEN)
        project, _, task = project_with_photo(client, "Key patches", LABELSTUDIO_CONFIG, server, work, args.photo)
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
        photograph(args, url, f"{url}/projects/{project.id}/data?task={task.id}")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
