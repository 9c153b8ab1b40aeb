"""The canonical form of a record's options (sorted-key JSON), shared by the store and its claims."""

from __future__ import annotations

import json
from typing import Any


def options_key(options: dict[str, Any] | str | None) -> str:
    """Canonical JSON of ``options`` (sorted keys, no spaces): the form stored in ``options_json``."""
    if isinstance(options, str):
        options = json.loads(options) if options else {}
    return json.dumps(options or {}, sort_keys=True, separators=(",", ":"))
