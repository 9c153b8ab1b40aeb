"""Getting a task's image: a Label Studio URL (local files, uploads), an http(s) URL or a local file.

Label Studio stores an image reference in the task's data: ``/data/upload/3/abc-photo.jpg`` for an
uploaded file, ``/data/local-files/?d=photos/a.jpg`` for local storage, or any ``http(s)://`` URL.
Label Studio URLs are fetched from the Label Studio host with its token; a local-files URL is read
from disk when ``document_root`` holds the file. A plain path is read only under ``document_root``.

The trust rules (``docs/serve.md``):

- A token goes only to the host it came with: ``label_studio_url`` and ``api_key`` given together
  at start (then pinned: ``/setup`` cannot change them), or the ``hostname`` and ``access_token``
  of one ``/setup`` call (:meth:`ImageSource.bind`). Across a redirect the token is sent only while
  the scheme, host and port stay those of that host.
- Only http(s) is fetched, and every hop of a redirect is checked again: its scheme, its host
  against ``fetch_hosts`` (when given), and at connection time every address the name resolves
  to: link-local (cloud metadata at 169.254.169.254, fe80::/10), unspecified and multicast
  addresses are refused, whatever spelling of the address the URL used.
- One deadline per image (``timeout`` seconds for the connection, every redirect and every read),
  and at most ``max_bytes`` read.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_FILES = "/data/local-files/"
UPLOADS = "/data/upload/"
REDIRECTS = {301, 302, 303, 307, 308}


class ImageFetchError(ValueError):
    """A task's image could not be got (the message says which and why)."""


def _origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, the port filled in."""
    p = urllib.parse.urlsplit(url)
    try:
        port = p.port
    except ValueError:
        raise ImageFetchError(f"{url}: not a valid URL (its port)") from None
    return p.scheme.lower(), (p.hostname or "").lower(), port or (443 if p.scheme.lower() == "https" else 80)


def refused_address(address: str) -> str | None:
    """Why a fetch may not connect to ``address`` (an IP address as text), or None when it may."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_link_local:
        return "a link-local address (where clouds serve instance metadata)"
    if ip.is_unspecified or ip.is_multicast:
        return "not a host's address"
    return None


class _Deadline:
    """Seconds left until a fixed moment; an ImageFetchError once it has passed."""

    def __init__(self, seconds: float, url: str) -> None:
        self.end, self.url, self.seconds = time.monotonic() + seconds, url, seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ImageFetchError(f"{self.url}: not fetched within {self.seconds:g} s")
        return left


class _DeadlineSocket(socket.socket):
    """A socket each of whose reads waits at most until its deadline (so an answer that drips in,
    headers included, cannot outlast it)."""

    deadline: _Deadline | None = None

    def recv_into(self, buffer, nbytes=0, flags=0):  # noqa: ANN001 - socket's signature
        if self.deadline is not None:
            self.settimeout(self.deadline.left())
        return super().recv_into(buffer, nbytes, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """:class:`_DeadlineSocket` for TLS."""

    deadline: _Deadline | None = None

    def recv_into(self, buffer, nbytes=None, flags=0):  # noqa: ANN001 - SSLSocket's signature
        if self.deadline is not None:
            self.settimeout(self.deadline.left())
        return super().recv_into(buffer, nbytes, flags)


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to ``host``, to an address checked by :func:`refused_address` (checked at
    connection time, so a name that resolves elsewhere on a second look gains nothing)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ImageFetchError(f"{deadline.url}: unreachable ({exc.strerror or exc})") from None
    for *_, addr in infos:
        why = refused_address(addr[0])
        if why:
            raise ImageFetchError(f"{deadline.url}: {host} is {addr[0]}, {why}: not fetched")
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = _DeadlineSocket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(addr)
            sock.deadline = deadline
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise ImageFetchError(f"{deadline.url}: unreachable ({last})")


class _Response:
    """One hop's answer, read under the deadline."""

    def __init__(self, url: str, headers: dict[str, str], deadline: _Deadline, method: str = "GET",
                 body: bytes | None = None) -> None:
        scheme, self.host, self.port = _origin(url)
        self.deadline = deadline
        split = urllib.parse.urlsplit(url)
        target = (split.path or "/") + (f"?{split.query}" if split.query else "")
        sock = _connect(self.host, self.port, deadline)
        if scheme == "https":
            try:
                sock.settimeout(deadline.left())
                context = ssl.create_default_context()
                context.sslsocket_class = _DeadlineSSLSocket
                sock = context.wrap_socket(sock, server_hostname=self.host)
                sock.deadline = deadline
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise ImageFetchError(f"{url}: TLS failed ({exc})") from None
        self.sock = sock
        self.conn = http.client.HTTPConnection(self.host, self.port)
        self.conn.sock = sock
        try:
            self.conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in {"User-Agent": "keypatch-serve", **headers}.items():
                self.conn.putheader(k, v)
            if body is not None:
                self.conn.putheader("Content-Length", str(len(body)))
            self.conn.endheaders(body)
            self.resp = self.conn.getresponse()
        except ImageFetchError:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if isinstance(exc, TimeoutError):
                deadline.left()
            raise ImageFetchError(f"{url}: unreachable ({exc})") from None

    def read(self, limit: int) -> bytes:
        """At most ``limit + 1`` bytes of the body, every read bounded by the deadline."""
        chunks, total = [], 0
        try:
            while total <= limit:
                chunk = self.resp.read1(min(1 << 16, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TimeoutError):
                self.deadline.left()
            raise ImageFetchError(f"{self.deadline.url}: the answer broke off ({exc})") from None
        return b"".join(chunks)

    def close(self) -> None:
        self.conn.close()
        self.sock.close()


@dataclass
class _Credentials:
    """A Label Studio host and the token that goes with it (never one without the other)."""

    url: str
    key: str | None
    access: str | None = None  # a personal access token's current access token


@dataclass
class ImageSource:
    """Where images are fetched from, the trust rules and the limits on each fetch.

    Parameters
    ----------
    label_studio_url, api_key : str, optional
        Label Studio's address and a token for it. Given here, both are pinned: a ``/setup`` call
        cannot change them. An ``api_key`` needs its ``label_studio_url``.
    document_root : path, optional
        Local-files URLs and plain paths are read from disk under this folder only.
    max_bytes : int
        Largest image read.
    timeout : float
        Seconds for one image, its connection, redirects and reads together.
    fetch_hosts : sequence of str, optional
        When given, http(s) URLs are fetched only from these hosts (names or addresses, matched
        exactly, case-insensitively) and Label Studio's: for backends that face a network.
    max_redirects : int
        Redirects followed per image.
    """

    label_studio_url: str | None = None
    api_key: str | None = None
    document_root: Path | None = None
    max_bytes: int = 64 << 20
    timeout: float = 30.0
    fetch_hosts: tuple[str, ...] | None = None
    max_redirects: int = 5
    _creds: _Credentials | None = field(default=None, repr=False)
    _pinned: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.api_key and not self.label_studio_url:
            raise ValueError("an API key needs its Label Studio URL (--label-studio-url): a token is sent only to "
                             "the host it was given with")
        if self.label_studio_url:
            self._check_http(self.label_studio_url)
            self._creds = _Credentials(self.label_studio_url.rstrip("/"), self.api_key or None)
            self._pinned = True
        if self.fetch_hosts is not None:
            self.fetch_hosts = tuple(h.lower().strip("[]") for h in self.fetch_hosts)
        self.document_root = Path(self.document_root).resolve() if self.document_root is not None else None

    # ------------------------------------------------------------------ Label Studio's host and token
    def bind(self, hostname: object, token: object) -> bool:
        """Take Label Studio's host and token from one ``/setup`` call, together; False (nothing
        changes) when they were pinned at start to another host, or the hostname is not an http(s)
        URL. A token without a hostname is not kept: it could not be known where it may go."""
        if not isinstance(hostname, str) or not hostname:
            return False
        try:
            self._check_http(hostname)
        except ImageFetchError:
            return False
        key = token if isinstance(token, str) and token else None
        with self._lock:
            if self._pinned:
                if self._creds is None or _origin(self._creds.url) != _origin(hostname):
                    return False
                if self._creds.key is None and key is not None:  # the pinned host's own /setup brings its token
                    self._creds = _Credentials(self._creds.url, key)
                return True
            self._creds = _Credentials(hostname.rstrip("/"), key)
            return True

    @property
    def label_studio(self) -> str | None:
        """The Label Studio host images are fetched from, if one is known."""
        creds = self._creds
        return creds.url if creds else None

    def _auth(self, creds: _Credentials, renew: bool = False) -> dict[str, str]:
        """The Authorization header for ``creds``' host: ``Token KEY`` for a legacy token; for a
        personal access token (a JWT refresh token), ``Bearer`` of an access token got from
        ``/api/token/refresh/`` (kept, and renewed when Label Studio answers 401)."""
        key = creds.key
        if not key:
            return {}
        if key.count(".") != 2:
            return {"Authorization": f"Token {key}"}
        with self._lock:
            if creds.access is None or renew:
                url = creds.url + "/api/token/refresh/"
                creds.access = self._refresh(url, key)
            return {"Authorization": f"Bearer {creds.access}"}

    def _refresh(self, url: str, key: str) -> str:
        resp = _Response(url, {"Content-Type": "application/json"}, _Deadline(self.timeout, url), "POST",
                         json.dumps({"refresh": key}).encode())
        try:
            if resp.resp.status != 200:
                raise ImageFetchError(f"could not exchange the personal access token at {url}: "
                                      f"HTTP {resp.resp.status}")
            return str(json.loads(resp.read(1 << 16))["access"])
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, ImageFetchError):
                raise
            raise ImageFetchError(f"could not exchange the personal access token at {url}: {exc}") from None
        finally:
            resp.close()

    # ------------------------------------------------------------------ one image
    def api(self, path: str) -> bytes:
        """GET ``path`` (``/api/...``) of the pinned Label Studio host with its token (an access token
        renewed once when it answers 401), under this source's size limit and deadline."""
        if not self._pinned or self._creds is None:
            raise ImageFetchError("Label Studio's API is read only from a host given with its token "
                                  "(--label-studio-url and --api-key)")
        if not path.startswith("/api/"):
            raise ImageFetchError(f"{path}: not a path of Label Studio's API")
        return self._label_studio(self._creds, path)

    def get(self, ref: object) -> bytes:
        """The bytes of the image ``ref`` names; an :class:`ImageFetchError` saying why not."""
        if not isinstance(ref, str) or not ref:
            raise ImageFetchError(f"the task's image is {ref!r}, not a URL or path")
        parsed = urllib.parse.urlsplit(ref)
        scheme = parsed.scheme.lower()
        if scheme in ("http", "https"):
            creds = self._creds
            if parsed.path.startswith((LOCAL_FILES, UPLOADS)) and creds and _origin(ref) == _origin(creds.url):
                return self._label_studio(creds, ref)
            return self._fetch(ref, None)
        if ref.startswith(LOCAL_FILES):
            d = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            local = self._under_root(d) if self.document_root is not None else None
            if local is not None and local.is_file():
                return self._read(local, ref)
            return self._label_studio(self._creds, ref)
        if ref.startswith(UPLOADS):
            return self._label_studio(self._creds, ref)
        if scheme in ("", "file"):
            local = self._under_root(urllib.parse.unquote(parsed.path) if scheme == "file" else ref)
            if local is None:
                raise ImageFetchError(f"{ref}: a local path is read only under the backend's --document-root")
            return self._read(local, ref)
        raise ImageFetchError(f"{ref}: {scheme}:// images are not fetched (use http(s), Label Studio or "
                              "local files)")

    def _under_root(self, rel: str) -> Path | None:
        if self.document_root is None or "\x00" in rel:
            return None
        root = self.document_root
        p = (root / rel).resolve()
        return p if p == root or root in p.parents else None

    def _read(self, path: Path, ref: str) -> bytes:
        if not path.is_file():
            raise ImageFetchError(f"{ref}: not a file under the document root")
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ImageFetchError(f"{ref} is {size:,} bytes, over the limit of {self.max_bytes:,}")
            with open(path, "rb") as f:
                return f.read(self.max_bytes + 1)[: self.max_bytes]
        except OSError as exc:
            raise ImageFetchError(f"{ref}: {exc.strerror or exc}") from None

    def _label_studio(self, creds: _Credentials | None, ref: str) -> bytes:
        if creds is None:
            raise ImageFetchError(f"{ref} is a Label Studio URL, and no Label Studio host is known: connect the "
                                  "backend from Label Studio (its /setup call names it) or start it with "
                                  "--label-studio-url and --api-key")
        url = ref if urllib.parse.urlsplit(ref).scheme else creds.url + ref
        try:
            return self._fetch(url, creds)
        except ImageFetchError as exc:
            if "HTTP 401" not in str(exc) or not creds.key or creds.key.count(".") != 2:
                raise
            return self._fetch(url, creds, renew=True)  # an access token expires: renew it once

    @staticmethod
    def _check_http(url: str) -> None:
        p = urllib.parse.urlsplit(url)
        if p.scheme.lower() not in ("http", "https") or not p.hostname:
            raise ImageFetchError(f"{url}: only http(s) URLs with a host are fetched")
        _origin(url)

    def _fetch(self, url: str, creds: _Credentials | None, renew: bool = False) -> bytes:
        """GET ``url`` and its redirects under one deadline; ``creds``' token only to its own origin."""
        deadline = _Deadline(self.timeout, url)
        home = _origin(creds.url) if creds else None
        for _ in range(self.max_redirects + 1):
            self._check_http(url)
            origin = _origin(url)
            if self.fetch_hosts is not None and origin != home and origin[1] not in self.fetch_hosts:
                raise ImageFetchError(f"{url}: {origin[1]} is not among the hosts images are fetched from "
                                      "(--fetch-host)")
            headers = {}
            if creds is not None and origin == home:
                headers = self._auth(creds, renew)
                renew = False
            resp = _Response(url, headers, deadline)
            try:
                status = resp.resp.status
                if status in REDIRECTS:
                    target = resp.resp.getheader("Location")
                    if not target:
                        raise ImageFetchError(f"{url}: HTTP {status} without a Location")
                    url = urllib.parse.urljoin(url, target)
                    continue
                if status != 200:
                    raise ImageFetchError(f"{url}: HTTP {status} {resp.resp.reason}")
                length = resp.resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise ImageFetchError(f"{url} is {int(length):,} bytes, over the limit of {self.max_bytes:,}")
                data = resp.read(self.max_bytes)
            finally:
                resp.close()
            if len(data) > self.max_bytes:
                raise ImageFetchError(f"{url} is over the limit of {self.max_bytes:,} bytes")
            return data
        raise ImageFetchError(f"{url}: more than {self.max_redirects} redirects")
