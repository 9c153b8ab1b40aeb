"""Option values, checked while the command line is parsed: before anything is loaded or written.

Every option that takes a value has a ``type`` from this module (or ``choices``); argparse calls it
on the text given, and a bad value becomes one line, ``keypatch COMMAND: error: argument --OPTION:
...``, and exit status 2 (:class:`Parser`). Each check carries ``bad`` examples of values it
refuses and one ``good`` value, which ``tests/cli/test_options.py`` uses to try every option of
every sub-command: an option with a value and neither ``choices`` nor such a type fails that test.
Placeholders in the examples: ``{file}`` an existing file, ``{dir}`` an existing folder,
``{missing}`` a path where nothing is.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

Check = Callable[[str], Any]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def check(bad: list[str], good: str) -> Callable[[Check], Check]:
    """Mark a value check with examples of values it refuses and one it takes."""

    def mark(fn: Check) -> Check:
        fn.bad, fn.good = bad, good  # type: ignore[attr-defined]
        return fn

    return mark


def _fail(what: str, text: str) -> NoReturn:
    raise argparse.ArgumentTypeError(f"{what}, got {text!r}")


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        _fail(what, text)
    if kind is float and not math.isfinite(value):
        _fail(what, text)
    return value


def _number_check(name: str, kind: type, ok: Callable[[Any], bool], what: str, bad: list[str], good: str) -> Check:
    """A check that the text is a (finite) ``kind`` for which ``ok`` holds, refusing with ``what``."""

    def fn(text: str) -> Any:
        value = _number(text, kind, what)
        if not ok(value):
            _fail(what, text)
        return value

    fn.__name__, fn.__doc__ = name, f"A {kind.__name__}: {what[len('expected '):]}."
    return check(bad=bad, good=good)(fn)


ratio = _number_check("ratio", float, lambda v: 0.0 < v <= 1.0, "expected a ratio in (0, 1]",
                      ["0", "1.5", "-0.1", "nan", "x"], "0.25")
fraction = _number_check("fraction", float, lambda v: 0.0 < v < 1.0, "expected a fraction in (0, 1)",
                         ["0", "1", "-0.5", "x"], "0.3")
drop = _number_check("drop", float, lambda v: 0.0 <= v < 1.0, "expected a share of patches to drop in [0, 1)",
                     ["1", "-0.1", "nan", "x"], "0.2")
positive_int = _number_check("positive_int", int, lambda v: v >= 1, "expected a positive integer",
                             ["0", "-1", "1.5", "x"], "2")
seed = _number_check("seed", int, lambda v: v >= 0, "expected a seed (an integer >= 0)", ["-1", "1.5", "x"], "0")
positive_float = _number_check("positive_float", float, lambda v: v > 0, "expected a number > 0",
                               ["0", "-1", "nan", "inf", "x"], "1")
non_negative_float = _number_check("non_negative_float", float, lambda v: v >= 0, "expected a number >= 0",
                                   ["-1", "nan", "inf", "x"], "0")


@check(bad=["gif", "jpeg", "webp:0", "png:90"], good="jpeg:90")
def codec(text: str) -> str:
    """A codec of quantized datasets: png, webp (lossless), webp:Q or jpeg:Q."""
    from keypatch.data.codec import parse_codec

    try:
        return parse_codec(text).spec
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _auto_or_count(name: str, what: str, bad: list[str]) -> Check:
    """A check of ``auto`` or an integer >= 1 (a number of ``what``)."""
    message = f"expected 'auto' or a number of {what} >= 1"

    def fn(text: str) -> int | str:
        if text == "auto":
            return text
        value = _number(text, int, message)
        if value < 1:
            _fail(message, text)
        return value

    fn.__name__, fn.__doc__ = name, f"``auto`` or a number of {what} >= 1."
    return check(bad=bad, good="auto")(fn)


threads = _auto_or_count("threads", "threads", ["0", "-2", "x"])
batch_size = _auto_or_count("batch_size", "images", ["0", "-1", "x", "1.5"])


@check(bad=["-1", "x", "7,", "a,b", "1,2,3", "1,-3"], good="center")
def start(text: str) -> str:
    """``center``, ``none``, a patch index or ``ROW,COL`` (non-negative; the model's grid bounds them
    once it is known, before any image is read)."""
    if text in ("center", "none") or re.fullmatch(r"\d+", text) or re.fullmatch(r"\d+,\d+", text):
        return text
    _fail("expected center, none, a patch index (e.g. 98) or ROW,COL (e.g. 7,0), all >= 0", text)


@check(bad=["random:nosuch", "{missing}.safetensors", "{file}"], good="random:toy")
def model(text: str) -> str:
    """A :func:`keypatch.load_mae` spec, checked as far as it can be without loading: ``default``,
    ``random:ARCH[:SEED]``, an existing file or folder, or a hub id (``org/name``)."""
    from keypatch.reconstructors.config import ARCHITECTURES

    if text == "default" or text.startswith("default@"):
        return text
    if text.startswith("random:"):
        parts = text.split(":")
        if len(parts) in (2, 3) and parts[1] in ARCHITECTURES and (len(parts) == 2 or parts[2].isdigit()):
            return text
        _fail(f"expected random:ARCH[:SEED] with ARCH one of {', '.join(sorted(ARCHITECTURES))}", text)
    path = Path(text).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix in (".safetensors", ".pth", ".pt", ".bin")):
        return text
    if not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        return text  # a hub id: checked when it is downloaded
    _fail("expected default, random:ARCH, MAE weights (.safetensors, .pth, .pt, .bin), a model folder or a "
          "hub id (org/name)", text)


def _path_check(name: str, ok: Callable[[Path], bool], what: str, bad: list[str], good: str) -> Check:
    """A check that ``ok(Path(text))`` holds, refusing with ``what``."""

    def fn(text: str) -> Path:
        path = Path(text)
        if not ok(path):
            _fail(what, text)
        return path

    fn.__name__, fn.__doc__ = name, f"{what[0].upper()}{what[1:]}: a path that passes ``{ok.__name__}``."
    return check(bad=bad, good=good)(fn)


existing = _path_check("existing", Path.exists, "no such file or folder", ["{missing}"], "{file}")
existing_dir = _path_check("existing_dir", Path.is_dir, "expected an existing folder", ["{missing}", "{file}"],
                           "{dir}")
existing_file = _path_check("existing_file", Path.is_file, "expected an existing file", ["{missing}", "{dir}"],
                            "{file}")


@check(bad=["{missing}", "http//not-a-uri"], good="s3://bucket/images")
def source(text: str) -> Path | str:
    """An existing file or folder, or a URI (``file://``, ``s3://``...: checked when it is read)."""
    from keypatch.geometry.files import is_uri

    if is_uri(text):
        return text
    return existing(text)


def _blocked(path: Path) -> Path | None:
    """The nearest parent of ``path`` that is a file (so nothing can be made there), if any."""
    return next((p for p in path.parents if p.is_file()), None)


@check(bad=["{file}", "{file}/sub"], good="{missing}")
def out_dir(text: str) -> Path:
    """A folder to write into: one that exists, or can be made (no file in the way)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        _fail("expected a folder, and a file is there", text)
    if _blocked(path):
        _fail(f"cannot make a folder under the file {_blocked(path)}", text)
    return path


@check(bad=["{dir}", "{file}/x.json"], good="{missing}.json")
def out_file(text: str) -> Path:
    """A file to write: not a folder, with no file in the way of its folder."""
    path = Path(text)
    if path.is_dir():
        _fail("expected a file name, and a folder is there", text)
    if _blocked(path):
        _fail(f"cannot make a folder under the file {_blocked(path)}", text)
    return path


@check(bad=["", "localhost:8080", "ftp://host/", "http://"], good="http://127.0.0.1:8080")
def http_url(text: str) -> str:
    """An http(s) URL with a host."""
    from urllib.parse import urlparse

    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or re.search(r"\s", text):
        _fail("expected an http(s) URL such as http://localhost:8080", text)
    return text.rstrip("/")


@check(bad=["", "two words", "http://host"], good="127.0.0.1")
def host(text: str) -> str:
    """A host name or address to listen on."""
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", text or ""):
        _fail("expected a host name or address such as 127.0.0.1 or 0.0.0.0", text)
    return text


@check(bad=[""], good="a pass phrase")
def secret(text: str) -> str:
    """A user name or password: non-empty, on one line (spaces are fine)."""
    if not text or "\n" in text or "\r" in text:
        _fail("expected a non-empty value on one line", "***" if text else text)
    return text


@check(bad=["", "two words"], good="0123456789abcdef")
def token(text: str) -> str:
    """A token: non-empty, no white space."""
    if not text or re.search(r"\s", text):
        _fail("expected a token without spaces", text)
    return text


@check(bad=["", "has space/", "a\tb"], good="https://example.org/images/")
def url_prefix(text: str) -> str:
    """A non-empty URL prefix without white space."""
    if not text or re.search(r"\s", text):
        _fail("expected a URL prefix without spaces (e.g. https://host/images/ or /data/local-files/?d=photos/)",
              text)
    return text


@check(bad=["host", "host:port", "ray://", ":10001"], good="auto")
def ray_address(text: str) -> str:
    """A Ray cluster address: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if text in ("auto", "local") or re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}", text):
        return text
    _fail("expected a Ray address: auto, HOST:PORT or ray://HOST:PORT", text)


@check(bad=["novalue", "=1", "1x=2"], good="eps=0.1")
def option(text: str) -> tuple[str, int | float | str]:
    """``KEY=VALUE`` -> ``(key, value)``, the value as int, else float, else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        _fail("expected KEY=VALUE", text)
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value
