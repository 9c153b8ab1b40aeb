"""Count the host synchronisations of a piece of torch code on any device, a CPU included.

On a GPU, Python waits for the device whenever it reads a value the device computes: a tensor's
truth value, ``item()``, ``tolist()``, ``nonzero()``, indexing by a boolean mask, a copy to the host.
Each wait drains the queue of launched kernels, so a search with a wait inside every step cannot
overlap its launches with the device's work, and cannot be captured as a CUDA graph. CUDA's own
counter (``torch.cuda.set_sync_debug_mode``) needs a GPU; :class:`HostSyncs` counts the same calls
by their names as the code makes them, on whatever device it runs, so that a CPU test can hold the
search to the habit "no host sync inside a step".

Examples
--------
>>> import torch
>>> from keypatch.syncs import HostSyncs
>>> t = torch.arange(6)
>>> with HostSyncs() as s:
...     _ = t * 2
...     _ = bool((t > 3).any())
...     _ = t[t > 3]
>>> s.count, dict(s.calls)
(2, {'__bool__': 1, '__getitem__ (mask)': 1})
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

WAITS = frozenset({"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy", "nonzero",
                   "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "__repr__",
                   "__format__", "equal", "allclose", "is_nonzero", "__contains__", "one_hot"})
"""Tensor methods and torch functions that always read device values on the host (others only with
some arguments: :meth:`HostSyncs.waits`)."""


def _is_cpu(where: Any) -> bool:
    """Whether a ``to`` argument names the host: ``"cpu"``, ``"cpu:0"``, a CPU device or a CPU tensor."""
    if isinstance(where, torch.Tensor):
        return where.device.type == "cpu"
    if isinstance(where, (str, torch.device)):
        try:
            return torch.device(where).type == "cpu"
        except RuntimeError:  # a dtype name or other string
            return False
    return False


def _is_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostSyncs(TorchFunctionMode):
    """A torch function mode that counts the calls that make the host wait for the device.

    Attributes
    ----------
    count : int
        Host synchronisations seen.
    calls : collections.Counter
        Their number by call name (``"__getitem__ (mask)"`` for boolean-mask indexing).

    Notes
    -----
    Counted: a tensor's truth value, ``item``, ``tolist``, ``int()``/``float()``/``operator.index``
    of a tensor, ``numpy``, ``nonzero`` (also ``torch.where`` with one argument), ``argwhere``,
    ``masked_select``, ``unique``, ``bincount``, ``equal``, ``allclose``, ``is_nonzero``, ``in``,
    ``one_hot``, ``repeat_interleave`` with tensor repeats and no ``output_size``, a size or fill
    value given as a tensor (``full``, ``arange``, ...), reading or writing through a boolean mask
    (writing a Python number through one, a ``masked_fill_`` on CUDA that does not wait, counts
    too), printing a tensor, and copying a device's tensor to the host (``cpu()``, ``to`` a CPU
    device or tensor, ``copy_`` into a CPU tensor). A call counts as a wait on a CPU too
    (where it costs nothing), so the count describes the code, not the device; the one exception is
    a copy to the host, which a CPU tensor does not make. Code that torch runs below Python (inside
    one operator) is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    @property
    def count(self) -> int:
        """Host synchronisations seen so far."""
        return sum(self.calls.values())

    def waits(self, func: Any, args: tuple, kwargs: dict) -> str | None:
        """The name this call is counted under, or None where it does not wait for the device."""
        name = getattr(func, "__name__", "")
        if name in ("__getitem__", "__setitem__", "index_put", "index_put_") and len(args) > 1 \
                and _is_mask(args[1]):
            return f"{name} (mask)"
        if name == "where" and len(args) + len(kwargs) == 1:
            return "where (one argument)"
        if name == "repeat_interleave" and kwargs.get("output_size") is None:
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0] if len(args) == 1 else None)
            if isinstance(repeats, torch.Tensor):  # counts read on the host (one-argument form included)
                return name
        if name in ("full", "arange", "zeros", "ones", "empty") and any(
                isinstance(a, torch.Tensor) for a in args if not isinstance(a, (tuple, list))):
            return f"{name} (size or value from a tensor)"
        if name in ("cpu", "to", "copy_") and isinstance(args[0], torch.Tensor):
            source = args[1] if name == "copy_" else args[0]  # copy_ copies into its first argument
            if name == "cpu":
                to_host = True
            elif name == "copy_":
                to_host = args[0].device.type == "cpu"
            else:
                to_host = any(_is_cpu(a) for a in (*args[1:], kwargs.get("device")))
            if to_host and isinstance(source, torch.Tensor) and source.device.type != "cpu":
                return f"{name} (to the host)"
        return name if name in WAITS else None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = self.waits(func, args, kwargs)
        if name is not None:
            self.calls[name] += 1
        return func(*args, **kwargs)
