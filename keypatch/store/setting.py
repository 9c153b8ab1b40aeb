"""A result's identity: the one value that says which setting a record was computed with.

A record is keyed by its image content (sha256) and its :class:`Setting`: the model id, the
strategy, the ratio, the start and the remaining options (canonical JSON). Every place that
needs the identity (the store's uniqueness, claims, ``keypatch export``'s selecting flags, the
folders of ``--each-setting``, the gallery's headings) asks this value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any, NamedTuple

from keypatch.store.keys import options_key

__all__ = ["MAY_MOVE", "Setting", "count_line"]

MAY_MOVE = " (may move)"
"""Stored after the start of a strategy whose refinement may move its start patch away (``ranked``,
``swap``, ``screened``): ``"center (may move)"``."""


class Setting(NamedTuple):
    """``(model_id, strategy, ratio, start, options_json)``: everything about a result but its image."""

    model_id: str
    strategy: str
    ratio: float
    start: str
    options_json: str

    @classmethod
    def of(cls, model_id: str, strategy: str, ratio: float, start: str = "",
           options: dict[str, Any] | str | None = None) -> Setting:
        """The setting with ``options`` in canonical form (:func:`~keypatch.store.keys.options_key`)."""
        return cls(model_id, strategy, float(ratio), start, options_key(options))

    @property
    def options(self) -> dict[str, Any]:
        """The options as a dict."""
        return json.loads(self.options_json)

    def key(self, sha256: str) -> str:
        """The key of one image's claim for this setting."""
        return json.dumps([sha256, *self], separators=(",", ":"))

    @property
    def start_value(self) -> str:
        """The start as given (``center``, ``none``, a patch index), without :data:`MAY_MOVE`."""
        return self.start.removesuffix(MAY_MOVE)

    def flags(self) -> str:
        """The ``keypatch export`` flags that select exactly this setting."""
        flags = [f"--model {self.model_id}", f"--strategy {self.strategy}", f"--ratio {self.ratio:g}"]
        if self.start:
            flags.append(f"--start {self.start_value}")
        return " ".join(flags + [f"-o {k}={v}" for k, v in sorted(self.options.items())])

    def slug(self) -> str:
        """A folder name: ``STRATEGY-rRATIO[-START]-HASH8`` (the hash covers the whole setting)."""
        digest = hashlib.sha1(json.dumps(list(self)).encode()).hexdigest()[:8]
        return f"{self.strategy}-r{self.ratio:g}" + (f"-{self.start_value}" if self.start else "") + f"-{digest}"

    def label(self, with_model: bool = False, options: bool | Collection[str] = True) -> str:
        """A human label: strategy, ratio, start and options (and the model, ``with_model``).
        ``options`` may name the options to show (a gallery card's title shows those that tell
        its settings apart; the rest are shown on demand)."""
        parts = [self.strategy, f"r={self.ratio:g}"]
        if self.start:
            parts.append(f"start {self.start}")
        if options:
            parts += [f"{k}={v}" for k, v in sorted(self.options.items()) if options is True or k in options]
        return " ".join(parts + ([f"model {self.model_id}"] if with_model else []))


def count_line(records: int, images: int, paths: int, settings: int) -> str:
    """How every command counts stored results, in one phrase: ``"2 records of 1 image at 2 paths,
    2 settings"`` (a record is one image content under one setting; an image content can be found
    at several paths)."""

    def n(k: int, word: str) -> str:
        return f"{k} {word}{'' if k == 1 else 's'}"

    return f"{n(records, 'record')} of {n(images, 'image')} at {n(paths, 'path')}, {n(settings, 'setting')}"
