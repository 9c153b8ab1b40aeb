"""The on-disk layout of a quantized dataset: WebDataset tar shards and a JSON manifest.

A quantized dataset is a folder::

    manifest.json            what was stored and how (see below)
    shard-000000.tar         WebDataset shards: per image KEY.EXT (the kept patches' mosaic,
    shard-000001.tar         keypatch.data.codec) and KEY.json (its entry, below)

The shards are plain POSIX tar files that the ``webdataset`` package reads as they are (each sample
a mosaic and a JSON entry); member headers carry no time, owner or mode of the writing machine, so
the same content gives the same bytes. The manifest's ``images`` list holds one entry per image, in
key order::

    {"key": "000012", "shard": 0, "offset": 7168, "length": 31840,
     "name": "fish/a.jpg", "class": "fish", "label": 0, "bin": 3,
     "size": [640, 480], "sha256": "...", "patches": [3, 17, ...], "loss": 0.0412}

``offset``/``length`` locate the mosaic's bytes inside its shard (random access without reading the
tar), ``size`` is the original width and height, ``patches`` the kept indices in the order the
strategy chose them (the mosaic holds them sorted), ``loss`` the MAE's ``L`` of that set.

A dataset may come from anyone, so :meth:`QuantizedFolder.open` checks the whole manifest once
(:func:`check_manifest`) before any of it is used: names relative and inside their folders
(:mod:`keypatch.untrusted`), every size, index and range bounded, every shard present and long
enough for the bytes its images say they hold; a mosaic's pixel size is checked before it is
decoded. What fails is a :class:`~keypatch.untrusted.HostileFileError` naming the manifest and the
entry.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from keypatch.data.codec import Codec, parse_codec, unpack
from keypatch.untrusted import MAX_PATCHES, bounded, component, inside, read_json, refuse, relative_name

FORMAT = "keypatch-quantized"
VERSION = 1
MANIFEST = "manifest.json"

MAX_MANIFEST_BYTES = 2 << 30
"""The largest manifest read (2 GiB: some million images)."""
MAX_IMAGE_SIDE = 8192
"""The largest model side a manifest may name (pixels)."""
MAX_GRID = MAX_PATCHES
"""The most patches a manifest's grid may have."""
MAX_OFFSET = 1 << 40
"""The largest offset into a shard (1 TiB)."""


def shard_name(i: int) -> str:
    """The file name of shard ``i``."""
    return f"shard-{i:06d}.tar"


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Writes samples into ``folder/shard-NNNNNN.tar``, ``per_shard`` images each.

    Shards are written under a temporary name and renamed when complete, so a shard that exists
    is whole. Use as a context manager; :attr:`shards` lists ``{"name", "count", "bytes"}``.
    """

    def __init__(self, folder: str | Path, per_shard: int = 1000) -> None:
        if per_shard < 1:
            raise ValueError("per_shard must be >= 1")
        self.folder, self.per_shard = Path(folder), per_shard
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def add(self, key: str, extension: str, payload: bytes, entry: dict[str, Any]) -> tuple[int, int, int]:
        """Store one image; ``(shard, offset, length)`` of its payload."""
        if self._tar is None or self._count == self.per_shard:
            self._close_shard()
            tmp = self.folder / (shard_name(len(self.shards)) + ".part")
            self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            self._count = 0
        tar = self._tar
        info = _member(f"{key}.{extension}", len(payload))
        offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))  # the payload follows its header
        tar.addfile(info, io.BytesIO(payload))
        meta = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        tar.addfile(_member(f"{key}.json", len(meta)), io.BytesIO(meta))
        self._count += 1
        return len(self.shards), offset, len(payload)

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        path = Path(self._tar.name)
        self._tar.close()
        final = path.with_suffix("")  # drop ".part"
        path.replace(final)
        self.shards.append({"name": final.name, "count": self._count, "bytes": final.stat().st_size})
        self._tar = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self._close_shard()
        elif self._tar is not None:
            self._tar.close()
            Path(self._tar.name).unlink(missing_ok=True)


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (keys sorted, so the same content gives the same bytes)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **manifest}, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


@dataclass
class QuantizedFolder:
    """A quantized dataset on disk, read through its manifest.

    Attributes
    ----------
    root : Path
        The folder.
    manifest : dict
        ``manifest.json`` as a dict (its ``images`` list in key order).
    """

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> QuantizedFolder:
        """Read ``root/manifest.json``; a ValueError when it is missing or not a quantized dataset's, and a
        :class:`~keypatch.untrusted.HostileFileError` (a ValueError) when :func:`check_manifest` refuses it."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise ValueError(f"{root} is not a quantized dataset: no {MANIFEST} in it (keypatch quantize makes one)")
        return cls(root, check_manifest(root, read_json(path, max_bytes=MAX_MANIFEST_BYTES)))

    def __len__(self) -> int:
        return len(self.manifest["images"])

    @property
    def images(self) -> list[dict[str, Any]]:
        """The entries, in key order."""
        return self.manifest["images"]

    @property
    def classes(self) -> list[str]:
        """Class names, by label."""
        return self.manifest["classes"]

    @property
    def codec(self) -> Codec:
        """The codec of the mosaics."""
        return parse_codec(self.manifest["codec"])

    @property
    def patch_size(self) -> int:
        return int(self.manifest["patch_size"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def payload(self, i: int) -> bytes:
        """The encoded mosaic of image ``i`` (its length bounded by :func:`check_manifest`)."""
        e = self.images[i]
        with open(self.root / self.manifest["shards"][e["shard"]]["name"], "rb") as f:
            f.seek(e["offset"])
            data = f.read(e["length"])
        if len(data) != e["length"]:
            raise ValueError(f"{self.root}: shard {e['shard']} is shorter than its manifest says (image {e['key']})")
        return data

    def kept_pixels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (k,), patches (k, p, p, 3) uint8)`` of image ``i``, indices sorted as stored.

        The mosaic must be the size its patches make (:func:`keypatch.data.codec.pack`), which is
        checked from its header before its pixels are decoded."""
        e = self.images[i]
        idx = np.sort(np.asarray(e["patches"], dtype=np.int64))
        p, side = self.patch_size, self.image_size
        cols = side // p
        want = (side, -(-len(idx) // cols) * p)
        entry = f"images[{i}] (key {e['key']}, shard {e['shard']} at {e['offset']})"
        try:
            with Image.open(io.BytesIO(self.payload(i))) as im:
                if im.size != want:
                    raise refuse(self.root / MANIFEST, entry, f"points at a {im.size[0]}x{im.size[1]} image, not the "
                                 f"{want[0]}x{want[1]} mosaic of its {len(idx)} patches")
                mosaic = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # not an image, or a truncated one
            raise refuse(self.root / MANIFEST, entry, f"points at bytes that are not an image ({exc})") from None
        return idx, unpack(mosaic, len(idx), p)

    def iter_shard(self, shard: int) -> Iterator[tuple[str, bytes]]:
        """``(member name, bytes)`` of one shard, in order (what a WebDataset reader sees)."""
        with tarfile.open(self.root / self.manifest["shards"][shard]["name"]) as tar:
            for m in tar:
                f = tar.extractfile(m)
                if f is not None:
                    yield m.name, f.read()


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], file: Path, at: str = "") -> Any:
    """``obj[key]`` when present and of ``types`` (a bool is no number); ``at`` is ``obj``'s entry."""
    names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    if key not in obj:
        raise refuse(file, at or "the manifest", f"has no {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, types):
        raise refuse(file, f"{at}.{key}" if at else key, f"is {str(value)[:60]!r}, not {names}")
    return value


def check_manifest(root: str | Path, manifest: Any) -> dict[str, Any]:
    """``manifest`` (read from ``root/manifest.json``) when everything its readers use is sound; a
    :class:`~keypatch.untrusted.HostileFileError` naming the manifest and the entry otherwise.

    Checked: the format and version; ``image_size`` and ``patch_size`` (a grid of at most
    :data:`MAX_GRID` patches); ``codec``, ``model`` and ``classes``; every shard's ``name`` (a
    plain name inside ``root``, whose file exists); every image's ``key`` (a plain file name),
    ``name`` (a relative name that stays inside the folder it is joined to), ``label``, ``shard``,
    ``offset`` and ``length`` (the length at most twice the raw pixels of a whole image, and
    ``offset + length`` within the shard file) and ``patches`` (distinct indices of the grid).
    """
    root = Path(root)
    file = root / MANIFEST
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{file} is not a keypatch quantized dataset's manifest")
    version = manifest.get("version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ValueError(f"{file} is version {version}; this keypatch reads up to {VERSION}")
    bounded(version, 0, VERSION, file=file, entry="version")
    side = bounded(_field(manifest, "image_size", int, file), 1, MAX_IMAGE_SIDE, file=file, entry="image_size")
    p = bounded(_field(manifest, "patch_size", int, file), 1, side, file=file, entry="patch_size")
    if side % p or (side // p) ** 2 > MAX_GRID:
        raise refuse(file, "patch_size", f"{p} does not cut image_size {side} into a grid of at most {MAX_GRID} "
                     "patches")
    n = (side // p) ** 2
    codec = _field(manifest, "codec", str, file)
    try:
        parse_codec(codec)
    except ValueError as exc:
        raise refuse(file, "codec", str(exc)) from None
    _field(manifest, "model", str, file)
    classes = _field(manifest, "classes", list, file)
    for j, c in enumerate(classes):
        if not isinstance(c, str):
            raise refuse(file, f"classes[{j}]", f"is {c!r}, not a class name")
    shards = _field(manifest, "shards", list, file)
    sizes = []
    for j, s in enumerate(shards):
        if not isinstance(s, dict):
            raise refuse(file, f"shards[{j}]", "is not an object")
        path = inside(root, component(s.get("name"), file=file, entry=f"shards[{j}].name"), file=file,
                      entry=f"shards[{j}].name")
        if not path.is_file():
            raise refuse(file, f"shards[{j}].name", f"{s['name']!r} names no file in {root}")
        sizes.append(path.stat().st_size)
    max_length = 2 * side * side * 3 + (1 << 20)  # a whole image's raw pixels, twice, and headers
    for i, e in enumerate(_field(manifest, "images", list, file)):
        entry = f"images[{i}]"
        if not isinstance(e, dict):
            raise refuse(file, entry, "is not an object")
        component(_field(e, "key", str, file, entry), file=file, entry=f"{entry}.key")
        relative_name(_field(e, "name", str, file, entry), file=file, entry=f"{entry}.name")
        if "label" in e:
            bounded(e["label"], -1, len(classes) - 1, file=file, entry=f"{entry}.label")
        shard = bounded(_field(e, "shard", int, file, entry), 0, len(shards) - 1, file=file, entry=f"{entry}.shard")
        offset = bounded(_field(e, "offset", int, file, entry), 0, MAX_OFFSET, file=file, entry=f"{entry}.offset")
        length = bounded(_field(e, "length", int, file, entry), 0, max_length, file=file, entry=f"{entry}.length")
        if offset + length > sizes[shard]:
            raise refuse(file, entry, f"says its bytes end at {offset + length:,}, past the end of "
                         f"{shards[shard]['name']} ({sizes[shard]:,} bytes)")
        patches = _field(e, "patches", list, file, entry)
        if len(patches) > n:
            raise refuse(file, f"{entry}.patches", f"lists {len(patches)} patches; the grid has {n}")
        for j, q in enumerate(patches):
            bounded(q, 0, n - 1, file=file, entry=f"{entry}.patches[{j}]")
        if len(set(patches)) != len(patches):
            raise refuse(file, f"{entry}.patches", "lists a patch twice")
    return manifest
