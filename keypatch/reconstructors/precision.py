"""Compute precision of MAE passes: float32 (exact) or bfloat16 autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("float32", "bfloat16")
"""Accepted names (``fp32`` and ``bf16`` are aliases)."""


def check_precision(precision: str) -> str:
    """``precision`` as one of :data:`PRECISIONS`; a ValueError naming it otherwise."""
    name = {"fp32": "float32", "bf16": "bfloat16"}.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
    return name


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Context for ``precision``: nothing for float32, bfloat16 autocast on ``device``'s type."""
    if check_precision(precision) == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
