"""A contact sheet: thumbnails of the selected images on one page, each labelled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps


def contact_sheet(files: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                  thumb: int = 128, cols: int | None = None, max_images: int = 400, title: str | None = None) -> Path:
    """Write thumbnails of ``files`` in a grid to ``out`` (format from its suffix); returns ``out``.

    Parameters
    ----------
    files : sequence of paths
        The images, in display order.
    labels : sequence of str, optional
        A caption under each thumbnail (e.g. ``"bin 3"``).
    thumb : int
        Cell side in pixels; images are fitted inside it, aspect kept.
    cols : int, optional
        Columns (default about the square root of the count, at most 16).
    max_images : int
        Only the first ``max_images`` are drawn (the title says so).
    title : str, optional
        A line at the top.
    """
    files = list(files)
    if labels is not None and len(labels) != len(files):
        raise ValueError("labels must match files")
    if not files:
        raise ValueError("no images for the contact sheet")
    shown = files[:max_images]
    n = len(shown)
    cols = cols or min(16, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    font = ImageFont.load_default()
    cap = 14 if labels is not None else 0
    head = 20 if title or len(files) > n else 0
    pad = 4
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, head + rows * (thumb + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if head:
        text = title or ""
        if len(files) > n:
            text += f"  (first {n} of {len(files)})"
        draw.text((pad, 4), text.strip(), fill="black", font=font)
    for i, f in enumerate(shown):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (thumb + pad), head + pad + r * (thumb + cap + pad)
        try:
            with Image.open(f) as im:
                tile = ImageOps.contain(im.convert("RGB"), (thumb, thumb))
        except Exception:  # unreadable file: grey tile
            tile = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        sheet.paste(tile, (x0 + (thumb - tile.width) // 2, y0 + (thumb - tile.height) // 2))
        if labels is not None:
            draw.text((x0, y0 + thumb + 1), str(labels[i])[: max(4, thumb // 6)], fill="black", font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
