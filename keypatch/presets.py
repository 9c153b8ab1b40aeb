"""Run presets: KPP as the paper's text describes it, or as the authors' released code runs it.

Three settings of a run are not options of a strategy but of how an image becomes a search:

* ``start``: the first patch of the greedy-like strategies (``"center"``, ``"none"``, an index);
* ``count``: how a ratio becomes a number of patches (:meth:`keypatch.geometry.PatchGrid.count`);
* ``resize``: the filter that brings an image to the model's side
  (:data:`keypatch.geometry.RESIZE_FILTERS`).

The KPP authors' code (CA-TT-AC/key-patch-proposer) differs from the paper's text in all three: it
starts from patch 98 (row 7, column 0), keeps ``int(r * N) + 1`` patches and resizes with
torchvision's ``Resize((224, 224))`` (PIL bilinear). ``preset="reference"`` sets all three to its
behaviour; ``"paper"`` (the default) to the text's. A setting given explicitly overrides the preset's.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from keypatch.geometry import check_resize
from keypatch.geometry.grid import COUNT_RULES
from keypatch.proposers.search import REFERENCE_START, parse_start


class RunSettings(NamedTuple):
    """``start`` (canonical text, :func:`~keypatch.proposers.search.parse_start`), ``count`` and ``resize``."""

    start: str
    count: str
    resize: str

    def stored(self) -> dict[str, str]:
        """The settings that go into a stored record's options: ``count`` and ``resize`` where they
        differ from the paper's (so that records made before these settings existed keep their keys)."""
        paper = PRESETS["paper"]
        return {name: value for name, value in (("count", self.count), ("resize", self.resize))
                if value != getattr(paper, name)}


PRESETS: dict[str, RunSettings] = {
    "paper": RunSettings("center", "round", "bicubic"),
    "reference": RunSettings(str(REFERENCE_START), "reference", "bilinear"),
}
"""The named presets: the paper's text and the authors' released code."""


def run_settings(preset: str | None = None, start: Any = None, count: str | None = None,
                 resize: str | None = None) -> RunSettings:
    """The settings of ``preset`` (default ``"paper"``), with each one given explicitly in its place.

    Raises
    ------
    ValueError
        For an unknown preset, start, count rule or resize filter (the message names it).
    """
    name = "paper" if preset is None else preset
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    base = PRESETS[name]
    if count is not None and count not in COUNT_RULES:
        raise ValueError(f"count must be one of {', '.join(COUNT_RULES)}, got {count!r}")
    return RunSettings(
        parse_start(base.start if start is None else start),
        base.count if count is None else count,
        check_resize(base.resize if resize is None else resize),
    )
