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
                   "__format__"})
"""Tensor methods and torch functions that always read device values on the host (others only with
some arguments: :meth:`HostSyncs.waits`)."""


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
    ``masked_select``, ``unique``, ``bincount``, ``repeat_interleave`` with tensor repeats and no
    ``output_size``, reading or writing through a boolean mask, printing a tensor, and copying a
    device's tensor to the host (``cpu()``, ``to("cpu")``). A call counts as a wait on a CPU too
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
        if name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], torch.Tensor) \
                and args[1].numel() > 1 and kwargs.get("output_size") is None:
            return name
        if name in ("cpu", "to") and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu" and (
                name == "cpu" or any(str(a) == "cpu" for a in (*args[1:], kwargs.get("device")))):
            return f"{name} (to the host)"
        return name if name in WAITS else None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = self.waits(func, args, kwargs)
        if name is not None:
            self.calls[name] += 1
        return func(*args, **kwargs)
