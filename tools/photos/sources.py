"""Where the photographs come from: GCompris's resource bundles and three wallpaper packages."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from tools.photos.filtering import IMAGE_EXTENSIONS
from tools.photos.licences import LicenceInfo, credit_from_readmes, parse_upstream_readme
from tools.photos.rcc import RccError, iter_rcc

log = logging.getLogger(__name__)


GCOMPRIS = "gcompris-qt-data"
PLASMA = "plasma-workspace-wallpapers"
MATE = "mate-backgrounds"
LOMIRI = "lomiri-wallpapers-16.04"
PACKAGES: tuple[str, ...] = (GCOMPRIS, PLASMA, MATE, LOMIRI)
WALLPAPER_PACKAGES: frozenset[str] = frozenset({PLASMA, MATE, LOMIRI})
SHORT_NAMES = {GCOMPRIS: "gcompris", PLASMA: "plasma", MATE: "mate", LOMIRI: "lomiri"}

GCOMPRIS_RCC_DIR = "usr/share/gcompris-qt/rcc"
#: GCompris resource bundles that contain photographs.
GCOMPRIS_RCC: tuple[str, ...] = (
    "categorization.rcc",
    "erase.rcc",
    "explore_monuments.rcc",
    "explore_world_animals.rcc",
    "explore_farm_animals.rcc",
    "explore_world_music.rcc",
)
#: Bundles deliberately not read (words, paintings, drawings).
GCOMPRIS_RCC_SKIPPED: tuple[str, ...] = ("lang.rcc", "paintings.rcc", "details.rcc")

#: Wallpapers that are digital artwork, not photographs (checked by eye, Debian 12 versions),
#: keyed by package; the names are the wallpaper folder (Plasma) or the file stem.
NOT_PHOTOGRAPHS: dict[str, frozenset[str]] = {
    PLASMA: frozenset(
        {
            "Altai",
            "Autumn",
            "Canopee",
            "Cascade",
            "Cluster",
            "Elarun",
            "Flow",
            "FlyingKonqui",
            "Honeywave",
            "IceCold",
            "Kay",
            "Kokkini",
            "MilkyWay",
            "Opal",
            "PastelHills",
            "Patak",
            "SafeLanding",
            "Shell",
            "Volna",
        }
    ),
    LOMIRI: frozenset({"umang_by_Abhishek_Mudgal"}),
    MATE: frozenset(),
}


@dataclass
class Candidate:
    """One image found in a package, before the photo rule and the licence are checked."""

    package: str
    source_path: str  # path inside the extracted package (or rcc file + resource path)
    upstream_path: str  # path in the upstream source tree, for licence matching
    name: str  # short name used in the output file name
    data: bytes
    large: bool
    extra: dict[str, str] = field(default_factory=dict)
    credit: LicenceInfo | None = None  # upstream per-image credit, when the package ships one


def iter_gcompris(root: Path) -> Iterator[Candidate]:
    rcc_dir = root / GCOMPRIS_RCC_DIR
    assert not set(GCOMPRIS_RCC) & set(GCOMPRIS_RCC_SKIPPED)
    for rcc_name in GCOMPRIS_RCC:
        rcc_path = rcc_dir / rcc_name
        if not rcc_path.is_file():
            log.warning(f"{rcc_path} not found, skipped")
            continue
        try:
            entries = list(iter_rcc(rcc_path))
        except RccError as exc:
            log.warning(f"cannot read {rcc_path}: {exc}")
            continue
        readmes = {
            str(PurePosixPath(res_path).parent): parse_upstream_readme(data.decode("utf-8", "replace"), res_path)
            for res_path, data in entries
            if PurePosixPath(res_path).name == "README"
        }
        images = [(r, d) for r, d in entries if PurePosixPath(r).suffix.lower() in IMAGE_EXTENSIONS]
        log.info(f"{rcc_name}: {len(images)} image resources, {len(readmes)} credit READMEs")
        for res_path, data in images:
            upstream = res_path.split("/", 1)[1] if res_path.startswith("gcompris/") else res_path
            yield Candidate(
                package=GCOMPRIS,
                source_path=f"{GCOMPRIS_RCC_DIR}/{rcc_name}:{res_path}",
                upstream_path=upstream,
                name=PurePosixPath(res_path).stem,
                data=data,
                large=False,
                credit=credit_from_readmes(readmes, res_path),
            )


_RES_RE = re.compile(r"^(\d+)x(\d+)")


def _image_area(path: Path) -> int:
    m = _RES_RE.match(path.stem)
    if m:
        return int(m[1]) * int(m[2])
    with Image.open(path) as im:
        return im.size[0] * im.size[1]


def _plasma_meta(folder: Path) -> dict[str, str]:
    meta_file = folder / "metadata.json"
    if not meta_file.is_file():
        return {}
    try:
        plugin = json.loads(meta_file.read_text(encoding="utf-8")).get("KPlugin", {})
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    out = {}
    authors = [a.get("Name", "") for a in plugin.get("Authors", []) if isinstance(a, dict)]
    if authors:
        out["upstream_author"] = ", ".join(a for a in authors if a)
    if plugin.get("License"):
        out["upstream_licence"] = str(plugin["License"])
    return out


def iter_wallpapers(package: str, root: Path) -> Iterator[Candidate]:
    files: list[tuple[Path, str, str, dict[str, str]]] = []  # path, upstream path, name, extra
    if package == PLASMA:
        base = root / "usr/share/wallpapers"
        for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
            images = [
                p
                for p in (folder / "contents/images").rglob("*")
                if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
            ]
            if not images:
                continue
            best = max(images, key=lambda p: (_image_area(p), p.suffix.lower() == ".jpg", p.name))
            files.append((best, best.relative_to(base).as_posix(), folder.name, _plasma_meta(folder)))
    if package in (PLASMA, LOMIRI):
        base = root / "usr/share/backgrounds"
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    files.append((p, p.relative_to(base).as_posix(), p.stem, {}))
    if package == MATE:
        base = root / "usr/share/backgrounds/mate"
        for p in sorted((base / "nature").glob("*.jpg")):
            files.append((p, p.relative_to(base).as_posix(), p.stem, {}))
    for path, upstream, name, extra in files:
        yield Candidate(
            package=package,
            source_path=path.relative_to(root).as_posix(),
            upstream_path=upstream,
            name=name,
            data=path.read_bytes(),
            large=True,
            extra=extra,
        )
