"""The HTTP side of the Label Studio ML backend: Label Studio's routes over a :class:`Backend`.

Routes (JSON in and out): ``GET /health`` and ``GET /`` (``{"status": "UP", ...}``), ``POST /setup``
(``{"model_version"}``), ``POST /predict`` (``{"tasks", "label_config", ...}`` ->
``{"results": [one prediction per task]}``), ``POST /webhook`` and ``POST /train`` (annotation
events: acknowledged; key patches do not learn from annotations), ``GET /versions``, ``GET
/metrics`` (request, task, batch and store counts). A route asked with another method answers 405.

The server is waitress (a maintained, pure-Python WSGI server): it reads each request whole, within
``max_request`` bytes and ``channel_timeout`` seconds of silence, before a worker thread sees it, so
a slow client holds a connection, never a worker; ``threads`` workers bound the requests in flight
and ``connection_limit`` the connections. The rules at the door, in order (``docs/serve.md``):

1. ``Host`` must name this server: an IP address, ``localhost``, this machine's name, or a name in
   ``server_names`` (a browser tricked by DNS rebinding sends the attacker's name).
2. A request carrying a foreign ``Origin`` (a web page of another site) is refused (403).
3. With ``auth`` (user, password), every route but ``/health`` needs HTTP basic credentials (401).
4. A POST body must be ``application/json`` (415), a JSON object (400).
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from keypatch.serve.backend import Backend

log = logging.getLogger("keypatch.serve")

ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET",), "/health": ("GET",), "/versions": ("GET",), "/metrics": ("GET",),
    "/predict": ("POST",), "/setup": ("POST",), "/webhook": ("POST",), "/train": ("POST",),
}
OPEN = {"/health"}  # answered without credentials (Label Studio's liveness check)
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 415: "Unsupported Media Type", 500: "Internal Server Error"}


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine alone."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """The warning for a backend that listens beyond this machine without credentials, else None."""
    if auth or is_loopback(host):
        return None
    return (f"keypatch serve listens on {host} without credentials: anyone who reaches this port can make it fetch "
            "URLs, spend its model's time and read its results (/predict, /setup, /metrics). Set BASIC_AUTH_USER "
            "and BASIC_AUTH_PASS (and the same in Label Studio's model settings), and consider --fetch-host")


def _split_host(value: str) -> str:
    """The host part of a ``Host`` header (``name``, ``1.2.3.4``, ``[::1]``, each with or without a port)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class App:
    """The WSGI application: the door's rules, then Label Studio's routes over ``backend``."""

    def __init__(self, backend: Backend, *, auth: tuple[str, str] | None = None, server_names: Iterable[str] = (),
                 request_timeout: float | None = 300.0) -> None:
        self.backend, self.auth, self.request_timeout = backend, auth, request_timeout
        names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names = frozenset(names | {n.lower() for n in server_names})

    def host_ok(self, host: str) -> bool:
        name = _split_host(host)
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self.names

    def _authorised(self, header: str) -> bool:
        if self.auth is None:
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except ValueError:
            return False
        ok_user = hmac.compare_digest(user.encode(), self.auth[0].encode())
        ok_pass = hmac.compare_digest(password.encode(), self.auth[1].encode())
        return bool(sep) and ok_user and ok_pass

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        try:
            status, body, headers = self.handle(environ)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("a request failed")
            status, body, headers = 500, {"error": "internal error (logged by the backend)"}, []
        data = json.dumps(body).encode()
        start_response(f"{status} {REASONS.get(status, '')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
        return [data]

    def handle(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """``(status, JSON body, extra headers)`` for one request."""
        host = environ.get("HTTP_HOST", "")
        if not self.host_ok(host):
            return 403, {"error": f"Host {host[:100]!r} is not a name of this server (--server-name adds one)"}, []
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and origin.rstrip("/").lower() != f"{environ['wsgi.url_scheme']}://{host}".lower():
            return 403, {"error": "requests from web pages of other sites are refused"}, []
        path = environ.get("PATH_INFO", "").rstrip("/") or "/"
        method = environ["REQUEST_METHOD"]
        if path not in ROUTES:
            return 404, {"error": f"no route {path[:100]}"}, []
        if path not in OPEN and not self._authorised(environ.get("HTTP_AUTHORIZATION", "")):
            return 401, {"error": "credentials needed (HTTP basic)"}, [("WWW-Authenticate", 'Basic realm="keypatch"')]
        if method not in ROUTES[path] and not (method == "HEAD" and "GET" in ROUTES[path]):
            return 405, {"error": f"{path} answers {', '.join(ROUTES[path])}, not {method[:20]}"}, [
                ("Allow", ", ".join(ROUTES[path]))]
        backend = self.backend
        if method in ("GET", "HEAD"):
            if path in ("/", "/health"):
                return 200, {"status": "UP", "model_class": "keypatch", "model_version": backend.model_version}, []
            if path == "/versions":
                return 200, {"versions": [backend.model_version]}, []
            return 200, dict(backend.stats), []
        kind = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return 415, {"error": f"the body must be application/json, not {kind[:60] or 'untyped'}"}, []
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            payload = json.loads(environ["wsgi.input"].read(length) or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
        except RecursionError:
            return 400, {"error": "malformed JSON: nested too deeply"}, []
        except ValueError as exc:
            return 400, {"error": f"malformed JSON: {exc}"}, []
        if path == "/predict":
            tasks = payload.get("tasks")
            if not isinstance(tasks, list):
                return 400, {"error": "the body must hold a list of tasks"}, []
            return 200, {"results": backend.predict(tasks, payload.get("label_config"), self.request_timeout)}, []
        if path == "/setup":
            return 200, backend.setup(payload), []
        if path == "/webhook":
            try:
                return 200, backend.webhook(payload), []
            except Exception as exc:  # noqa: BLE001 - a bad event is its sender's error, never the server's
                return 400, {"error": " ".join(str(exc).split())[:500] or type(exc).__name__}, []
        return 200, {"status": "ok", "note": "key patches do not learn from annotations"}, []


class BackendServer:
    """A waitress HTTP server over one :class:`Backend` (see the module's docstring for the rules).

    Parameters
    ----------
    backend : Backend
    host, port : str, int
        Where to listen (port 0: any free port; :attr:`url` tells which).
    max_request : int
        Largest request body in bytes (larger: 413).
    auth : (user, password), optional
        HTTP basic credentials every route but ``/health`` needs.
    server_names : iterable of str
        Host names this server is reached by, besides IP addresses, ``localhost`` and this machine's name.
    threads : int
        Requests served at once (the others wait their turn).
    request_timeout : float, optional
        Seconds a ``/predict`` waits for its images; a task not done by then gets an error result.
    channel_timeout : int
        Seconds of silence after which a connection is closed (a client sending slowly).
    connection_limit : int
        Most open connections.
    """

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 9090, max_request: int = 16 << 20, *,
                 auth: tuple[str, str] | None = None, server_names: Iterable[str] = (), threads: int = 16,
                 request_timeout: float | None = 300.0, channel_timeout: int = 30,
                 connection_limit: int = 100) -> None:
        try:
            from waitress.server import create_server
        except ImportError:
            raise RuntimeError("keypatch serve needs the waitress HTTP server: pip install 'keypatch[serve]'") from None

        # requests past --max-in-flight wait their turn by design: waitress would warn at each one
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.backend, self.max_request = backend, max_request
        self.app = App(backend, auth=auth, server_names=[host, *server_names], request_timeout=request_timeout)
        self._server = create_server(self.app, host=host, port=port, threads=threads, ident="keypatch",
                                     max_request_body_size=max_request, channel_timeout=channel_timeout,
                                     connection_limit=connection_limit, clear_untrusted_proxy_headers=True,
                                     expose_tracebacks=False, asyncore_loop_timeout=1)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` the server listens on."""
        host, port = self._server.effective_host, self._server.effective_port
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown`."""
        from waitress import wasyncore

        self._server.run()  # returns once shutdown closed every channel
        wasyncore.close_all(self._server._map)
        self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving: the listening socket and every connection are closed, the workers stopped."""
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self._server._map)
        self._stopped.wait(timeout=5)

    def server_close(self) -> None:
        """Kept for the http.server API: :meth:`shutdown` already closed everything."""
