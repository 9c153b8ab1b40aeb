"""Annotations back from Label Studio: sparse label masks, and a Dataset to train a segmenter on them.

:func:`write_label_masks` reads a Label Studio JSON export (a list of tasks with their
annotations) and writes one PNG per image at its original size: each annotated pixel holds its
label's class id, every other pixel 255 (:data:`IGNORE`, PyTorch's ``ignore_index`` for
``cross_entropy``). Brush (RLE), polygon and rectangle results are drawn, in the order of the
task's annotations (by id) and of their results, so a later stroke overwrites an earlier one;
cancelled annotations are skipped. :class:`SparseLabels` pairs the masks with their images.

An export comes from elsewhere: it is read through :mod:`keypatch.untrusted` (its size bounded,
every name checked before a file is written, every size bounded before a mask is allocated).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from PIL import Image, ImageDraw

from keypatch.untrusted import bounded, component, read_json, refuse

IGNORE = 255
"""The value of every pixel no annotation covers (and the largest class id is 254)."""
MAX_EXPORT_BYTES = 1 << 30
"""The largest export read."""
MAX_SIDE = 1 << 15
"""The largest image side a mask is made for."""
KINDS = ("brushlabels", "polygonlabels", "rectanglelabels")
"""The result types drawn (others, e.g. choices or keypoints, are counted and skipped)."""


class LabelsWarning(UserWarning):
    """Something in an export was left out of the masks (the message says what and why)."""


def task_image(data: dict) -> Any:
    """A task's image reference: its ``image`` field, else its first text field (None without one)."""
    return data.get("image", next((v for v in data.values() if isinstance(v, str)), None))


def image_name(source: Any, *, file: str | Path, entry: str) -> str:
    """The file name a task's image is known by: the last part of its path, of the ``d=`` path of a
    ``/data/local-files/?d=...`` URL, or of an uploaded file (``/data/upload/1/abc-NAME.jpg``).
    Checked as one path component (:func:`keypatch.untrusted.component`)."""
    if not isinstance(source, str) or not source:
        raise refuse(file, entry, f"is {str(source)[:80]!r}, not an image path or URL")
    url = urlparse(source)
    path = url.path
    query = parse_qs(url.query).get("d")
    if query:
        path = query[0]
    name = PurePosixPath(unquote(path)).name
    return component(name, file=file, entry=entry)


def decode_rle(rle: list[int], size: int, *, file: str | Path, entry: str) -> np.ndarray:
    """Label Studio's brush RLE -> the ``size`` bytes it encodes (RGBA pixels, row-major).

    The bytes are read as a bit stream, most significant bit first: 32 bits for the number of
    values, 5 bits for the word size minus 1, four 4-bit run-length sizes minus 1; then blocks, each a
    1-bit flag, a 2-bit choice of run-length size and a run length minus 1 of that many bits,
    followed by one word repeated over the run (flag 1) or one word per value (flag 0).
    """
    if not isinstance(rle, list) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256
                                            for v in rle):
        raise refuse(file, entry, "is not a list of bytes")
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > bits.size:
            raise refuse(file, entry, "ends before the values it announces")
        value = 0
        for b in bits[pos : pos + n]:
            value = (value << 1) | int(b)
        pos += n
        return value

    count = read(32)
    if count != size:
        raise refuse(file, entry, f"encodes {count} values, not the {size} of its image (width x height x 4)")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeated = read(1)
        end = min(i + 1 + read(sizes[read(2)]), count)
        if repeated:
            out[i:end] = read(word) & 0xFF
            i = end
        else:
            while i < end:
                out[i] = read(word) & 0xFF
                i += 1
    return out


@dataclass
class LabelMasks:
    """What :func:`write_label_masks` wrote: ``masks`` (image name -> PNG path), ``classes`` (name ->
    id), and ``skipped`` (why -> count) for results it did not draw."""

    masks: dict[str, Path] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def read_classes(path: str | Path) -> dict[str, int]:
    """A ``classes.json``: a list of label names (ids by position) or a name -> id map, ids 0-254."""
    data = read_json(path, max_bytes=1 << 20)
    pairs = list(enumerate(data)) if isinstance(data, list) else None
    if isinstance(data, dict):
        pairs = [(v, k) for k, v in data.items()]
    if pairs is None:
        raise refuse(path, "the file", "is neither a list of label names nor a name -> id map")
    out = {}
    for cid, name in pairs:
        if not isinstance(name, str) or not name:
            raise refuse(path, f"label {str(name)[:40]!r}", "is not a label name")
        out[name] = bounded(cid, 0, IGNORE - 1, file=path, entry=f"the id of {name[:40]!r}")
    return out


def _polygon_xy(value: dict, kind: str, w: int, h: int, *, file: Path, entry: str) -> list[tuple[float, float]]:
    """A polygon's or rectangle's corners in pixels (Label Studio gives percents of the image)."""

    def pct(v: Any, what: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e4:
            raise refuse(file, f"{entry} {what}", f"is {str(v)[:40]!r}, not a percentage")
        return float(v)

    if kind == "polygonlabels":
        points = value.get("points")
        if not isinstance(points, list) or not 3 <= len(points) <= 1 << 16 or not all(
                isinstance(p, list) and len(p) == 2 for p in points):
            raise refuse(file, f"{entry} points", "is not a list of at least 3 [x, y] points")
        return [(pct(x, "x") * w / 100, pct(y, "y") * h / 100) for x, y in points]
    x, y = pct(value.get("x"), "x") * w / 100, pct(value.get("y"), "y") * h / 100
    rw, rh = pct(value.get("width"), "width") * w / 100, pct(value.get("height"), "height") * h / 100
    angle = math.radians(pct(value.get("rotation", 0), "rotation"))  # degrees, about the top-left corner
    c, s = math.cos(angle), math.sin(angle)
    return [(x + dx * c - dy * s, y + dx * s + dy * c) for dx, dy in ((0, 0), (rw, 0), (rw, rh), (0, rh))]


def write_label_masks(export: str | Path | list, out: str | Path, *, classes: dict[str, int] | None = None,
                      source: str | Path | None = None) -> LabelMasks:
    """One PNG of class ids per annotated image of a Label Studio JSON export.

    Parameters
    ----------
    export : path or list
        A Label Studio JSON export (``exportType=JSON``: a list of tasks), or the list itself.
    out : path
        The folder written: ``NAME.png`` per image (``NAME``: the image file's stem, the task id
        added when two tasks share it) and ``classes.json`` (name -> id).
    classes : dict, optional
        Label name -> id (0-254; :func:`read_classes`). Default: the names found, sorted, ids from
        0. A label not in a given map is skipped (counted in ``skipped``).
    source : path, optional
        What to name in errors (default: the export's path).

    Returns
    -------
    LabelMasks
    """
    file: Any = source if source is not None else Path(export if not isinstance(export, list) else "the export")
    tasks = export if isinstance(export, list) else read_json(export, max_bytes=MAX_EXPORT_BYTES)
    if not isinstance(tasks, list):
        raise refuse(file, "the file", "is not a Label Studio JSON export (a list of tasks)")
    out = Path(out)
    drawn: list[tuple[str, int, int, list[tuple[str, str, Any]]]] = []  # name, width, height, (kind, label, value)
    result = LabelMasks()
    names: set[str] = set()
    for t, task in enumerate(tasks):
        where = f"task {t}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise refuse(file, where, "is not a task with data")
        data = task["data"]
        image = task_image(data)
        name = image_name(image, file=file, entry=f"{where} data.image")
        stem = Path(name).stem
        if stem in names:
            stem = f"{stem}-{bounded(task.get('id'), 0, 1 << 62, file=file, entry=f'{where} id')}"
        shapes: list[tuple[str, str, Any]] = []
        size: tuple[int, int] | None = None
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            raise refuse(file, f"{where} annotations", "is not a list")
        order = sorted(range(len(annotations)), key=lambda i: (
            annotations[i].get("id", i) if isinstance(annotations[i], dict) and isinstance(
                annotations[i].get("id", i), int) else i))
        for a in order:
            ann = annotations[a]
            if not isinstance(ann, dict) or not isinstance(ann.get("result", []), list):
                raise refuse(file, f"{where} annotation {a}", "is not an annotation with a list of results")
            if ann.get("was_cancelled"):
                result.skipped["cancelled annotation"] = result.skipped.get("cancelled annotation", 0) + 1
                continue
            for r, res in enumerate(ann.get("result", [])):
                entry = f"{where} annotation {a} result {r}"
                kind = res.get("type") if isinstance(res, dict) else None
                if kind not in KINDS:
                    why = f"result of type {str(kind)[:40]}"
                    result.skipped[why] = result.skipped.get(why, 0) + 1
                    continue
                value = res.get("value")
                labels = value.get(kind) if isinstance(value, dict) else None
                if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
                    raise refuse(file, f"{entry} value.{kind}", "is not a list of label names")
                w = bounded(res.get("original_width"), 1, MAX_SIDE, file=file, entry=f"{entry} original_width")
                h = bounded(res.get("original_height"), 1, MAX_SIDE, file=file, entry=f"{entry} original_height")
                if size is not None and size != (w, h):
                    raise refuse(file, entry, f"is on a {w}x{h} image, the task's others on {size[0]}x{size[1]}")
                size = (w, h)
                shapes.append((kind, labels[0], value))
        if size is None:
            continue  # nothing drawn for this task: no mask
        names.add(Path(name).stem)
        drawn.append((stem, size[0], size[1], shapes))
    if classes is None:
        classes = {label: i for i, label in enumerate(sorted({s[1] for *_, shapes in drawn for s in shapes}))}
        if len(classes) >= IGNORE:
            raise ValueError(f"{file}: {len(classes)} label names; at most {IGNORE} fit in a mask of bytes")
    out.mkdir(parents=True, exist_ok=True)
    for stem, w, h, shapes in drawn:
        mask = Image.new("L", (w, h), IGNORE)
        pen = ImageDraw.Draw(mask)
        for kind, label, value in shapes:
            if label not in classes:
                why = f"label {label[:40]!r} not in the classes"
                result.skipped[why] = result.skipped.get(why, 0) + 1
                continue
            cid = classes[label]
            if kind == "brushlabels":
                if value.get("format", "rle") != "rle":
                    raise refuse(file, f"{stem} brush", f"is in format {str(value.get('format'))[:20]!r}, not rle")
                rgba = decode_rle(value.get("rle"), w * h * 4, file=file, entry=f"{stem} brush rle")
                arr = np.array(mask)
                arr[rgba.reshape(h, w, 4)[:, :, 3] >= 128] = cid
                mask = Image.fromarray(arr)
                pen = ImageDraw.Draw(mask)
            else:
                pen.polygon(_polygon_xy(value, kind, w, h, file=file, entry=stem), fill=cid)
        path = out / f"{component(stem, file=file, entry='an image name')}.png"
        mask.save(path)
        result.masks[stem] = path
    result.classes = dict(classes)
    (out / "classes.json").write_text(json.dumps(result.classes, indent=1))
    for why, n in result.skipped.items():
        warnings.warn(f"{file}: {n} x {why}: not drawn", LabelsWarning, stacklevel=2)
    return result


def fetch_export(url: str, api_key: str, project: int, *, timeout: float = 600.0) -> list:
    """A project's annotated tasks from a running Label Studio (its JSON export, through
    ``/api/projects/ID/export?exportType=JSON``), as :func:`write_label_masks` takes them.

    The token goes to ``url``'s host only (a redirect elsewhere is followed without it); a personal
    access token is exchanged for an access token first. The export may be at most 1 GiB.
    """
    from keypatch.serve.images import ImageFetchError, ImageSource

    if isinstance(project, bool) or not isinstance(project, int) or project < 1:
        raise ValueError(f"project must be a Label Studio project id (a positive integer), got {project!r}")
    source = ImageSource(label_studio_url=url, api_key=api_key, max_bytes=MAX_EXPORT_BYTES, timeout=timeout)
    where = f"{url.rstrip('/')}/api/projects/{project}/export"
    try:
        data = source.api(f"/api/projects/{project}/export?exportType=JSON")
    except ImageFetchError as exc:
        raise ValueError(f"could not read the export of project {project} from {url}: {exc}") from None
    try:
        tasks = json.loads(data)
    except ValueError:
        raise refuse(where, "the answer", "is not JSON") from None
    if not isinstance(tasks, list):
        raise refuse(where, "the answer", "is not a Label Studio JSON export (a list of tasks)")
    return tasks


class SparseLabels:
    """A torch Dataset of ``(image, mask)`` for training a segmenter on sparse annotations.

    Pairs each ``NAME.png`` mask of ``masks`` (:func:`write_label_masks`) with the image of the same
    stem under ``images`` (searched recursively). ``image`` is a ``(3, H, W)`` float tensor in [0, 1],
    ``mask`` an ``(H, W)`` long tensor of class ids with :data:`IGNORE` (255) where nothing was
    annotated: train with ``cross_entropy(..., ignore_index=255)``. ``transform(image, mask)``, when
    given, is applied to both (it must move the mask as it moves the image).

    Raises
    ------
    ValueError
        When a mask has no image, or an image's size differs from its mask's.
    """

    def __init__(self, images: str | Path, masks: str | Path, transform=None) -> None:  # noqa: ANN001
        from keypatch.geometry.files import list_image_files

        found = {p.stem: p for p in list_image_files([images])}
        self.masks = sorted(p for p in Path(masks).glob("*.png"))
        missing = [m.name for m in self.masks if m.stem not in found]
        if missing:
            raise ValueError(f"no image under {images} for the masks {', '.join(missing[:5])}")
        self.images = [found[m.stem] for m in self.masks]
        self.classes = json.loads((Path(masks) / "classes.json").read_text()) \
            if (Path(masks) / "classes.json").is_file() else {}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int):
        import torch

        with Image.open(self.images[i]) as im:
            from PIL import ImageOps

            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        mask = np.asarray(Image.open(self.masks[i]))
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"{self.images[i]} is {rgb.shape[1]}x{rgb.shape[0]}, its mask {self.masks[i]} "
                             f"{mask.shape[1]}x{mask.shape[0]}")
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
        target = torch.from_numpy(mask.astype(np.int64))
        return self.transform(image, target) if self.transform is not None else (image, target)
