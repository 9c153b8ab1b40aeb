"""Optional native CPU kernels, compiled with the system C compiler on first use.

The attention of exact KPP scoring (:meth:`keypatch.reconstructors.mae.MAE.context_losses`) is
many tiny per-head products and softmaxes: a few dozen tokens per visible set in the encoder, and
in the decoder the masked positions' queries against the visible tokens plus precomputed mask-token
totals. In torch each is a dozen separate passes (copies, products, softmax) over small tensors.
:func:`encoder_attention` and :func:`decoder_attention` do the same arithmetic (float rounding
aside) in one AVX2 kernel each (``attention.c`` beside this file). The library is built once per source, compiler
and CPU into ``$KEYPATCH_CACHE/native`` (default ``~/.cache/keypatch/native``) and loaded with
:mod:`ctypes`; it runs on torch's OpenMP threads.

Everything falls back to the torch code when the kernel cannot be used: no C compiler, no AVX2/FMA,
not x86-64, a failed build, or ``KEYPATCH_NATIVE=0`` in the environment. :func:`status` says which.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention.c")
ABI = 1
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"]
_DISABLED = ("0", "false", "no", "off")
_status = "not loaded yet"


def cache_dir() -> Path:
    """Where built libraries are kept: ``$KEYPATCH_CACHE/native`` or ``~/.cache/keypatch/native``."""
    root = os.environ.get("KEYPATCH_CACHE") or Path.home() / ".cache" / "keypatch"
    return Path(root) / "native"


def _cpu_signature() -> str:
    """Identifies the CPU's instruction sets (a ``-march=native`` build is only valid on the same)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as the kernel lists them (empty where it does not).

    Parsed from the line that goes into the kernels' cache key, e.g. ``"avx2"``, ``"avx512_bf16"``
    (whether bf16 arithmetic is native; the kernels themselves are built if the compiler accepts
    them, not by these flags).
    """
    line = _cpu_signature()
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


def _build(cc: str, target: Path) -> None:
    """Compile :data:`SOURCE` into ``target`` (atomically: a temporary file, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode:
            raise OSError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it first if needed; None when it cannot be used."""
    global _status
    if os.environ.get("KEYPATCH_NATIVE", "1").strip().lower() in _DISABLED:
        _status = "disabled by KEYPATCH_NATIVE"
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _status = f"no kernels for {platform.machine()}"
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        _status = "no C compiler found (set CC)"
        return None
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), cc.encode(), " ".join(FLAGS).encode(), _cpu_signature().encode(),
                    torch.__version__.encode()])
    ).hexdigest()[:16]
    target = cache_dir() / f"attention-{key}.so"
    try:
        if not target.exists():
            log.info("building keypatch native kernels into %s", target)
            _build(cc, target)
        lib = ctypes.CDLL(str(target))
        if lib.keypatch_abi() != ABI:
            raise OSError(f"{target} has ABI {lib.keypatch_abi()}, expected {ABI}")
    except (OSError, subprocess.SubprocessError) as exc:
        _status = f"unavailable: {exc}"
        log.info("keypatch native kernels %s; using torch", _status)
        return None
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.decoder_attention.argtypes = [i] * 9 + [p] * 10
    lib.decoder_attention.restype = i
    lib.encoder_attention.argtypes = [i, i, i, i, ctypes.c_float, i, p, p]
    lib.encoder_attention.restype = i
    _status = f"loaded from {target}"
    return lib


def available() -> bool:
    """Whether the native kernels can be used in this process (builds them on the first call)."""
    return library() is not None


def status() -> str:
    """A short line saying whether the kernels are loaded, and if not, why."""
    library()
    return _status


def pack_decoder_constants(q0: torch.Tensor, m0: torch.Tensor, e0t: torch.Tensor, ev0: torch.Tensor,
                           es0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The mask-token constants in the kernel's layout: positions last, padded to a multiple of 8.

    ``q0 (h, N, hd)``, ``m0 (h, N, 1)``, ``e0t (h, N, N)``, ``ev0 (h, N, hd)``, ``es0 (h, N)`` as
    in :meth:`MAE._mask_token_attention`; returns ``q0t, m0, e0t, ev0t, es0`` (float32, contiguous).
    """
    n = q0.shape[1]
    pad = (-n) % 8
    f = torch.nn.functional.pad
    return (f(q0.transpose(1, 2), (0, pad)).float().contiguous(), f(m0[..., 0], (0, pad)).float().contiguous(),
            f(e0t, (0, pad)).float().contiguous(), f(ev0.transpose(1, 2), (0, pad)).float().contiguous(),
            f(es0, (0, pad), value=1.0).float().contiguous())


def decoder_attention(packed: tuple[torch.Tensor, ...], v0: torch.Tensor, kv: torch.Tensor,
                      visible: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Attention outputs of the masked positions of ``M`` sets with a one-block decoder.

    Parameters
    ----------
    packed : tuple of torch.Tensor
        From :func:`pack_decoder_constants`.
    v0 : torch.Tensor
        ``(h, N, hd)`` mask-token values.
    kv : torch.Tensor
        ``(M, J, 2 * h * hd)`` keys and values of the visible tokens (cls first), float32.
    visible, masked : torch.Tensor
        ``(M, K)`` and ``(M, R)`` int64 patch indices.

    Returns
    -------
    torch.Tensor
        ``(M * R, h * hd)``: row ``m * R + r`` is masked position ``masked[m, r]`` of set ``m``.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"keypatch native kernels are {status()}")
    q0t, m0, e0t, ev0t, es0 = packed
    h, hd, np_ = q0t.shape
    n = e0t.shape[1]
    m, j = kv.shape[:2]
    kv, v0 = kv.contiguous(), v0.float().contiguous()
    visible, masked = visible.long().contiguous(), masked.long().contiguous()
    if kv.dtype != torch.float32 or kv.shape[2] != 2 * h * hd or hd % 8:
        raise ValueError("decoder_attention needs float32 kv of width 2 * heads * head_dim, head_dim % 8 == 0")
    r = masked.shape[1]
    out = torch.empty(m * r, h * hd)
    rc = lib.decoder_attention(m, j, visible.shape[1], r, h, n, np_, hd, torch.get_num_threads(),
                               q0t.data_ptr(), m0.data_ptr(), e0t.data_ptr(), v0.data_ptr(), ev0t.data_ptr(),
                               es0.data_ptr(), kv.data_ptr(), visible.data_ptr(), masked.data_ptr(), out.data_ptr())
    if rc:
        raise MemoryError("keypatch native decoder_attention could not allocate its work buffers")
    return out


def encoder_attention(qkv: torch.Tensor, heads: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head self-attention of ``M`` short sequences from packed projections.

    Parameters
    ----------
    qkv : torch.Tensor
        ``(M, n, 3 * C)`` float32: queries, keys and values, heads of width ``C / heads`` (a
        multiple of 32) side by side, as :class:`keypatch.reconstructors.mae.Attention` packs them.
    heads : int
        Number of heads.
    out : torch.Tensor, optional
        ``(M * n, C)`` float32 contiguous buffer to write into.

    Returns
    -------
    torch.Tensor
        ``(M * n, C)``: ``softmax(q k^T / sqrt(C / heads)) v`` per head, heads side by side
        (before the output projection).
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"keypatch native kernels are {status()}")
    m, n, c3 = qkv.shape
    c = c3 // 3
    hd = c // heads
    qkv = qkv.contiguous()
    if qkv.dtype != torch.float32 or hd * heads != c or hd % 32:
        raise ValueError("encoder_attention needs float32 qkv and a head width that is a multiple of 32")
    if out is None:
        out = torch.empty(m * n, c)
    if out.shape != (m * n, c) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 ({m * n}, {c}) tensor")
    rc = lib.encoder_attention(m, n, heads, hd, hd**-0.5, torch.get_num_threads(), qkv.data_ptr(), out.data_ptr())
    if rc:
        raise MemoryError("keypatch native encoder_attention could not allocate its work buffers")
    return out

