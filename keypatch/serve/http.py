"""The HTTP side of the Label Studio ML backend: Label Studio's routes over a :class:`Backend`.

Routes (JSON in and out): ``GET /health`` and ``GET /`` (``{"status": "UP", ...}``), ``POST /setup``
(``{"model_version"}``), ``POST /predict`` (``{"tasks", "label_config", ...}`` ->
``{"results": [one prediction per task]}``), ``POST /webhook`` (annotation events: acknowledged;
key patches do not learn from annotations), ``GET /versions``, ``GET /metrics`` (request, task,
batch and store counts). Each request is served in a thread of its own; the model's work is
batched by the backend. Bodies over ``max_request`` bytes get 413, malformed JSON 400.
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from keypatch.serve.backend import Backend

log = logging.getLogger("keypatch.serve")


class _Handler(BaseHTTPRequestHandler):
    server: BackendServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        backend = self.server.backend
        path = self.path.split("?")[0].rstrip("/")
        if path in ("", "/health"):
            self._send(200, {"status": "UP", "model_class": "keypatch", "model_version": backend.model_version})
        elif path == "/versions":
            self._send(200, {"versions": [backend.model_version]})
        elif path == "/metrics":
            self._send(200, dict(backend.stats))
        else:
            self._send(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        backend = self.server.backend
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > self.server.max_request:
            self.close_connection = True
            left = length if 0 < length <= 4 * self.server.max_request else 0
            while left > 0:  # a modest excess is read and dropped, so the client hears the answer
                left -= len(self.rfile.read(min(left, 1 << 16)) or b"x" * left)
            self._send(413, {"error": f"the request body must be at most {self.server.max_request:,} bytes"})
            return
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._send(400, {"error": f"malformed JSON: {exc}"})
            return
        path = self.path.split("?")[0].rstrip("/")
        if path == "/predict":
            tasks = payload.get("tasks")
            if not isinstance(tasks, list):
                self._send(400, {"error": "the body must hold a list of tasks"})
                return
            self._send(200, {"results": backend.predict(tasks, payload.get("label_config"))})
        elif path == "/setup":
            self._send(200, backend.setup(payload))
        elif path in ("/webhook", "/train"):
            self._send(200, {"status": "ok", "note": "key patches do not learn from annotations"})
        else:
            self._send(404, {"error": f"no route {path}"})


class BackendServer(ThreadingHTTPServer):
    """A threading HTTP server over one :class:`Backend`."""

    daemon_threads = True

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 9090,
                 max_request: int = 16 << 20) -> None:
        self.backend, self.max_request = backend, max_request
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` the server listens on."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"
