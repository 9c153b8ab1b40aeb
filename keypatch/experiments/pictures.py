"""Pictures of a proposal: original | kept patches | MAE reconstruction, side by side."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from keypatch.geometry import ImageLike, InputNotes, PatchGrid, load_image, to_pil
from keypatch.reconstructors import MAE, load_mae

MARGIN = 8
"""Pixels around and between the panels."""
TITLE_HEIGHT = 24
"""Pixels of the title band above the panels."""
TITLE_SIZE = 20
"""Largest title font size in pixels (smaller where a title would not fit its panel): readable when
a gallery card shows the picture at half its size."""
BACKGROUND = (255, 255, 255)
MASK_GREY = 0.2
"""Masked patches in the middle panel: this dark grey (in [0, 1]) ..."""
MASK_SHOW = 0.3
"""... blended with this fraction of the true pixels, so the context stays faintly visible."""
OUTLINE = (255, 200, 0)
"""Colour of the 1-pixel frame drawn inside each kept patch (so dark kept patches still stand out)."""


def _font(titles: Sequence[str], width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The largest default font (<= :data:`TITLE_SIZE` px) in which every title fits ``width`` pixels."""
    for size in range(min(TITLE_SIZE, TITLE_HEIGHT - 2), 5, -1):
        try:
            font = ImageFont.load_default(size=size)
        except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType: one bitmap size
            return ImageFont.load_default()
        if all(font.getlength(t) <= width for t in titles):
            return font
    return font


NUMBER_SIZE = 8
"""Font size of the pick numbers drawn in the kept patches."""


def kept_panel(image: torch.Tensor, patches: Sequence[int], grid: PatchGrid, numbers: bool = False) -> Image.Image:
    """``image`` (normalised ``(3, H, W)``) with every patch not in ``patches`` darkened, and a thin
    frame inside each kept one; with ``numbers``, each kept patch shows its pick number (1 first)."""
    from keypatch.geometry import denormalize, normalize

    keep = torch.zeros(grid.n, dtype=torch.bool)
    keep[list(patches)] = True
    keep = keep.view(1, grid.rows, grid.cols)
    keep = keep.repeat_interleave(grid.patch_size, 1).repeat_interleave(grid.patch_size, 2)
    rgb = denormalize(image.detach().float().cpu())
    shown = torch.where(keep, rgb, MASK_SHOW * rgb + (1 - MASK_SHOW) * MASK_GREY)
    panel = to_pil(normalize(shown))
    draw = ImageDraw.Draw(panel)
    p = grid.patch_size
    for i in set(int(i) for i in patches):
        r, c = grid.rc(i)
        draw.rectangle((c * p, r * p, c * p + p - 1, r * p + p - 1), outline=OUTLINE)
    if numbers:
        font = _sized_font(NUMBER_SIZE)
        for rank, i in enumerate(patches, start=1):
            r, c = grid.rc(int(i))
            draw.text((c * p + p / 2, r * p + p / 2), str(rank), fill=(255, 255, 255), font=font, anchor="mm",
                      stroke_width=1, stroke_fill=(0, 0, 0))
    return panel


def _sized_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType: one bitmap size
        return ImageFont.load_default()


@torch.no_grad()
def triptych(image: ImageLike, patches: Sequence[int], model: MAE | str | None = None,
             grid: PatchGrid | None = None, notes: InputNotes | None = None, resize: str = "bicubic",
             name: str | None = None, loss: float | None = None, numbers: bool = True) -> Image.Image:
    """Three panels with titles: the original, the kept patches, the MAE's reconstruction.

    Parameters
    ----------
    image : image-like
        A path, PIL image, array, or normalised tensor (see :func:`keypatch.load_image`); shown
        resized to the model's input size, as the model sees it.
    patches : sequence of int
        The kept (visible) patches, e.g. ``Proposal.patches``.
    model : MAE, str or None
        The reconstructor or a :func:`keypatch.load_mae` spec (None: the embedded default).
    grid : PatchGrid, optional
        The grid ``patches`` refer to (e.g. ``Proposal.grid``); checked against the model's.
    notes : InputNotes, optional
        Collects the loading notes (see :func:`keypatch.load_image`) instead of warning.
    resize : {"bicubic", "bilinear"}
        The filter the image was resized with when its patches were chosen.
    name : str, optional
        Shown above the original (e.g. the file name; default "original").
    loss : float, optional
        ``L`` of the kept set, shown above the reconstruction.
    numbers : bool
        Number the kept patches in the order of ``patches`` (their pick order).

    Returns
    -------
    PIL.Image.Image
        RGB, ``3 * S + 4 * MARGIN`` wide and ``S + TITLE_HEIGHT + 2 * MARGIN`` high for an
        ``S x S`` model input. The reconstruction has the visible patches pasted back.
    """
    mae = model if isinstance(model, MAE) else load_mae(model or "default", device="cpu")
    g = mae.grid
    if grid is not None and grid != g:
        raise ValueError(f"the patches refer to a {grid.rows}x{grid.cols} grid on {grid.image_size} px, but the model "
                         f"works on a {g.rows}x{g.cols} grid on {g.image_size} px")
    idx = [int(p) for p in patches]
    if not idx:
        raise ValueError("at least one patch must be kept")
    bad = [p for p in idx if not 0 <= p < g.n]
    if bad:
        raise ValueError(f"patches {bad} are outside the model's grid of {g.n} patches")
    x = load_image(image, g.image_size, notes, resize=resize)
    recon = mae.reconstruct(x.to(mae.device), idx)
    panels = [to_pil(x), kept_panel(x, idx, g, numbers), to_pil(recon.cpu())]
    titles = [name or "original", f"kept {len(set(idx))}/{g.n}" + (", in pick order" if numbers else ""),
              "reconstruction" + (f", L = {loss:.4f}" if loss is not None else "")]

    s = g.image_size
    out = Image.new("RGB", (3 * s + 4 * MARGIN, s + TITLE_HEIGHT + 2 * MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(out)
    font = _font(titles, s + MARGIN)
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        left = MARGIN + i * (s + MARGIN)
        out.paste(panel, (left, MARGIN + TITLE_HEIGHT))
        width = font.getlength(title)
        draw.text((left + (s - width) / 2, MARGIN), title, fill=(0, 0, 0), font=font)
    return out
