"""Tests of the Qt ``.rcc`` reader on small resource files written by the tests themselves."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from tools.photos.rcc import RccError, iter_rcc, read_rcc_bytes

FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_ZSTD = 0x04


def _qt_hash(name: str) -> int:
    """Qt's qt_hash over UTF-16 code units (only stored, never checked by the reader)."""
    h = 0
    for unit in struct.unpack(f">{len(name.encode('utf-16-be')) // 2}H", name.encode("utf-16-be")):
        h = ((h << 4) + unit) & 0xFFFFFFFF
        h ^= (h & 0xF0000000) >> 23
        h &= 0x0FFFFFFF
    return h


def write_rcc(files: dict[str, tuple[bytes, int]], version: int = 3) -> bytes:
    """Write a minimal binary ``.rcc`` image.

    ``files`` maps ``"dir/sub/name"`` to ``(content, flags)`` with flags 0 (stored),
    ``FLAG_COMPRESSED`` (zlib, qCompress layout) or ``FLAG_ZSTD`` (content stored as is).
    """
    # Build a directory tree.
    tree: dict = {}
    for path, payload in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = payload

    names = bytearray()
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(encoded) // 2, _qt_hash(name)) + encoded)
        return name_offsets[name]

    data = bytearray()
    # Breadth-first layout: node 0 is the root; children of a directory are consecutive.
    nodes: list[tuple[str, object]] = [("", tree)]
    records: list[bytes] = []
    i = 0
    while i < len(nodes):
        name, content = nodes[i]
        name_off = name_offset(name) if i else 0
        if isinstance(content, dict):
            children = sorted(content.items(), key=lambda kv: _qt_hash(kv[0]))
            first = len(nodes)
            nodes.extend(children)
            rec = struct.pack(">IHII", name_off, FLAG_DIRECTORY, len(children), first)
        else:
            payload, flags = content
            stored = payload
            if flags & FLAG_COMPRESSED:
                stored = struct.pack(">I", len(payload)) + zlib.compress(payload, 9)
            data_off = len(data)
            data.extend(struct.pack(">I", len(stored)) + stored)
            rec = struct.pack(">IHHHI", name_off, flags, 0, 1, data_off)
        if version >= 2:
            rec += struct.pack(">Q", 1_700_000_000_000)
        records.append(rec)
        i += 1

    header_size = 24 if version >= 3 else 20
    data_offset = header_size
    names_offset = data_offset + len(data)
    tree_offset = names_offset + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_offset, data_offset, names_offset)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(data) + bytes(names) + b"".join(records)


JPEG_LIKE = bytes(range(256)) * 3 + b"\xff\xd9"
TEXT = b"Copyright: somebody\nLicense: CC0-1.0\nFiles: a.jpg\n" * 20


@pytest.mark.parametrize("version", [1, 2, 3])
def test_round_trip_exact_bytes(tmp_path: Path, version: int) -> None:
    files = {
        "categorization/resource/board/photo.jpg": (JPEG_LIKE, 0),
        "categorization/resource/board/README": (TEXT, FLAG_COMPRESSED),
        "top.txt": (b"", 0),
    }
    path = tmp_path / "tiny.rcc"
    path.write_bytes(write_rcc(files, version=version))
    got = dict(iter_rcc(path))
    assert got == {k: v for k, (v, _) in files.items()}
    assert got["categorization/resource/board/photo.jpg"] == JPEG_LIKE
    assert got["categorization/resource/board/README"] == TEXT


def test_compressed_entry_is_really_compressed() -> None:
    raw = write_rcc({"d/big.txt": (TEXT, FLAG_COMPRESSED)})
    assert TEXT not in raw  # stored compressed ...
    assert dict(read_rcc_bytes(raw)) == {"d/big.txt": TEXT}  # ... and read back exactly


def test_non_ascii_names_and_nesting() -> None:
    files = {"dé/ñ.png": (b"\x89PNG", 0), "dé/z.jpg": (b"z", FLAG_COMPRESSED), "a/b/c/d.webp": (b"RIFF", 0)}
    got = list(read_rcc_bytes(write_rcc(files)))
    assert sorted(got) == sorted((k, v) for k, (v, _) in files.items())


def test_not_an_rcc_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.rcc"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(RccError, match="qres"):
        list(iter_rcc(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.rcc"
    path.write_bytes(b"")
    with pytest.raises(RccError, match="not a Qt binary resource file"):
        list(iter_rcc(path))


def test_unknown_version() -> None:
    raw = bytearray(write_rcc({"a.jpg": (b"x", 0)}))
    raw[4:8] = struct.pack(">I", 9)
    with pytest.raises(RccError, match="version 9"):
        list(read_rcc_bytes(bytes(raw)))


def test_truncated_file() -> None:
    raw = write_rcc({"d/a.jpg": (JPEG_LIKE, 0)})
    with pytest.raises(RccError):
        list(read_rcc_bytes(raw[:-10]))


def test_zstd_entry_gives_clear_error() -> None:
    raw = write_rcc({"d/a.jpg": (b"(\xb5/\xfd fake zstd", FLAG_ZSTD)})
    with pytest.raises(RccError, match="zstd"):
        list(read_rcc_bytes(raw))
