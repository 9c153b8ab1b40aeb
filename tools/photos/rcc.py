"""A small standard-library reader of Qt binary resource files (``.rcc``).

The format (written by Qt's ``rcc --binary``) is::

    header   b"qres", u32 version, u32 tree_offset, u32 data_offset, u32 names_offset
             [+ u32 overall_flags when version >= 3]
    tree     fixed-size nodes, node ``i`` at ``tree_offset + i * node_size``; node 0 is the root
               u32 name_offset, u16 flags, then
                 directory (flags & 2): u32 child_count, u32 first_child_index
                 file:                  u16 country, u16 language, u32 data_offset
               [+ u64 modification time (ms) when version >= 2]
             so nodes are 14 bytes in version 1 and 22 bytes in versions 2 and 3.
    names    at ``names_offset + name_offset``: u16 length (UTF-16 code units), u32 hash,
             then ``2 * length`` bytes of UTF-16BE
    data     at ``data_offset + file_data_offset``: u32 length, then ``length`` bytes;
             if the file is zlib-compressed (flags & 1) those bytes are a u32 big-endian
             uncompressed length followed by a zlib stream (the ``qCompress`` layout);
             zstd compression (flags & 4) is not supported by this reader.

All integers are big-endian.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RccError", "iter_rcc", "read_rcc_bytes"]

MAGIC = b"qres"
FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """Raised when a file is not a readable Qt binary resource file."""


def _u16(buf: bytes, off: int) -> int:
    if off < 0 or off + 2 > len(buf):
        raise RccError(f"truncated rcc data: need 2 bytes at offset {off}, size {len(buf)}")
    return struct.unpack_from(">H", buf, off)[0]


def _u32(buf: bytes, off: int) -> int:
    if off < 0 or off + 4 > len(buf):
        raise RccError(f"truncated rcc data: need 4 bytes at offset {off}, size {len(buf)}")
    return struct.unpack_from(">I", buf, off)[0]


def _read_name(buf: bytes, names_offset: int, name_offset: int) -> str:
    off = names_offset + name_offset
    length = _u16(buf, off)
    start = off + 2 + 4  # skip the 4-byte hash
    end = start + 2 * length
    if end > len(buf):
        raise RccError(f"truncated name at offset {off}")
    return buf[start:end].decode("utf-16-be")


def _read_data(buf: bytes, data_offset: int, file_offset: int, flags: int, name: str) -> bytes:
    off = data_offset + file_offset
    length = _u32(buf, off)
    start = off + 4
    if start + length > len(buf):
        raise RccError(f"truncated data for {name!r}: {length} bytes at offset {start}")
    raw = buf[start : start + length]
    if flags & FLAG_COMPRESSED_ZSTD:
        raise RccError(
            f"resource {name!r} is zstd-compressed (flag 4); this reader only supports "
            "uncompressed and zlib-compressed entries"
        )
    if flags & FLAG_COMPRESSED:
        if len(raw) < 4:
            raise RccError(f"compressed resource {name!r} is too short")
        expected = struct.unpack_from(">I", raw, 0)[0]
        try:
            out = zlib.decompress(raw[4:])
        except zlib.error as exc:
            raise RccError(f"cannot decompress resource {name!r}: {exc}") from exc
        if len(out) != expected:
            raise RccError(f"resource {name!r}: decompressed {len(out)} bytes, header says {expected}")
        return out
    return raw


def read_rcc_bytes(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """Iterate over the files stored in an in-memory ``.rcc`` image.

    Parameters
    ----------
    buf : bytes
        The whole content of a Qt binary resource file.

    Yields
    ------
    tuple of (str, bytes)
        ``(resource_path, file_bytes)`` with ``resource_path`` relative to the resource
        root and ``/``-separated (for example ``"categorization/resource/board/x.jpg"``),
        and ``file_bytes`` the (decompressed) content. Files are yielded depth first in
        the order they are stored in the tree.

    Raises
    ------
    RccError
        If the data does not start with ``b"qres"``, has an unknown version, is truncated,
        contains a zstd-compressed entry, or its tree is malformed.
    """
    if len(buf) < 20 or buf[:4] != MAGIC:
        raise RccError("not a Qt binary resource file (missing b'qres' magic)")
    version = _u32(buf, 4)
    if version not in (1, 2, 3):
        raise RccError(f"unsupported rcc format version {version}")
    tree_offset = _u32(buf, 8)
    data_offset = _u32(buf, 12)
    names_offset = _u32(buf, 16)
    if version >= 3:
        _u32(buf, 20)  # overall flags; only checked for presence
    node_size = 22 if version >= 2 else 14

    def node_at(index: int) -> int:
        off = tree_offset + index * node_size
        if off + node_size > len(buf):
            raise RccError(f"tree node {index} lies outside the file")
        return off

    visited: set[int] = set()
    # Stack of (node index, parent path); start with the root's children.
    root = node_at(0)
    if not _u16(buf, root + 4) & FLAG_DIRECTORY:
        raise RccError("root tree node is not a directory")
    stack: list[tuple[int, str]] = []

    def push_children(node_off: int, prefix: str) -> None:
        count = _u32(buf, node_off + 6)
        first = _u32(buf, node_off + 10)
        # Reverse so that children pop in stored order.
        for child in range(first + count - 1, first - 1, -1):
            stack.append((child, prefix))

    push_children(root, "")
    visited.add(0)
    while stack:
        index, prefix = stack.pop()
        if index in visited:
            raise RccError(f"tree node {index} is referenced twice (corrupt tree)")
        visited.add(index)
        off = node_at(index)
        name = _read_name(buf, names_offset, _u32(buf, off))
        flags = _u16(buf, off + 4)
        path = f"{prefix}{name}"
        if flags & FLAG_DIRECTORY:
            push_children(off, path + "/")
        else:
            yield path, _read_data(buf, data_offset, _u32(buf, off + 10), flags, path)


def iter_rcc(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Iterate over the files stored in a Qt binary resource file on disk.

    Parameters
    ----------
    path : str or Path
        Path of a ``.rcc`` file (format version 1, 2 or 3).

    Yields
    ------
    tuple of (str, bytes)
        ``(resource_path, file_bytes)``; see :func:`read_rcc_bytes`.

    Raises
    ------
    RccError
        If the file is not a readable ``.rcc`` file.
    OSError
        If the file cannot be read.
    """
    buf = Path(path).read_bytes()
    try:
        yield from read_rcc_bytes(buf)
    except RccError as exc:
        raise RccError(f"{path}: {exc}") from None
