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

from keypatch.data.codec import Codec, parse_codec, unpack

FORMAT = "keypatch-quantized"
VERSION = 1
MANIFEST = "manifest.json"


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
        """Read ``root/manifest.json``; a ValueError when it is missing or not a quantized dataset's."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise ValueError(f"{root} is not a quantized dataset: no {MANIFEST} in it (keypatch quantize makes one)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a keypatch quantized dataset's manifest")
        if manifest.get("version", 0) > VERSION:
            raise ValueError(f"{path} is version {manifest['version']}; this keypatch reads up to {VERSION}")
        return cls(root, manifest)

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
        """The encoded mosaic of image ``i``."""
        e = self.images[i]
        with open(self.root / self.manifest["shards"][e["shard"]]["name"], "rb") as f:
            f.seek(e["offset"])
            data = f.read(e["length"])
        if len(data) != e["length"]:
            raise ValueError(f"{self.root}: shard {e['shard']} is shorter than its manifest says (image {e['key']})")
        return data

    def kept_pixels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (k,), patches (k, p, p, 3) uint8)`` of image ``i``, indices sorted as stored."""
        e = self.images[i]
        idx = np.sort(np.asarray(e["patches"], dtype=np.int64))
        return idx, unpack(Codec.decode(self.payload(i)), len(idx), self.patch_size)

    def iter_shard(self, shard: int) -> Iterator[tuple[str, bytes]]:
        """``(member name, bytes)`` of one shard, in order (what a WebDataset reader sees)."""
        with tarfile.open(self.root / self.manifest["shards"][shard]["name"]) as tar:
            for m in tar:
                f = tar.extractfile(m)
                if f is not None:
                    yield m.name, f.read()
