"""The labelling configs the backend answers: a ``BrushLabels`` control on an ``Image`` object."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from keypatch.exports.annotations import LABEL
from keypatch.exports.labelstudio import LABELSTUDIO_CONFIG

__all__ = ["ConfigFit", "LABELSTUDIO_CONFIG", "fit_config"]


@dataclass(frozen=True)
class ConfigFit:
    """Where a prediction goes in a project's config: the ``BrushLabels`` control's name
    (``from_name``), the ``Image`` it labels (``to_name``), the task data key holding the image
    (``$image`` -> ``"image"``) and the label given to the kept patches."""

    from_name: str
    to_name: str
    data_key: str
    label: str


def fit_config(xml: str | None) -> ConfigFit:
    """The :class:`ConfigFit` of a Label Studio labelling config; a ValueError saying what is missing.

    The first ``BrushLabels`` whose ``toName`` is an ``Image`` is used; its label is the one named
    ``key_patch`` if there is one, else its first. No config (``None`` or empty) is the config
    ``keypatch serve --print-config`` prints.
    """
    if not xml or not xml.strip():
        xml = LABELSTUDIO_CONFIG
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"the labelling config is not valid XML: {exc}") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag == "Image"}
    if not images:
        raise ValueError("the labelling config has no <Image> to label (see keypatch serve --print-config)")
    for brush in (el for el in root.iter() if el.tag == "BrushLabels"):
        target = brush.get("toName", "").split(",")[0]
        if target not in images:
            continue
        value = images[target]
        if not value.startswith("$") or len(value) < 2:
            raise ValueError(f"the <Image name=\"{target}\"> takes its image from {value!r}, not from a task field "
                             "($field)")
        labels = [lab.get("value") for lab in brush.iter("Label") if lab.get("value")]
        if not labels:
            raise ValueError(f"the <BrushLabels name=\"{brush.get('name')}\"> has no <Label>")
        label = LABEL if LABEL in labels else labels[0]
        return ConfigFit(brush.get("name", ""), target, value[1:], label)
    raise ValueError("the labelling config has no <BrushLabels> on an <Image>: key patches are brush masks "
                     "(see keypatch serve --print-config)")
