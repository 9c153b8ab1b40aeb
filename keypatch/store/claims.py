"""Claims: how concurrent runs on one store share the work (who holds an image, until when)."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from keypatch.store.setting import Setting

DEFAULT_LEASE = 60.0
"""Seconds a claim stays valid without renewal (a live run renews it every quarter of this)."""


@dataclass(frozen=True)
class RunId:
    """Who holds a claim: a random run id, the host name and the process id."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


def alive(host: str, pid: int) -> bool:
    """Whether the claim holder may still run (always True for another host: only its lease says)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_key(sha256: str, model_id: str, strategy: str, ratio: float, start: str, options: dict | str | None) -> str:
    """The key of one image's claim for one setting (:meth:`~keypatch.store.setting.Setting.key`)."""
    return Setting.of(model_id, strategy, ratio, start, options).key(sha256)
