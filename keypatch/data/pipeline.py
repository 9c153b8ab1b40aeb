"""Dataset Quantization end to end: DQ's bins, uniform sampling per bin, key patches, shards of kept patches.

:func:`quantize` is ``keypatch quantize``. Its output folder holds the dataset
(``manifest.json`` and ``shard-*.tar``, :mod:`keypatch.data.shards`) and, under ``work/``, what a
re-run reuses: the embeddings (``embeddings.npz``), the selection (``selection.json``) and the
store of picks (``results.sqlite``). A re-run with the same arguments recomputes neither the
selection nor any stored pick, and writes the same bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keypatch.data.codec import DEFAULT_CODEC, pack, parse_codec, patch_pixels
from keypatch.data.shards import MANIFEST, MAX_MANIFEST_BYTES, ShardWriter, write_manifest
from keypatch.geometry.decode import InputNotes, to_rgb8
from keypatch.geometry.files import class_folders, list_image_files
from keypatch.geometry.pixels import resized_rgb8
from keypatch.untrusted import bounded, read_json, refuse, relative_name

WORK = "work"
"""The sub-folder of a quantized dataset's folder holding embeddings, selection and picks."""


@dataclass
class QuantizeResult:
    """What :func:`quantize` did.

    Attributes
    ----------
    out : Path
        The dataset folder.
    counts : dict
        Per class ``[selected, found]`` (class ``""`` for a source without class folders).
    bytes : dict
        ``originals`` (the selected files as stored), ``reencoded`` (the selected images at the
        model's size, whole, in the same codec), ``payload`` (the kept patches' mosaics),
        ``shards`` (the tar files: payload, per-image JSON and tar headers) and ``manifest``.
    picks : dict
        The summary of the proposal run (:func:`keypatch.batch.run_propose`).
    selection_reused : bool
        Whether the selection was read back from a previous run.
    """

    out: Path
    counts: dict[str, list[int]]
    bytes: dict[str, int]
    picks: dict[str, Any]
    selection_reused: bool = False
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)


def _listing(src: Path) -> tuple[list[Path], list[int], list[str]]:
    found = class_folders(src)
    if found is not None:
        return found
    files = list_image_files(src)
    return files, [-1] * len(files), []


def _select(src: Path, files: list[Path], labels: list[int], classes: list[str], fraction: float, bins: int,
            seed: int, classifier: str, device: str, work: Path, progress: bool) -> tuple[list[dict], bool]:
    """DQ per class: ``[{"file", "label", "bin"}]`` of the selected images; reused from
    ``work/selection.json`` when it was made from the same files and arguments."""
    from keypatch.selection import embed_paths, select_indices

    params = {"fraction": fraction, "bins": bins, "seed": seed, "classifier": classifier,
              "files": [f.relative_to(src).as_posix() for f in files],
              "sizes": [f.stat().st_size for f in files]}
    path = work / "selection.json"
    if path.is_file():
        saved = read_json(path, max_bytes=MAX_MANIFEST_BYTES)
        if isinstance(saved, dict) and saved.get("params") == params:
            return _checked_selection(path, saved.get("selected"), src, params["files"], len(classes), bins), True
    readable, emb = embed_paths(files, classifier, device=device, cache=work / "embeddings.npz", progress=progress)
    label_of = dict(zip(files, labels, strict=True))
    chosen: list[dict] = []
    for c in sorted(set(labels)):
        members = [i for i, f in enumerate(readable) if label_of[f] == c]
        if not members:
            continue
        sel = select_indices(emb[members], fraction, "dq", n_bins=min(bins, len(members)), seed=seed)
        picked = sorted(zip(sel.indices.tolist(), sel.bin_of.tolist(), strict=True))
        chosen += [{"file": readable[members[i]].relative_to(src).as_posix(), "label": c, "bin": b} for i, b in picked]
    path.write_text(json.dumps({"params": params, "classes": classes, "selected": chosen}, indent=1) + "\n")
    return chosen, False


def _checked_selection(path: Path, selected: Any, src: Path, files: list[str], classes: int, bins: int) -> list[dict]:
    """``selection.json``'s ``selected`` (a work folder may be shared): relative names of files listed
    from ``src`` (which may hold links to files elsewhere, as a class folder made of links does), labels
    and bins in range; a HostileFileError otherwise."""
    if not isinstance(selected, list):
        raise refuse(path, "selected", "is not a list")
    listed = set(files)
    for i, c in enumerate(selected):
        if not isinstance(c, dict):
            raise refuse(path, f"selected[{i}]", "is not an object")
        relative_name(c.get("file"), file=path, entry=f"selected[{i}].file")  # the source may be links to elsewhere
        if c["file"] not in listed:
            raise refuse(path, f"selected[{i}].file", f"{c['file']!r} is not one of the listed source files")
        bounded(c.get("label"), -1, classes - 1, file=path, entry=f"selected[{i}].label")
        bounded(c.get("bin"), 0, bins - 1, file=path, entry=f"selected[{i}].bin")
    return selected


def quantize(src: str | Path, fraction: float, drop: float, patches: str = "greedy", out: str | Path = "quantized",
             *, bins: int = 10, seed: int = 0, model: Any = "default", codec: str = DEFAULT_CODEC,
             classifier: str = "efficientnet-lite0", device: str = "auto", batch_size: int = 1,
             per_shard: int = 1000, work: str | Path | None = None, progress: bool = True,
             **options: Any) -> QuantizeResult:
    """Quantize an image folder: DQ-select ``fraction`` of it, keep ``1 - drop`` of each selected
    image's patches with a strategy, and store only those patches.

    Parameters
    ----------
    src : path
        A folder of images; with one sub-folder per class (no image directly in it), DQ selects
        per class and each image carries its label.
    fraction : float
        Share of each class kept (``round(fraction * n)`` images, at least one), sampled uniformly
        from each of DQ's bins in proportion to their sizes.
    drop : float
        Share of each image's patches dropped, in ``[0, 1)``; ``round((1 - drop) * N)`` are kept.
    patches : str
        The strategy that chooses the kept patches: ``attention`` (DQ's GradCAM++ patches),
        ``greedy`` (KPP), ``backward`` (exact and cheaper at high keep ratios), ``random``, ...
    out : path
        The dataset folder (see the module docstring).
    bins, seed, classifier
        DQ's number of bins per class, the seed of the sampling and of randomised strategies, and
        the network whose features place the images in bins.
    model, device, batch_size
        The MAE (a :func:`keypatch.load_mae` spec or an MAE), where it computes, images per pass.
    codec : str
        How the kept patches are encoded: ``webp`` (lossless, default), ``png``, ``webp:Q``, ``jpeg:Q``.
    per_shard : int
        Images per tar shard.
    work : path, optional
        Where embeddings, selection and picks are kept (default ``out/work``); datasets made from
        one source with different seeds or fractions can share one, and so their picks.
    progress : bool
        Progress bars.
    **options
        Strategy options (as for :func:`keypatch.propose`).

    Returns
    -------
    QuantizeResult
    """
    from tqdm.auto import tqdm

    from keypatch.api import resolve_model
    from keypatch.batch import run_propose
    from keypatch.store import STORE_NAME, ResultStore
    from keypatch.store.record import sha256_file

    t0 = time.perf_counter()
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= float(drop) < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    coder = parse_codec(codec)
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder of images")
    out.mkdir(parents=True, exist_ok=True)
    work = out / WORK if work is None else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    files, labels, classes = _listing(src)
    chosen, reused = _select(src, files, labels, classes, float(fraction), bins, seed, classifier, device, work,
                             progress)
    selected = [src / c["file"] for c in chosen]
    keep = 1.0 - float(drop)
    mae = resolve_model(model, device)
    picks = run_propose(selected, keep, strategy=patches, model=mae, device=device, out_dir=work,
                        batch_size=batch_size, seed=seed, progress=progress, **options)
    with ResultStore(work / STORE_NAME) as store:
        stored = {r.sha256: r for r in store.records(model_id=picks["model_id"], strategy=picks["strategy"],
                                                     ratio=keep, start=picks["start"], options=picks["options"])}
    cfg = mae.config
    p, cols, side = cfg.patch_size, cfg.grid.cols, cfg.image_size
    sizes = {"originals": 0, "reencoded": 0, "payload": 0}
    entries = []
    for f in list(out.glob("shard-*.tar")):
        f.unlink()
    with ShardWriter(out, per_shard) as writer:
        for j, (c, path) in enumerate(tqdm(list(zip(chosen, selected, strict=True)), desc="store", unit="img",
                                           disable=not progress)):
            rec = stored.get(sha256_file(path))  # hashed again: the picks must be those of the bytes packed now
            if rec is None:
                raise RuntimeError(f"{path}: no stored pick (it could not be read by the MAE's loader)")
            rgb = to_rgb8(path, InputNotes(), str(path))  # its notes were said by the proposal run
            pixels = resized_rgb8(rgb, side, InputNotes(), str(path), resize=picks["options"].get("resize", "bicubic"))
            mosaic = pack(patch_pixels(pixels, p)[np.sort(rec.patches)], cols)
            payload = coder.encode(mosaic)
            entry = {"key": f"{j:06d}", "name": c["file"], "label": c["label"],
                     "class": classes[c["label"]] if c["label"] >= 0 else "", "bin": c["bin"],
                     "size": [int(rgb.shape[1]), int(rgb.shape[0])], "sha256": rec.sha256,
                     "patches": list(rec.patches), "loss": rec.loss}
            shard, offset, length = writer.add(entry["key"], coder.extension, payload, entry)
            entries.append({**entry, "shard": shard, "offset": offset, "length": length})
            sizes["originals"] += path.stat().st_size
            sizes["reencoded"] += len(coder.encode(pixels))
            sizes["payload"] += length
    counts = {(classes[c] if c >= 0 else ""): [sum(e["label"] == c for e in entries), labels.count(c)]
              for c in sorted(set(labels))}
    sizes["shards"] = sum(s["bytes"] for s in writer.shards)
    manifest = {
        "source": str(src), "model": picks["model_id"], "image_size": side, "patch_size": p, "grid_cols": cols,
        "strategy": picks["strategy"], "start": picks["start"], "options": picks["options"], "keep": keep,
        "drop": float(drop), "kept_patches": cfg.grid.count(keep), "fraction": float(fraction), "bins": bins,
        "seed": seed, "classifier": classifier, "codec": coder.spec, "classes": classes, "counts": counts,
        "bytes": dict(sizes), "shards": writer.shards, "images": entries,
    }
    sizes["manifest"] = write_manifest(out, manifest).stat().st_size
    return QuantizeResult(out, counts, sizes, picks, reused, time.perf_counter() - t0, manifest)


__all__ = ["MANIFEST", "QuantizeResult", "quantize"]
