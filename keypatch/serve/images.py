"""Getting a task's image: a Label Studio URL (local files, uploads), an http(s) URL or a local file.

Label Studio stores an image reference in the task's data: ``/data/upload/3/abc-photo.jpg`` for an
uploaded file, ``/data/local-files/?d=photos/a.jpg`` for local storage, or any ``http(s)://`` URL.
Label Studio URLs are fetched from the Label Studio host with the user's token (both given by
Label Studio's ``/setup`` call, or by ``--label-studio-url`` and ``--api-key``); a local-files URL
is read from disk when ``document_root`` holds the file. A plain path is read only under
``document_root``. Every read is bounded by ``max_bytes`` and a timeout.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_FILES = "/data/local-files/"
UPLOADS = "/data/upload/"


class ImageFetchError(ValueError):
    """A task's image could not be got (the message says which and why)."""


@dataclass
class ImageSource:
    """Where images are fetched from and the limits on each fetch."""

    label_studio_url: str | None = None
    api_key: str | None = None
    document_root: Path | None = None
    max_bytes: int = 64 << 20
    timeout: float = 30.0
    _access: str | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _auth(self, renew: bool = False) -> dict[str, str]:
        """The Authorization header for Label Studio: ``Token KEY`` for a legacy token; for a
        personal access token (a JWT refresh token), ``Bearer`` of an access token got from
        ``/api/token/refresh/`` (kept, and renewed when Label Studio answers 401)."""
        key = self.api_key
        if not key:
            return {}
        if key.count(".") != 2:
            return {"Authorization": f"Token {key}"}
        with self._lock:
            if self._access is None or renew:
                url = self.label_studio_url.rstrip("/") + "/api/token/refresh/"
                req = urllib.request.Request(url, data=json.dumps({"refresh": key}).encode(),
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                        self._access = json.loads(resp.read())["access"]
                except (OSError, ValueError, KeyError) as exc:
                    raise ImageFetchError(f"could not exchange the personal access token at {url}: {exc}") from None
            return {"Authorization": f"Bearer {self._access}"}

    def get(self, ref: str) -> bytes:
        """The bytes of the image ``ref`` names."""
        if not isinstance(ref, str) or not ref:
            raise ImageFetchError(f"the task's image is {ref!r}, not a URL or path")
        parsed = urllib.parse.urlparse(ref)
        if parsed.scheme in ("http", "https"):
            path = parsed.path
            if path.startswith((LOCAL_FILES, UPLOADS)) and self._same_host(ref):
                return self._label_studio(path + (f"?{parsed.query}" if parsed.query else ""))
            return self._fetch(ref, {})
        if ref.startswith(LOCAL_FILES):
            d = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
            local = self._under_root(d) if self.document_root is not None else None
            if local is not None and local.is_file():
                return self._read(local)
            return self._label_studio(ref)
        if ref.startswith(UPLOADS):
            return self._label_studio(ref)
        if parsed.scheme in ("", "file"):
            local = self._under_root(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else ref)
            if local is None:
                raise ImageFetchError(f"{ref}: a local path is read only under the backend's --document-root")
            return self._read(local)
        raise ImageFetchError(f"{ref}: {parsed.scheme}:// images are not fetched (use http(s), Label Studio or "
                              "local files)")

    def _same_host(self, url: str) -> bool:
        if not self.label_studio_url:
            return False
        a, b = urllib.parse.urlparse(url), urllib.parse.urlparse(self.label_studio_url)
        return (a.hostname, a.port) == (b.hostname, b.port)

    def _under_root(self, rel: str) -> Path | None:
        if self.document_root is None:
            return None
        root = self.document_root.resolve()
        p = (root / rel).resolve()
        return p if p == root or root in p.parents else None

    def _read(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ImageFetchError(f"{path}: {exc.strerror or exc}") from None
        if size > self.max_bytes:
            raise ImageFetchError(f"{path} is {size:,} bytes, over the limit of {self.max_bytes:,}")
        return path.read_bytes()

    def _label_studio(self, path: str) -> bytes:
        if not self.label_studio_url:
            raise ImageFetchError(f"{path} is a Label Studio URL, and no Label Studio host is known: connect the "
                                  "backend from Label Studio (its /setup call names it) or start it with "
                                  "--label-studio-url and --api-key")
        url = self.label_studio_url.rstrip("/") + path
        try:
            return self._fetch(url, self._auth())
        except ImageFetchError as exc:
            if "HTTP 401" not in str(exc) or not self.api_key or self.api_key.count(".") != 2:
                raise
            return self._fetch(url, self._auth(renew=True))  # an access token expires: renew it once

    def _fetch(self, url: str, headers: dict[str, str]) -> bytes:
        req = urllib.request.Request(url, headers={"User-Agent": "keypatch-serve", **headers})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http(s) only, checked)
                length = resp.headers.get("Content-Length")
                if length and int(length) > self.max_bytes:
                    raise ImageFetchError(f"{url} is {int(length):,} bytes, over the limit of {self.max_bytes:,}")
                data = resp.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise ImageFetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ImageFetchError(f"{url}: unreachable ({reason})") from None
        if len(data) > self.max_bytes:
            raise ImageFetchError(f"{url} is over the limit of {self.max_bytes:,} bytes")
        return data
