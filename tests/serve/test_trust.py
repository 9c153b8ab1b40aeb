"""The backend's trust model, tried as an attacker would on 127.0.0.1 (docs/serve.md, "Trust").

A stand-in Label Studio (127.0.0.1) serves ``/data/upload/...`` only to its token and can answer
with redirects; a hostile host (127.0.0.2, another address of this machine's loopback) records
every header it is sent. Real requests, real sockets.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from keypatch.serve import Backend, BackendServer, ImageFetchError, ImageSource
from keypatch.serve.http import exposure_warning
from tests.conftest import photo_array

TOKEN = "ls-secret-token-0123456789"


def _jpeg(name: str = "chelsea", shift: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_array(name)[shift:, shift:]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class _Peer(ThreadingHTTPServer):
    """A small HTTP server that records each request's path and headers and answers from ``routes``:
    path -> bytes (200), ("redirect", url), ("slow", bytes, seconds per byte) or ("token", bytes)
    (200 only with ``Authorization: Token TOKEN``)."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.routes: dict[str, object] = {}
        super().__init__((host, 0), _PeerHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def tokens_seen(self) -> list[str]:
        return [h.get("Authorization", "") for _, h in self.seen if h.get("Authorization")]


class _PeerHandler(BaseHTTPRequestHandler):
    server: _Peer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, dict(self.headers)))
        route = self.server.routes.get(self.path)
        if isinstance(route, tuple) and route[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", route[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(route, tuple) and route[0] == "token":
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            route = route[1]
        if isinstance(route, tuple) and route[0] == "slowhead":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(route[1]):
                self.wfile.write(f"X-Drip-{i}: x\r\n".encode())
                self.wfile.flush()
                time.sleep(route[2])
            return
        if isinstance(route, tuple) and route[0] == "slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(route[1])))
            self.end_headers()
            for b in route[1]:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(route[2])
            return
        if not isinstance(route, bytes):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(route)))
        self.end_headers()
        self.wfile.write(route)


@pytest.fixture()
def peers():
    ls, evil = _Peer("127.0.0.1"), _Peer("127.0.0.2")
    ls.routes["/data/upload/1/chelsea.jpg"] = ("token", _jpeg("chelsea"))
    evil.routes["/data/upload/1/chelsea.jpg"] = _jpeg("coffee")
    evil.routes["/x.jpg"] = _jpeg("rocket")
    yield ls, evil
    for p in (ls, evil):
        p.shutdown()
        p.server_close()


def _serve(backend: Backend, **kw) -> BackendServer:
    srv = BackendServer(backend, "127.0.0.1", 0, max_request=200_000, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture()
def backend(toy_model, tmp_path):
    b = Backend(0.25, "greedy", toy_model, tmp_path / "out", batch_size=4, linger=0.01, source=ImageSource(timeout=5))
    yield b
    b.close()


def _call(url: str, body: object = None, *, method: str | None = None, headers: dict | None = None,
          timeout: float = 60) -> tuple[int, dict, Any]:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers={**h, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text), e.headers
        except ValueError:
            return e.code, {"error": text.decode(errors="replace")}, e.headers


def _predict(srv: BackendServer, refs: list, **kw) -> list[dict]:
    status, body, _ = _call(srv.url + "/predict", {"tasks": [{"id": i, "data": {"image": r}} for i, r in
                                                              enumerate(refs)]}, **kw)
    assert status == 200, body
    return body["results"]


# ---------------------------------------------------------------------------------------------- (A), (B)
def test_a_setup_from_another_caller_never_gets_label_studios_token(backend, peers):
    ls, evil = peers
    srv = _serve(backend)
    try:
        # the attacker calls first, naming its own host (no token, then a token of its own)
        assert _call(srv.url + "/setup", {"hostname": evil.url})[0] == 200
        assert _call(srv.url + "/setup", {"hostname": ls.url, "access_token": TOKEN})[0] == 200
        [res] = _predict(srv, ["/data/upload/1/chelsea.jpg"])
        assert res["result"] and "error" not in res, res
        assert evil.seen == [] and ls.tokens_seen() == [f"Token {TOKEN}"]
        # the attacker calls after Label Studio: its host replaces the pair, Label Studio's token does not follow
        assert _call(srv.url + "/setup", {"hostname": evil.url, "access_token": "attacker"})[0] == 200
        _predict(srv, ["/data/upload/1/chelsea.jpg"])
        assert TOKEN not in json.dumps(evil.seen)
        # a token that comes without a hostname is not kept for any host
        assert _call(srv.url + "/setup", {"access_token": TOKEN})[0] == 200
        _predict(srv, ["/data/upload/1/chelsea.jpg"])
        assert TOKEN not in json.dumps(evil.seen)
    finally:
        srv.shutdown()


def test_a_pinned_host_and_token_cannot_be_moved_by_setup(toy_model, tmp_path, peers):
    ls, evil = peers
    b = Backend(0.25, "greedy", toy_model, tmp_path / "o", linger=0.01,
                source=ImageSource(ls.url, TOKEN, timeout=5))
    srv = _serve(b)
    try:
        _call(srv.url + "/setup", {"hostname": evil.url, "access_token": "attacker"})
        [res] = _predict(srv, ["/data/upload/1/chelsea.jpg"])
        assert res["result"] and evil.seen == [] and ls.tokens_seen() == [f"Token {TOKEN}"]
    finally:
        srv.shutdown()
        b.close()
    with pytest.raises(ValueError, match="needs its Label Studio URL"):
        ImageSource(api_key=TOKEN)


def test_b_the_token_does_not_follow_a_redirect_to_another_host(peers):
    ls, evil = peers
    ls.routes["/data/upload/1/away.jpg"] = ("redirect", evil.url + "/x.jpg")
    ls.routes["/data/upload/1/here.jpg"] = ("redirect", "/data/upload/1/chelsea.jpg")
    ls.routes["/data/upload/1/scheme.jpg"] = ("redirect", "file:///etc/passwd")
    src = ImageSource(ls.url, TOKEN, timeout=5)
    assert src.get("/data/upload/1/away.jpg") == _jpeg("rocket")  # fetched, without the token
    assert [p for p, _ in evil.seen] == ["/x.jpg"] and evil.tokens_seen() == []
    assert src.get("/data/upload/1/here.jpg") == _jpeg("chelsea")  # same host: the token goes along
    assert ls.tokens_seen().count(f"Token {TOKEN}") == 3
    with pytest.raises(ImageFetchError, match="only http"):
        src.get("/data/upload/1/scheme.jpg")


# ---------------------------------------------------------------------------------------------- URLs
def test_link_local_addresses_are_refused_in_every_spelling_and_at_every_hop(peers):
    ls, _ = peers
    src = ImageSource(timeout=3)
    for url in ["http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://0xa9fea9fe/",
                "http://[::ffff:169.254.169.254]/", "http://[fe80::1]/", "http://0.0.0.0:80/"]:
        with pytest.raises(ImageFetchError, match="link-local|not a host's address"):
            src.get(url)
    ls.routes["/hop.jpg"] = ("redirect", "http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ImageFetchError, match="link-local"):
        src.get(ls.url + "/hop.jpg")
    for url in ["ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1/x", "file:///etc/passwd"]:
        with pytest.raises(ImageFetchError):
            src.get(url)


def test_fetch_hosts_restrict_urls_to_a_list(peers):
    ls, evil = peers
    src = ImageSource(timeout=3, fetch_hosts=("127.0.0.2",))
    assert src.get(evil.url + "/x.jpg") == _jpeg("rocket")
    with pytest.raises(ImageFetchError, match="not among the hosts"):
        src.get(ls.url + "/x.jpg")
    ls.routes["/to-ls.jpg"] = ("redirect", ls.url + "/x.jpg")
    evil.routes["/to-ls.jpg"] = ("redirect", ls.url + "/x.jpg")
    with pytest.raises(ImageFetchError, match="not among the hosts"):  # re-checked at the redirect
        src.get(evil.url + "/to-ls.jpg")


def test_one_deadline_per_image_covers_every_read(peers):
    _, evil = peers
    evil.routes["/drip.jpg"] = ("slow", b"x" * 100, 0.1)  # 10 s in all, one byte at a time
    evil.routes["/drip-headers.jpg"] = ("slowhead", 40, 0.25)  # headers, one line at a time
    src = ImageSource(timeout=1.0)
    for path in ("/drip.jpg", "/drip-headers.jpg"):
        t = time.monotonic()
        with pytest.raises(ImageFetchError, match="within 1 s"):
            src.get(evil.url + path)
        assert time.monotonic() - t < 2.5


# ---------------------------------------------------------------------------------------------- (C), (D)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_c_basic_auth_from_the_environment_guards_every_route_but_health(tmp_path):
    port = _free_port()
    env = {**os.environ, "BASIC_AUTH_USER": "ann", "BASIC_AUTH_PASS": "s3cret pass"}
    proc = subprocess.Popen([sys.executable, "-m", "keypatch.cli.main", "serve", "--ratio", "0.25", "--model",
                             "random:toy:0", "--device", "cpu", "--port", str(port), "--out", str(tmp_path)],
                            env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                if _call(url + "/health")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        good = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret pass").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"ann:wrong").decode()}
        for path, body in [("/predict", {"tasks": []}), ("/setup", {"hostname": "http://127.0.0.2:1"})]:
            status, _, headers = _call(url + path, body)
            assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
            assert _call(url + path, body, headers=bad)[0] == 401
            assert _call(url + path, body, headers=good)[0] == 200
        assert _call(url + "/metrics")[0] == 401 and _call(url + "/metrics", headers=good)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "basic authentication on" in proc.stderr.read()


def test_exposure_warning_says_what_is_open():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("0.0.0.0", ("u", "p")) is None
    text = exposure_warning("0.0.0.0", None)
    assert "without credentials" in text and "BASIC_AUTH_USER" in text and "/predict" in text


def test_d_browsers_cannot_reach_the_backend(backend, peers):
    ls, _ = peers
    srv = _serve(backend)
    try:
        body = json.dumps({"hostname": "http://127.0.0.2:1", "access_token": "x"}).encode()
        status, _, _ = _call(srv.url + "/setup", body, headers={"Content-Type": "text/plain",
                                                                 "Origin": "http://attacker.example"})
        assert status == 403
        status, err, _ = _call(srv.url + "/setup", body, headers={"Content-Type": "text/plain"})
        assert status == 415 and "application/json" in err["error"]
        status, _, _ = _call(srv.url + "/setup", body, headers={"Origin": "http://attacker.example"})
        assert status == 403
        assert backend.source.label_studio is None  # none of them bound a host
        status, _, _ = _call(srv.url + "/health", headers={"Host": "rebind.attacker.example:9090"})
        assert status == 403  # DNS rebinding: the page's name in Host
        assert _call(srv.url + "/health", headers={"Host": "localhost"})[0] == 200
        assert _call(srv.url + "/setup", body, headers={"Origin": srv.url})[0] == 200  # same origin
    finally:
        srv.shutdown()


# ---------------------------------------------------------------------------------------------- requests
def test_bad_requests_get_their_own_answer_and_the_server_goes_on(backend, tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "text.jpg").write_text("this is not an image")
    (root / "good.jpg").write_bytes(_jpeg("astronaut"))
    backend.source.document_root = root.resolve()
    srv = _serve(backend)
    try:
        res = _predict(srv, [".", "sub", "text.jpg", {"x": 1}, ["a"], "good.jpg"])
        assert [bool(r["result"]) for r in res] == [False] * 5 + [True]
        assert "text.jpg" in res[2]["error"] and "BytesIO" not in res[2]["error"]
        status, body, _ = _call(srv.url + "/predict", {"tasks": [{"data": [1]}, 7, None, {"data": {"image": 3}}]})
        assert status == 200 and all(r["result"] == [] and r["error"] for r in body["results"])
        status, body, _ = _call(srv.url + "/predict", b"[" * 50_000 + b"]" * 50_000)
        assert status == 400 and "malformed" in body["error"]
        status, _, headers = _call(srv.url + "/predict", method="GET")
        assert status == 405 and headers.get("Allow") == "POST"
        assert _call(srv.url + "/health", b"{}", method="POST")[0] == 405
        assert _call(srv.url + "/nothing")[0] == 404
        status, body, _ = _call(srv.url + "/predict", {"tasks": [], "label_config": {"x": 1}})
        assert status == 200 and body["results"] == []
        assert _call(srv.url + "/health")[0] == 200
    finally:
        srv.shutdown()


def test_duplicates_are_dropped_before_decoding_and_pixels_are_checked_before(backend, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg("camera", 3))
    huge = io.BytesIO()
    Image.new("1", (9000, 9000)).save(huge, "PNG")  # a few kB that decode to 81 megapixels
    (root / "bomb.png").write_bytes(huge.getvalue())
    backend.source.document_root = root.resolve()
    backend.max_pixels = 20_000_000
    decoded = []
    real = backend._pixels
    monkeypatch.setattr(backend, "_pixels", lambda item: decoded.append(item.name) or real(item))
    srv = _serve(backend)
    try:
        res = _predict(srv, ["a.jpg"] * 6 + ["bomb.png"] * 3)
        assert all(r["result"] for r in res[:6]) and len(decoded) == 1
        assert all("over the limit" in r["error"] for r in res[6:])
    finally:
        srv.shutdown()


def test_a_request_past_its_deadline_answers_and_the_image_is_stored_for_next_time(toy_model, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg("rocket", 7))
    b = Backend(1.0, "greedy", toy_model, tmp_path / "o", linger=0.2,
                source=ImageSource(document_root=root, timeout=5))
    srv = _serve(b, request_timeout=0.05)
    try:
        [res] = _predict(srv, ["a.jpg"])
        assert res["result"] == [] and "not done within" in res["error"]
        end = time.monotonic() + 30
        while b.stats["computed"] < 1 and time.monotonic() < end:
            time.sleep(0.05)
        srv.app.request_timeout = 30
        [res] = _predict(srv, ["a.jpg"])
        assert res["result"] and b.stats["from_store"] == 1
    finally:
        srv.shutdown()
        b.close()


def test_a_slow_client_holds_no_worker(backend):
    srv = _serve(backend, threads=1)
    slow = socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
    try:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"tasks\": [")  # and nothing more
        t = time.monotonic()
        assert _call(srv.url + "/health", timeout=5)[0] == 200
        assert time.monotonic() - t < 2
    finally:
        slow.close()
        srv.shutdown()


# ---------------------------------------------------------------------------------------------- fuzz
def _mutate(rng: random.Random, value: object, depth: int = 0) -> object:
    pool: list[object] = [None, True, 0, -1, 2**63, 1.5e308, "", ".", "..", "/", "\x00", "é" * 50, "/data/upload/",
                          "/data/local-files/?d=../../etc/passwd", "http://169.254.169.254/", "file:///etc/passwd",
                          "http://127.0.0.1:1/x.jpg", [], {}, [None], {"data": None}]
    r = rng.random()
    if r < 0.3 or depth > 4:
        return rng.choice(pool)
    if isinstance(value, dict):
        out = dict(value)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*out.keys(), "tasks", "data", "image", "label_config", "hostname", "access_token"]) \
                if out else "tasks"
            out[key] = _mutate(rng, out.get(key), depth + 1)
        return out
    if isinstance(value, list):
        out = list(value)
        if out and rng.random() < 0.5:
            i = rng.randrange(len(out))
            out[i] = _mutate(rng, out[i], depth + 1)
        else:
            out.append(_mutate(rng, {"id": 1, "data": {"image": "x.jpg"}}, depth + 1))
        return out
    return rng.choice(pool)


def test_fuzz_of_the_json_bodies_finds_no_traceback(backend, tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    (root / "x.jpg").write_bytes(_jpeg("coffee", 2))
    backend.source.document_root = root.resolve()
    backend.source.timeout = 0.5
    srv = _serve(backend, request_timeout=10)
    rng = random.Random(0)
    seeds = [{"tasks": [{"id": 1, "data": {"image": "x.jpg"}}], "label_config": None},
             {"hostname": "http://127.0.0.1:1", "access_token": "t"}]
    statuses: dict[int, int] = {}
    end = time.monotonic() + 30
    try:
        with caplog.at_level("ERROR", logger="keypatch.serve"):
            for i in range(300):
                if time.monotonic() > end:
                    break
                body = _mutate(rng, seeds[i % 2])
                path = rng.choice(["/predict", "/setup", "/webhook"])
                status, answer, _ = _call(srv.url + path, json.dumps(body).encode(), timeout=30)
                statuses[status] = statuses.get(status, 0) + 1
                assert status in (200, 400), (path, body, answer)
                assert isinstance(answer, dict)
        assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
        assert statuses.get(200, 0) > 50 and sum(statuses.values()) >= 100
        assert _call(srv.url + "/health")[0] == 200
    finally:
        srv.shutdown()


def test_document_root_traversal_stays_held(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(_jpeg())
    src = ImageSource(document_root=root)
    for ref in ["../secret.jpg", "/data/local-files/?d=../secret.jpg", f"file://{tmp_path}/secret.jpg",
                str(tmp_path / "secret.jpg"), "sub/../../secret.jpg", "..%2fsecret.jpg"]:
        with pytest.raises(ImageFetchError):
            src.get(ref)


def test_images_over_the_byte_limit_are_refused(peers, tmp_path):
    _, evil = peers
    evil.routes["/big.jpg"] = b"x" * 5000
    with pytest.raises(ImageFetchError, match="over the limit"):
        ImageSource(max_bytes=1000, timeout=3).get(evil.url + "/big.jpg")
    (tmp_path / "big.jpg").write_bytes(b"x" * 5000)
    with pytest.raises(ImageFetchError, match="over the limit"):
        ImageSource(document_root=tmp_path, max_bytes=1000).get("big.jpg")


def test_docs_name_every_rule():
    text = (Path(__file__).resolve().parents[2] / "docs" / "serve.md").read_text()
    for word in ["BASIC_AUTH_USER", "--fetch-host", "--server-name", "Origin", "link-local", "--image-timeout",
                 "--request-timeout", "--max-in-flight", "application/json", "waitress"]:
        assert word in text, word
