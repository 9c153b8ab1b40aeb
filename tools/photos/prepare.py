"""``python -m tools.photos.prepare --out DIR --cache DIR``: build the training photo folder.

Downloads, filters, licence-tags, downscales and splits the photographs; see :mod:`tools.photos`
for the sources, the photo rule, the licence rule and the split rule.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from tools.photos.debs import deb_version, extract_deb, fetch_debs
from tools.photos.filtering import is_photo, to_output
from tools.photos.licences import Dep5Paragraph, LicenceInfo, parse_dep5, resolve_licence, write_licences_md
from tools.photos.sources import (
    GCOMPRIS,
    LOMIRI,
    MATE,
    NOT_PHOTOGRAPHS,
    PACKAGES,
    PLASMA,
    SHORT_NAMES,
    WALLPAPER_PACKAGES,
    Candidate,
    iter_gcompris,
    iter_wallpapers,
)
from tools.photos.split import assign_splits, basis_kind, safe_name, split_fraction

log = logging.getLogger(__name__)

JPEG_QUALITY = 92


@dataclass
class Kept:
    """A photograph that passed the rule: its candidate, hash, licence, output image and original size."""

    cand: Candidate
    sha: str
    licence: LicenceInfo
    image: Image.Image
    original_size: tuple[int, int]


def unpack_packages(cache_dir: Path) -> tuple[dict[str, Path], dict[str, str], dict[str, list[Dep5Paragraph]]]:
    """Fetch and unpack :data:`PACKAGES`: ``(roots, versions, DEP-5 paragraphs)`` per package."""
    debs = fetch_debs(PACKAGES, cache_dir)
    versions = {p: deb_version(d) for p, d in debs.items()}
    roots = {p: extract_deb(d, cache_dir / "extract" / p) for p, d in debs.items()}
    dep5 = {}
    for p, root in roots.items():
        cfile = root / "usr/share/doc" / p / "copyright"
        dep5[p] = parse_dep5(cfile.read_text(encoding="utf-8", errors="replace")) if cfile.is_file() else []
        if not dep5[p]:
            log.warning("no DEP-5 paragraphs in %s", cfile)
    return roots, versions, dep5


def candidates(roots: dict[str, Path]) -> Iterator[Candidate]:
    """Every image of the four packages, GCompris first."""
    log.info("reading %s resource bundles", GCOMPRIS)
    yield from iter_gcompris(roots[GCOMPRIS])
    for p in (PLASMA, MATE, LOMIRI):
        log.info("reading %s", p)
        yield from iter_wallpapers(p, roots[p])


def verdict(cand: Candidate,
            dep5: dict[str, list[Dep5Paragraph]]) -> tuple[str, Image.Image | None, LicenceInfo | None]:
    """``(reason, image, licence)``: ``reason`` is empty for a kept photograph."""
    if cand.name in NOT_PHOTOGRAPHS.get(cand.package, frozenset()):
        return "artwork (curated list)", None, None
    try:
        im = Image.open(io.BytesIO(cand.data))
        im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip"
        return f"does not decode ({type(exc).__name__})", None, None
    ok, why = is_photo(im)
    if not ok:
        return why, None, None
    lic = resolve_licence(dep5[cand.package], cand.upstream_path, match_file_name=cand.package in WALLPAPER_PACKAGES)
    if cand.credit is not None:
        cand.extra["debian_copyright_licence"] = lic.licence
        cand.extra["debian_copyright_basis"] = lic.basis
        lic = cand.credit
    if lic.basis == "none":
        return "no licence found", None, None
    return "", im, lic


def select_photos(roots: dict[str, Path], dep5: dict[str, list[Dep5Paragraph]],
                  max_side: int) -> tuple[list[Kept], Counter[str], list[dict[str, str]]]:
    """Apply the photo and licence rules to every candidate (duplicates by sha256 dropped)."""
    kept: list[Kept] = []
    seen: set[str] = set()
    rejected: Counter[str] = Counter()
    rejected_items: list[dict[str, str]] = []
    for cand in tqdm(candidates(roots), desc="photos", unit=" images", leave=False):
        sha = hashlib.sha256(cand.data).hexdigest()
        if sha in seen:
            rejected["duplicate (sha256)"] += 1
            continue
        seen.add(sha)
        reason, im, lic = verdict(cand, dep5)
        if reason:
            rejected[re.sub(r"\d+", "N", reason)] += 1
            rejected_items.append({"source_package": cand.package, "source_path": cand.source_path, "reason": reason})
            continue
        kept.append(Kept(cand, sha, lic, to_output(im, max_side), im.size))
        cand.data = b""  # the downscaled copy is all that is needed from here on
    return kept, rejected, rejected_items


def write_photos(out_dir: Path, kept: list[Kept], split: dict[str, str], versions: dict[str, str]) -> list[dict]:
    """Save the photographs into ``train/`` and ``val/`` (emptied of ``*.jpg`` first); their records."""
    for sub in ("train", "val"):
        d = out_dir / sub
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.jpg"):
            old.unlink()
    records: list[dict] = []
    kept = sorted(kept, key=lambda k: (PACKAGES.index(k.cand.package), k.cand.source_path))
    for k in tqdm(kept, desc="writing", leave=False):
        c, lic = k.cand, k.licence
        rel = f"{split[k.sha]}/{SHORT_NAMES[c.package]}_{safe_name(c.name)}_{k.sha[:8]}.jpg"
        k.image.save(out_dir / rel, "JPEG", quality=JPEG_QUALITY)
        records.append({
            "file": rel, "split": split[k.sha], "source_package": c.package, "source_version": versions[c.package],
            "source_path": c.source_path, "licence": lic.licence, "licence_basis": lic.basis,
            "licence_glob": lic.matched_glob, "copyright": lic.copyright, "comment": lic.comment,
            "width": k.image.size[0], "height": k.image.size[1], "original_width": k.original_size[0],
            "original_height": k.original_size[1], "sha256": k.sha, **c.extra,
        })
    return records


def summarise(records: list[dict], rejected: Counter[str], versions: dict[str, str], params: dict) -> dict:
    """Counts per split, per package and split, per licence and basis, rejections per reason."""
    per_pkg: dict[str, dict[str, int]] = {}
    for r in records:
        d = per_pkg.setdefault(r["source_package"], {"train": 0, "val": 0, "total": 0})
        d[r["split"]] += 1
        d["total"] += 1

    def count(split: str, wallpapers: bool = False) -> int:
        return sum(r["split"] == split and (not wallpapers or r["source_package"] in WALLPAPER_PACKAGES)
                   for r in records)

    return {
        "total": len(records), "train": count("train"), "val": count("val"),
        "large_wallpapers": {"train": count("train", True), "val": count("val", True)},
        "per_package": per_pkg,
        "per_licence": dict(sorted(Counter(r["licence"] for r in records).items())),
        "licence_basis": dict(sorted(Counter(basis_kind(r["licence_basis"]) for r in records).items())),
        "rejected": dict(sorted(rejected.items())),
        "package_versions": versions,
        "params": {**params, "jpeg_quality": JPEG_QUALITY},
    }


def prepare_photos(out_dir: Path, cache_dir: Path, val_fraction: float = 0.1, max_side: int = 640,
                   seed: int = 0) -> dict:
    """Download, filter, licence-tag, downscale and split the photographs.

    Parameters
    ----------
    out_dir : Path
        Output folder; ``train/`` and ``val/`` are emptied of ``*.jpg`` and refilled, and
        ``manifest.json`` and ``LICENCES.md`` are rewritten.
    cache_dir : Path
        Holds the ``.deb`` files and ``extract/<package>/`` trees; reused between runs.
    val_fraction : float
        Expected fraction of images held out for validation, in [0, 1).
    max_side : int
        Longer side of the saved images is at most this (LANCZOS).
    seed : int
        Salt of the hash-based split.

    Returns
    -------
    dict
        The summary, also stored under ``"summary"`` in ``manifest.json``.

    Raises
    ------
    RuntimeError
        If a package cannot be downloaded or unpacked.
    ValueError
        If ``val_fraction`` or ``max_side`` is out of range.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_side < 16:
        raise ValueError(f"max_side must be >= 16, got {max_side}")
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    roots, versions, dep5 = unpack_packages(cache_dir)
    kept, rejected, rejected_items = select_photos(roots, dep5, max_side)
    fractions = {k.sha: split_fraction(k.sha, seed) for k in kept}
    split = assign_splits(fractions, {k.sha for k in kept if k.cand.large}, val_fraction)
    records = write_photos(out_dir, kept, split, versions)
    params = {"val_fraction": val_fraction, "max_side": max_side, "seed": seed}
    summary = summarise(records, rejected, versions, params)
    manifest = {"summary": summary, "images": records, "rejected": rejected_items}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    write_licences_md(out_dir / "LICENCES.md", records, versions)
    log.info("done: %d photos (%d train, %d val) in %s", summary["total"], summary["train"], summary["val"], out_dir)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints the summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.photos.prepare",
        description="Build a licence-recorded folder of photographs from Debian packages "
        "(downloaded and unpacked, not installed) for MAE training.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/, val/, manifest.json)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for .deb files and their extraction")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction (default 0.1)")
    parser.add_argument("--max-side", type=int, default=640, help="longest side in pixels (default 640)")
    parser.add_argument("--seed", type=int, default=0, help="salt of the hash split (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    summary = prepare_photos(args.out, args.cache, args.val_fraction, args.max_side, args.seed)
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
