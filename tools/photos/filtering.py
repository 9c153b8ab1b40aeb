"""The photo rule: which decoded images count as photographs, and how they are saved."""

from __future__ import annotations

from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
MIN_SHORT_SIDE = 200
MIN_GREY_LEVELS = 64
MIN_COLOURS_15BIT = 128


def is_photo(im: Image.Image) -> tuple[bool, str]:
    """Apply rules 2-4 of the module's photo rule to a decoded image.

    Parameters
    ----------
    im : PIL.Image.Image
        The decoded image (any mode).

    Returns
    -------
    tuple of (bool, str)
        ``(True, "")`` if it looks like a photograph, else ``(False, reason)``.
    """
    if min(im.size) < MIN_SHORT_SIDE:
        return False, f"short side < {MIN_SHORT_SIDE} px"
    if im.mode in ("P", "1"):
        return False, "palette or bilevel image"
    if "A" in im.getbands() or "transparency" in im.info:
        alpha = im.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 250:
            return False, "has transparency"
    small = im.convert("RGB")
    small.thumbnail((512, 512), Image.Resampling.BOX)
    data = small.tobytes()
    r, g, b = data[0::3], data[1::3], data[2::3]
    n = len(r)
    # Mean absolute channel difference, computed on a subsample to stay cheap.
    step = max(1, n // 20000)
    diff = sum(abs(r[i] - g[i]) + abs(g[i] - b[i]) for i in range(0, n, step)) / (2 * len(range(0, n, step)))
    if diff < 2.0:
        levels = len(set(small.convert("L").tobytes()))
        if levels < MIN_GREY_LEVELS:
            return False, f"grey-scale with only {levels} levels"
        return True, ""
    colours = {((r[i] >> 3) << 10) | ((g[i] >> 3) << 5) | (b[i] >> 3) for i in range(n)}
    if len(colours) < MIN_COLOURS_15BIT:
        return False, f"only {len(colours)} distinct colours"
    return True, ""


def to_output(im: Image.Image, max_side: int) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        im = bg
    else:
        im = im.convert("RGB")
    w, h = im.size
    scale = max_side / max(w, h)
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
    return im
