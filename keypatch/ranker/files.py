"""Ranker files: safetensors weights with what they were fitted to in their metadata.

A ranker file records its shape (``channels``, ``width``, ``depth``) and the model it was fitted
to: ``model`` (the spec's id), ``model_sha256`` (:func:`model_digest` of its weights), the ratios
its steps covered (``ratio_min``, ``ratio_max``) and the number of ``photos``. ``ranked`` compares
``model_sha256`` with the model in use and warns once (:class:`RankerWarning`) when they differ.
Files come from anyone: :func:`check_ranker_file` bounds a file from its header before a network
is built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from keypatch.ranker.net import CHANNELS, PatchRanker
from keypatch.untrusted import bounded, refuse

DEFAULT_RANKER = Path(__file__).resolve().parent.parent / "weights" / "ranker_default.safetensors"
"""The shipped ranker, fitted to the embedded default model (``keypatch ranker fit``)."""


class RankerWarning(UserWarning):
    """The ranker in use was fitted to another model than the one it screens for."""


@dataclass(frozen=True)
class RankerInfo:
    """What a ranker file says of itself (:func:`ranker_info`); empty strings where it says nothing."""

    path: str
    digest: str
    model: str
    model_sha256: str
    ratio_min: str
    ratio_max: str
    photos: str

    def fitted_to(self) -> str:
        """``"MODEL (weights SHA, N photos, r = A-B)"`` or ``"no recorded model"``."""
        if not self.model_sha256:
            return "no recorded model"
        return (f"{self.model} (weights {self.model_sha256}, {self.photos or '?'} photos, "
                f"r = {self.ratio_min or '?'}-{self.ratio_max or '?'})")


def model_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 over ``model``'s state dict (names, dtypes, shapes,
    bytes), computed once per model object: the weights a ranker was fitted to."""
    cached = getattr(model, "_keypatch_digest", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    out = digest.hexdigest()[:16]
    model._keypatch_digest = out  # type: ignore[attr-defined]
    return out


def save_ranker(ranker: PatchRanker, path: str | Path, **info: str) -> None:
    """Write ``ranker`` as safetensors, its shape (and ``info``: the model it was fitted to, ...) in
    the file's metadata."""
    meta = {"width": str(ranker.width), "depth": str(ranker.depth), "channels": str(CHANNELS),
            **{k: str(v) for k, v in info.items()}}
    save_file({k: v.detach().cpu().contiguous() for k, v in ranker.state_dict().items()}, str(path), metadata=meta)


def ranker_file(path: str = "default") -> Path:
    """The weights file behind ``path`` (``"default"``: the shipped one)."""
    return DEFAULT_RANKER if path == "default" else Path(path)


def _stamp(path: str) -> tuple[str, int, int]:
    """``(path, mtime, size)``: a cache key that changes when the file is rewritten."""
    st = os.stat(ranker_file(path))
    return path, st.st_mtime_ns, st.st_size


def ranker_digest(path: str = "default") -> str:
    """The first 16 hex digits of the SHA-256 of the ranker's weights file."""
    return _digest(_stamp(path))


@functools.lru_cache(maxsize=16)
def _digest(stamp: tuple[str, int, int]) -> str:
    return hashlib.sha256(ranker_file(stamp[0]).read_bytes()).hexdigest()[:16]


def load_ranker(path: str = "default") -> PatchRanker:
    """A ranker from a safetensors file written by :func:`save_ranker` (``"default"``: the shipped one).

    Raises FileNotFoundError naming the path, or ValueError for a file of another shape, or one
    :func:`check_ranker_file` refuses (checked before the network is built).
    """
    file = ranker_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no ranker weights at {file}")
    return _load(_stamp(path))


@functools.lru_cache(maxsize=4)
def _load(stamp: tuple[str, int, int]) -> PatchRanker:
    file = ranker_file(stamp[0])
    width, depth = check_ranker_file(file)
    ranker = PatchRanker(width, depth)
    ranker.load_state_dict(load_file(str(file)))
    return ranker.eval()


def ranker_info(path: str = "default") -> RankerInfo:
    """The metadata of a ranker file (checked by :func:`check_ranker_file` first), as text, each
    value at most 200 characters."""
    return _info(_stamp(path))


@functools.lru_cache(maxsize=16)
def _info(stamp: tuple[str, int, int]) -> RankerInfo:
    """:func:`ranker_info` once per version of a file (``ranked`` asks at every batch)."""
    file = ranker_file(stamp[0])
    check_ranker_file(file)
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}

    def get(key: str) -> str:
        return str(meta.get(key, ""))[:200]

    return RankerInfo(str(file), _digest(stamp), get("model"), get("model_sha256"), get("ratio_min"),
                      get("ratio_max"), get("photos"))


_WARNED: set[tuple[str, str]] = set()


def warn_other_model(path: str, model: torch.nn.Module) -> bool:
    """Warn (:class:`RankerWarning`, once per ranker and model in this process) when the ranker at
    ``path`` was not fitted to ``model``'s weights; True when they match."""
    info = ranker_info(path)
    digest = model_digest(model)
    if info.model_sha256 == digest:
        return True
    key = (info.digest, digest)
    if key not in _WARNED:
        _WARNED.add(key)
        name = getattr(model, "model_id", "this model")
        warnings.warn(f"the ranker {'default' if path == 'default' else path} was fitted to {info.fitted_to()}, not to "
                      f"{name} (weights {digest}); it still screens, but a ranker fitted to this model's own "
                      f"steps serves it better: keypatch ranker fit PHOTOS --model {name} --out FILE, then "
                      f"-o ranker=FILE", RankerWarning, stacklevel=3)
    return False


MAX_RANKER_BYTES = 64 << 20
"""The largest ranker file read (the shipped one is some 120 KB)."""
MAX_WIDTH, MAX_DEPTH = 256, 16
"""The widest and deepest ranker built from a file's metadata (at most some 9.5 million weights)."""


def ranker_shapes(width: int, depth: int) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a :class:`PatchRanker`'s state dict, computed without building one."""
    shapes: dict[str, tuple[int, ...]] = {"net.0.weight": (width, CHANNELS, 3, 3), "net.0.bias": (width,)}
    for i in range(1, depth):
        shapes[f"net.{2 * i}.weight"], shapes[f"net.{2 * i}.bias"] = (width, width, 3, 3), (width,)
    shapes[f"net.{2 * depth}.weight"], shapes[f"net.{2 * depth}.bias"] = (1, width, 1, 1), (1,)
    return shapes


def check_ranker_file(file: Path) -> tuple[int, int]:
    """``(width, depth)`` of a ranker file when it is sound, read from its header alone: the file at
    most :data:`MAX_RANKER_BYTES`, a safetensors file whose metadata say ``channels`` 11, ``width``
    and ``depth`` within :data:`MAX_WIDTH` and :data:`MAX_DEPTH`, and whose tensors are exactly
    the floating-point ones of that shape. A weights file may come from anyone, and the network is
    sized by its metadata: anything else is a :class:`~keypatch.untrusted.HostileFileError` naming
    the file and the key, before anything is allocated."""
    size = file.stat().st_size
    if size > MAX_RANKER_BYTES:
        raise refuse(file, "the file", f"is {size:,} bytes, more than the {MAX_RANKER_BYTES:,} a ranker may be")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            found = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except Exception as exc:  # safetensors' own error type: not a safetensors file, a damaged header
        raise refuse(file, "the file", f"is not a safetensors file ({str(exc)[:200]})") from None
    if meta.get("channels") != str(CHANNELS):
        raise refuse(file, "metadata 'channels'", f"is {str(meta.get('channels'))[:40]!r}: not a keypatch ranker "
                     f"with {CHANNELS} input channels (metadata {json.dumps(meta)[:300]})")
    width = bounded(meta.get("width"), 1, MAX_WIDTH, file=file, entry="metadata 'width'", text=True)
    depth = bounded(meta.get("depth"), 1, MAX_DEPTH, file=file, entry="metadata 'depth'", text=True)
    want = ranker_shapes(width, depth)
    for key in sorted(set(want) | set(found)):
        if key not in found:
            raise refuse(file, f"tensor {key!r}", f"is missing (width {width}, depth {depth})")
        if key not in want:
            raise refuse(file, f"tensor {key[:80]!r}", f"is not one of a ranker of width {width} and depth {depth}")
        shape, dtype = found[key]
        if shape != want[key] or dtype not in ("F16", "BF16", "F32", "F64"):
            raise refuse(file, f"tensor {key!r}", f"is {dtype} {list(shape)}, not floats of shape {list(want[key])} "
                         f"(width {width}, depth {depth})")
    return width, depth


