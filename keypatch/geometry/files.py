"""Finding image files: the one listing every command and experiment uses."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})
"""File suffixes (any case) taken from folders."""

OTHER_IMAGE_SUFFIXES = frozenset({".svg", ".svgz", ".heic", ".heif", ".avif", ".jxl", ".raw", ".dng", ".cr2", ".cr3",
                                  ".nef", ".arw", ".orf", ".rw2", ".psd", ".xcf", ".ico", ".exr", ".hdr", ".jp2"})
"""Suffixes of images that folders are not searched for (vector graphics, camera raw, HEIF, layered
and icon files, most of which Pillow does not read): found in a folder, they are left out with one
warning that names them, not in silence. Named as a file, one is read if Pillow can."""


URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
"""A source given as a URI (``scheme://...``): ``file://``, ``s3://``, ``gs://``, ``abfs://``, ``hf://``..."""


def is_uri(source: object) -> bool:
    """Whether ``source`` is a URI string (``scheme://...``) rather than a path."""
    return isinstance(source, str) and URI.match(source) is not None


def file_uri_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI (``file:///abs/path`` or ``file://localhost/abs/path``), or
    ``None`` for any other scheme.

    Raises
    ------
    ValueError
        A ``file://`` URI naming another host.
    """
    parts = urlparse(uri)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{uri}: a file:// URI names a path on this machine (file:///abs/path), not on "
                         f"the host {parts.netloc!r}")
    return Path(unquote(parts.path))


def local_sources(paths: str | Path | Iterable[str | Path], engine: str) -> list[Path]:
    """``paths`` as local paths for an engine that reads files here: ``file://`` URIs become their
    paths, and any other URI is a ValueError saying that Ray's workers read it."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = []
    for p in items:
        if not is_uri(p):
            out.append(Path(p))
            continue
        local = file_uri_path(str(p))
        if local is None:
            raise ValueError(f"{p}: the {engine} engine reads files on this machine; images in object "
                             "storage are read where they live by Ray's workers: --engine ray "
                             "(pip install 'keypatch[ray]')")
        out.append(local)
    return out


def real_path(path: str | Path) -> Path:
    """The absolute path with every symbolic link resolved, as far as they resolve: a link loop or a
    broken link gives a path instead of an error (reading it then fails, and the file is skipped
    like any unreadable one)."""
    return Path(os.path.realpath(path))


def no_images(sources: Iterable[object]) -> ValueError:
    """The error for sources in which no image file was found (folders, URIs)."""
    listed = ", ".join(str(s) for s in sources) or "(no paths given)"
    return ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {listed}")


def list_image_files(paths: str | Path | Iterable[str | Path], *, allow_empty: bool = False) -> list[Path]:
    """The image files named by ``paths``, in order, without repeats.

    Parameters
    ----------
    paths : path or iterable of paths
        Files (taken whatever their suffix: the caller named them) and folders (searched
        recursively, in sorted order, for files whose suffix is in :data:`IMAGE_SUFFIXES`; hidden
        files and folders are skipped). Symbolic links to folders are followed, each real folder
        is walked once (so a link loop ends), and a file reached by several paths is listed once.
        A file link that loops or leads nowhere is listed: reading it fails, and every command
        skips it with one line, as any unreadable file.
    allow_empty : bool
        Return ``[]`` instead of raising when nothing is found.

    Returns
    -------
    list of Path
        Repeats (the same file reached twice) are dropped, keeping the first.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    ValueError
        If no image file is found (unless ``allow_empty``).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    found: list[Path] = []
    left: list[Path] = []
    for p in paths:
        if p.is_dir():
            walked: set[str] = set()
            for root, dirs, files in os.walk(p, followlinks=True):
                real = os.path.realpath(root)
                if real in walked:  # reached again through a link (or a loop): walked already
                    dirs[:] = []
                    continue
                walked.add(real)
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files)
                             if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES)
                left.extend(Path(root) / f for f in sorted(files)
                            if not f.startswith(".") and Path(f).suffix.lower() in OTHER_IMAGE_SUFFIXES)
        elif p.exists() or p.is_symlink():  # a link that leads nowhere is an unreadable file, skipped later
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    if left:
        import warnings

        from keypatch.geometry.decode import ImageWarning

        kinds = ", ".join(sorted({f.suffix.lower() for f in left}))
        shown = ", ".join(str(f) for f in left[:3]) + (", ..." if len(left) > 3 else "")
        warnings.warn(f"{len(left)} image file(s) of a kind not taken from folders ({kinds}) left out: {shown}; "
                      "convert them to PNG or JPEG to include them", ImageWarning, stacklevel=2)
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = real_path(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if not unique and not allow_empty:
        raise no_images(paths)
    return unique


def class_folders(root: str | Path) -> tuple[list[Path], list[int], list[str]] | None:
    """Files and labels of a folder with one sub-folder per class, or None when ``root`` is not one.

    ``root`` is a class-per-folder dataset (torchvision's ImageFolder layout) when it holds no image
    file itself and at least one sub-folder with images; each sub-folder is a class (sorted names,
    label = position), searched recursively. Sub-folders without images are not classes.
    """
    root = Path(root)
    if not root.is_dir() or any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in root.iterdir()):
        return None
    found = {d.name: list_image_files(d, allow_empty=True) for d in sorted(root.iterdir())
             if d.is_dir() and not d.name.startswith(".")}
    classes = sorted(c for c, f in found.items() if f)  # each folder is walked once
    if not classes:
        return None
    files, labels = [], []
    for i, c in enumerate(classes):
        files.extend(found[c])
        labels.extend([i] * len(found[c]))
    return files, labels, classes
