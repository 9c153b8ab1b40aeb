"""Compute precision of the MAE passes that score visible sets.

* ``"float32"``: exact.
* ``"bfloat16"``: every pass on a bfloat16 copy of the model (:func:`reduced_copy`); fast on GPUs
  and on CPUs with native bf16 instructions, and it can change picks.
* ``"mixed"``: candidates screened in bfloat16, those near each image's minimum re-scored in
  float32 (:meth:`keypatch.objective.Objective.step`): float32's picks at about bfloat16's cost.
* ``"auto"``: ``"mixed"`` for ViT-B-sized and larger models where bfloat16 is native
  (:func:`native_bf16`), ``"float32"`` elsewhere.
"""

from __future__ import annotations

import copy
import functools
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("float32", "bfloat16", "mixed", "auto")
"""Accepted names (``fp32`` and ``bf16`` are aliases)."""

DEFAULT_PRECISION = "auto"
"""What every search strategy and :class:`~keypatch.objective.Objective` use unless told."""

MIXED_MIN_WIDTH = 768
"""``"auto"`` is ``"mixed"`` only for models whose encoder is at least this wide (ViT-B and larger).
Narrower models gain little from bfloat16 and lose it to the float32 re-scoring (measured in
``docs/precision.md`` and ``benchmarks/README.md``)."""

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs with native bfloat16 matrix products."""


def check_precision(precision: str) -> str:
    """``precision`` as one of :data:`PRECISIONS`; a ValueError naming them otherwise."""
    name = {"fp32": "float32", "bf16": "bfloat16"}.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return name


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products are native (faster than float32) on ``device``.

    CUDA devices that support bf16 (compute capability 8.0 on); x86 CPUs with AVX512-BF16 or AMX.
    On CPUs without them (AVX2 only) bfloat16 is emulated and several times *slower* than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & set(BF16_CPU_FLAGS))
    return False


def resolve_precision(precision: str, device: torch.device | str, width: int | None = None) -> str:
    """``precision`` with ``"auto"`` resolved for ``device`` and a model of encoder ``width``:
    ``"mixed"`` where bf16 is native and the model is at least :data:`MIXED_MIN_WIDTH` wide (or
    ``width`` is not given), else float32."""
    name = check_precision(precision)
    if name != "auto":
        return name
    wide = width is None or width >= MIXED_MIN_WIDTH
    return "mixed" if wide and native_bf16(device) else "float32"


_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def reduced_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of ``model`` in ``dtype``, made once and remade when a weight of ``model`` changes."""
    version = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cached = _COPIES.get(model)
    if cached is not None and cached[0] == (dtype, version):
        return cached[1]
    twin = copy.deepcopy(model).to(dtype).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    _COPIES[model] = ((dtype, version), twin)
    return twin


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Context for ``precision`` in training: nothing for float32, bfloat16 autocast on ``device``'s type
    (scoring uses a bfloat16 copy of the model instead, :func:`reduced_copy`)."""
    if check_precision(precision) == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextmanager
def ieee_convolutions(device: torch.device) -> Iterator[None]:
    """float32 convolutions in full float32 on ``device`` for the block (and the setting as it was after).

    PyTorch lets cuDNN run float32 convolutions in TF32 by default on Ampere and later GPUs (10 of
    float32's 23 mantissa bits); keypatch's float32 is IEEE float32 (``docs/precision.md``), so the
    patch embedding and the ranker run under this. Uses the per-operator setting
    (``torch.backends.cudnn.conv.fp32_precision``) where the torch has it, so that a program's
    own TF32 settings, legacy or new, read the same afterwards. Nothing on other devices.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        before = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = before
        return
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before
