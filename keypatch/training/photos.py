"""Build a folder of real, licence-recorded photographs for training a small Masked Autoencoder.

The photographs come from four Debian packages that are *downloaded and unpacked*, never
installed (``apt-get download`` + ``dpkg-deb -x``):

``gcompris-qt-data``
    Photographs embedded in the Qt resource bundles (``usr/share/gcompris-qt/rcc/*.rcc``,
    read with :mod:`keypatch.training.rcc`) of the activities ``categorization``, ``erase``,
    ``explore_monuments``, ``explore_world_animals``, ``explore_farm_animals`` and
    ``explore_world_music``. The bundles ``lang``, ``paintings`` and ``details`` (words,
    paintings and drawings) and every other activity are not read.
``plasma-workspace-wallpapers``
    One image per wallpaper under ``usr/share/wallpapers/<Name>/contents/images/`` (the one
    with the largest resolution).
``mate-backgrounds``
    ``usr/share/backgrounds/mate/nature/*.jpg`` only.
``lomiri-wallpapers-16.04``
    The ``.jpg``/``.png`` files under ``usr/share/backgrounds/``.

Photo rule
----------
An image is kept only if **all** of these hold:

1. its extension is ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` and PIL decodes it;
2. its short side is at least 200 px;
3. it is not a palette / bilevel image (PIL mode ``P`` or ``1``) and has no transparency
   (an alpha channel whose minimum is below 250);
4. it has a photographic number of tones, measured on a copy whose longer side is 512 px:
   a grey-scale image (mean channel difference below 2 levels) needs at least 64 distinct grey
   levels, a colour image at least 128 distinct colours after quantising each channel to 5 bits
   (flat-colour drawings and icons fall below this);
5. it is not one of the wallpapers listed in :data:`NOT_PHOTOGRAPHS`: digital artwork (vector
   or 3-D renders, paintings) that rule 4 cannot tell from a photograph. That list was made by
   looking at every wallpaper of the Debian 12 (bookworm) versions of the packages.

Licences
--------
GCompris ships, next to its photographs, upstream ``README`` files crediting each image
(author, source URL, licence); they are inside the same ``.rcc`` bundles. When an image is
listed in the nearest such README, that credit is recorded (``licence_basis`` =
``"upstream README (<path>)"``) together with what the Debian copyright file says
(``debian_copyright_licence`` / ``debian_copyright_basis``): the Debian file predates some
image replacements (e.g. its ``fish1.jpg`` paragraph describes a different photograph), so
the README is the more precise source. Otherwise, and for the wallpapers, the Debian file
decides, as follows.

Each package's DEP-5 ``usr/share/doc/<package>/copyright`` is parsed. The image's path
*in the upstream source tree* (for GCompris the resource path without its leading
``gcompris/``, e.g. ``src/activities/erase/resource/calf.webp``; for wallpapers the path below
``usr/share/wallpapers/`` or ``usr/share/backgrounds/[mate/]``) is matched against each
``Files:`` glob; as in DEP-5 the last matching paragraph wins. Because GCompris converted its
images to WebP after writing its copyright file, the extension is ignored when comparing
(``fish1.jpg`` in the copyright file matches ``fish1.webp``). For the wallpaper packages only,
when no specific glob matches, a glob whose file-name part is literal and equal to the image's
file name is accepted (Lomiri lists ``16.04/<name>.jpg`` but installs ``<name>.jpg``).
Failing that, the package's default ``Files: *`` paragraph is used and the manifest says so
(``licence_basis``); an image with no licence at all is left out.

Output
------
``out_dir/train/*.jpg`` and ``out_dir/val/*.jpg`` (RGB, longer side at most ``max_side``,
LANCZOS, JPEG quality 92), ``out_dir/manifest.json`` and ``out_dir/LICENCES.md``.

The split is deterministic: an image goes to ``val`` when
``sha256(f"{seed}:{sha256_of_file_bytes}")`` read as a fraction in [0, 1) is below
``val_fraction``; then, among the large wallpaper photographs, the ones with the lowest such
fractions are moved so that each split holds at least :data:`MIN_LARGE_PER_SPLIT` of them.

Run as ``python -m keypatch.training.photos --out DIR --cache DIR``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps

from keypatch.training.rcc import RccError, iter_rcc

__all__ = [
    "GCOMPRIS_RCC",
    "NOT_PHOTOGRAPHS",
    "PACKAGES",
    "Dep5Paragraph",
    "is_photo",
    "main",
    "parse_dep5",
    "prepare_photos",
    "resolve_licence",
]

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

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
MIN_SHORT_SIDE = 200
MIN_GREY_LEVELS = 64
MIN_COLOURS_15BIT = 128
#: Minimum number of large wallpaper photographs in each of train and val.
MIN_LARGE_PER_SPLIT = 4
JPEG_QUALITY = 92


# --------------------------------------------------------------------------------------
# Fetching and unpacking packages
# --------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _find_deb(cache_dir: Path, package: str) -> Path | None:
    debs = sorted(cache_dir.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


_MISSING_LISTS = re.compile(
    r"Unable to locate package|has no installation candidate|No packages found|"
    r"Can't select candidate version|Package .* is not available",
    re.IGNORECASE,
)


def fetch_debs(packages: Iterable[str], cache_dir: Path) -> dict[str, Path]:
    """Download the ``.deb`` files of ``packages`` into ``cache_dir`` (no installation).

    A package whose ``<name>_*.deb`` is already in ``cache_dir`` is not downloaded again.
    ``apt-get update`` is run (once) only when ``apt-get download`` fails because the
    package lists lack the packages.

    Parameters
    ----------
    packages : iterable of str
        Debian binary package names.
    cache_dir : Path
        Folder receiving the ``.deb`` files.

    Returns
    -------
    dict of str to Path
        Package name to its ``.deb`` path.

    Raises
    ------
    RuntimeError
        If a package cannot be downloaded.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    packages = list(packages)
    missing = [p for p in packages if _find_deb(cache_dir, p) is None]
    if missing:
        print(f"[photos] apt-get download {' '.join(missing)}", flush=True)
        proc = _run(["apt-get", "download", *missing], cwd=cache_dir)
        if proc.returncode != 0 and _MISSING_LISTS.search(proc.stderr + proc.stdout):
            print("[photos] package lists lack them; running apt-get update", flush=True)
            upd = _run(["apt-get", "update"])
            if upd.returncode != 0:
                raise RuntimeError(f"apt-get update failed:\n{upd.stderr.strip()}")
            missing = [p for p in packages if _find_deb(cache_dir, p) is None]
            proc = _run(["apt-get", "download", *missing], cwd=cache_dir)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(missing)} failed:\n{proc.stderr.strip()}")
    out: dict[str, Path] = {}
    for p in packages:
        deb = _find_deb(cache_dir, p)
        if deb is None:
            raise RuntimeError(f"no .deb for {p} in {cache_dir} after apt-get download")
        out[p] = deb
    return out


def deb_version(deb: Path) -> str:
    """Return the ``Version`` field of a ``.deb`` (``dpkg-deb -f``)."""
    proc = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb -f {deb} failed:\n{proc.stderr.strip()}")
    return proc.stdout.strip()


def extract_deb(deb: Path, dest: Path) -> Path:
    """Unpack ``deb`` into ``dest`` with ``dpkg-deb -x``, unless already done for this file.

    A marker file ``dest/.extracted-from`` records the ``.deb`` name; when it matches, the
    extraction is skipped.

    Returns
    -------
    Path
        ``dest``.
    """
    marker = dest / ".extracted-from"
    if marker.is_file() and marker.read_text().strip() == deb.name:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    print(f"[photos] dpkg-deb -x {deb.name} -> {dest}", flush=True)
    proc = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb} failed:\n{proc.stderr.strip()}")
    marker.write_text(deb.name + "\n")
    return dest


# --------------------------------------------------------------------------------------
# DEP-5 copyright files
# --------------------------------------------------------------------------------------


@dataclass
class Dep5Paragraph:
    """One ``Files:`` paragraph of a DEP-5 copyright file.

    Attributes
    ----------
    globs : list of str
        The ``Files:`` patterns.
    licence : str
        First line of ``License:`` (the short licence name).
    copyright : str
        ``Copyright:`` text, continuation lines joined with ``"; "``.
    comment : str
        ``Comment:`` text (often the image's origin), joined the same way.
    """

    globs: list[str]
    licence: str
    copyright: str = ""
    comment: str = ""
    _regexes: list[re.Pattern[str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._regexes = [_glob_to_regex(g) for g in self.globs]

    def match(self, path: str) -> str | None:
        """Return the first glob that matches ``path`` in full, or None."""
        for g, rx in zip(self.globs, self._regexes, strict=True):
            if rx.fullmatch(path):
                return g
        return None


def _glob_to_regex(glob: str) -> re.Pattern[str]:
    """DEP-5 glob: ``*`` matches any run of characters (``/`` included), ``?`` one character."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def parse_dep5(text: str) -> list[Dep5Paragraph]:
    """Parse the ``Files:`` paragraphs of a DEP-5 (machine-readable) copyright file.

    Parameters
    ----------
    text : str
        Content of ``usr/share/doc/<package>/copyright``.

    Returns
    -------
    list of Dep5Paragraph
        In file order (stand-alone ``License:`` paragraphs and the header are dropped).
    """
    paragraphs: list[Dep5Paragraph] = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, list[str]] = {}
        current: str | None = None
        for line in block.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            if line[0] in " \t":
                if current is not None:
                    fields[current].append(line.strip())
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            current = key.strip().lower()
            fields[current] = [value.strip()]
        if "files" not in fields or "license" not in fields:
            continue
        globs = " ".join(fields["files"]).split()
        cont = [v for v in fields.get("copyright", []) if v and v != "."]
        comment = [v for v in fields.get("comment", []) if v and v != "."]
        paragraphs.append(
            Dep5Paragraph(
                globs=globs,
                licence=fields["license"][0],
                copyright="; ".join(cont),
                comment="; ".join(comment),
            )
        )
    return paragraphs


@dataclass(frozen=True)
class LicenceInfo:
    """The licence resolved for one image."""

    licence: str
    copyright: str
    comment: str
    matched_glob: str
    basis: str  # "per-file", "per-file (file name)", "package default (Files: *)", "none"


def _path_variants(path: str) -> list[str]:
    p = PurePosixPath(path)
    variants = [path]
    if p.suffix.lower() in IMAGE_EXTENSIONS + (".svg",):
        stem = str(p.with_suffix(""))
        variants += [stem + ext for ext in (*IMAGE_EXTENSIONS, ".svg") if stem + ext != path]
    return variants


def resolve_licence(paragraphs: list[Dep5Paragraph], source_path: str, match_file_name: bool = False) -> LicenceInfo:
    """Find the licence of a file from a package's DEP-5 paragraphs.

    Parameters
    ----------
    paragraphs : list of Dep5Paragraph
        From :func:`parse_dep5`.
    source_path : str
        The file's path in the upstream source tree (``/``-separated). The extension is
        ignored when comparing (``x.webp`` matches a glob written for ``x.jpg``).
    match_file_name : bool, optional
        Also accept a glob whose last component is literal and equal to the file name when no
        glob matches the whole path (for packages that install files flattened, e.g. Lomiri's
        ``16.04/x.jpg`` installed as ``x.jpg``). Default False.

    Returns
    -------
    LicenceInfo
        ``basis`` tells how it was found: ``"per-file"`` (a glob other than ``*`` matched;
        the last matching paragraph wins, as in DEP-5), ``"per-file (file name)"`` (a glob
        whose last component is literal equals the file name), ``"package default (Files: *)"``
        or ``"none"`` (then ``licence`` is ``"UNKNOWN"``).
    """
    variants = _path_variants(source_path)
    specific: tuple[Dep5Paragraph, str] | None = None
    default: tuple[Dep5Paragraph, str] | None = None
    for para in paragraphs:
        for v in variants:
            g = para.match(v)
            if g is None:
                continue
            if g == "*":
                default = (para, g)
            else:
                specific = (para, g)
            break
    if specific is not None:
        para, g = specific
        return LicenceInfo(para.licence, para.copyright, para.comment, g, "per-file")
    names = {PurePosixPath(v).name for v in variants}
    by_name: tuple[Dep5Paragraph, str] | None = None
    for para in paragraphs if match_file_name else []:
        for g in para.globs:
            last = g.rsplit("/", 1)[-1]
            if "/" in g and not any(ch in last for ch in "*?\\") and last in names:
                by_name = (para, g)
    if by_name is not None:
        para, g = by_name
        return LicenceInfo(para.licence, para.copyright, para.comment, g, "per-file (file name)")
    if default is not None:
        para, g = default
        return LicenceInfo(para.licence, para.copyright, para.comment, g, "package default (Files: *)")
    return LicenceInfo("UNKNOWN", "", "", "", "none")


def _normalise_licence(text: str) -> str:
    t = " ".join(text.split())
    if t.lower() in ("public domain", "public-domain"):
        return "public-domain"
    m = re.fullmatch(r"(?i)(CC-BY(?:-(?:SA|ND|NC))*)[ -]?(\d\.\d)", t)
    if m:
        return f"{m[1].upper()}-{m[2]}"
    m = re.fullmatch(r"(?i)(L?GPL)v?-?(\d(?:\.\d)?)(\+?)", t)
    return f"{m[1].upper()}-{m[2]}{m[3]}" if m else t


@dataclass(frozen=True)
class _ReadmeEntry:
    pattern: str  # file pattern relative to the README's folder, extension removed
    info: LicenceInfo


def parse_upstream_readme(text: str, readme_path: str) -> list[_ReadmeEntry]:
    """Parse a GCompris resource ``README`` crediting the images of its folder.

    These files are blank-line separated paragraphs of ``Copyright:``, ``Source:``,
    ``License:``, ``Comments:`` and ``Files:`` fields whose values may continue on the
    following (unindented) lines, e.g.::

        Copyright: Kurt Kaiser
        License: CC0-1.0
        Source: https://commons.wikimedia.org/wiki/File:American_Bison_9.jpg
        Files:
        bison.webp

    Parameters
    ----------
    text : str
        README content.
    readme_path : str
        Resource path of the README (recorded in the result).

    Returns
    -------
    list of _ReadmeEntry
        One entry per listed file, in file order; ``pattern`` is the listed path relative to
        the README's folder with its extension removed.
    """
    entries: list[_ReadmeEntry] = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, list[str]] = {}
        current: str | None = None
        for line in block.splitlines():
            m = re.match(r"^([A-Za-z][A-Za-z-]*):\s*(.*)$", line)
            if m and not line.startswith(("http:", "https:")):
                current = m[1].lower()
                fields.setdefault(current, []).append(m[2].strip())
            elif current is not None and line.strip():
                fields[current].append(line.strip())
        if "files" not in fields or "license" not in fields:
            continue
        licence = _normalise_licence(" ".join(v for v in fields["license"] if v))
        holder = "; ".join(v for v in fields.get("copyright", []) if v)
        notes = [f"source: {' '.join(v for v in fields['source'] if v)}"] if fields.get("source") else []
        comments = fields.get("comments", []) + fields.get("comment", [])
        if any(comments):
            notes.append(f"upstream note: {' '.join(v for v in comments if v)}")
        for item in " ".join(fields["files"]).split():
            stem = str(PurePosixPath(item).with_suffix("")) if "." in item else item
            info = LicenceInfo(licence, holder, "; ".join(notes), item, f"upstream README ({readme_path})")
            entries.append(_ReadmeEntry(stem, info))
    return entries


def _credit_from_readmes(readmes: dict[str, list[_ReadmeEntry]], res_path: str) -> LicenceInfo | None:
    """Credit of ``res_path`` from the nearest README above it that lists it (last entry wins)."""
    for folder in sorted(readmes, key=len, reverse=True):
        if not res_path.startswith(folder + "/"):
            continue
        rel = res_path[len(folder) + 1 :]
        rel_stem = str(PurePosixPath(rel).with_suffix(""))
        found = None
        for entry in readmes[folder]:
            if fnmatch.fnmatchcase(rel_stem, entry.pattern):
                found = entry.info
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------
# Photo test and image IO
# --------------------------------------------------------------------------------------


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


def _to_output(im: Image.Image, max_side: int) -> Image.Image:
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


@dataclass
class _Candidate:
    package: str
    source_path: str  # path inside the extracted package (or rcc file + resource path)
    upstream_path: str  # path in the upstream source tree, for licence matching
    name: str  # short name used in the output file name
    data: bytes
    large: bool
    extra: dict[str, str] = field(default_factory=dict)
    credit: LicenceInfo | None = None  # upstream per-image credit, when the package ships one


def _iter_gcompris(root: Path) -> Iterator[_Candidate]:
    rcc_dir = root / GCOMPRIS_RCC_DIR
    assert not set(GCOMPRIS_RCC) & set(GCOMPRIS_RCC_SKIPPED)
    for rcc_name in GCOMPRIS_RCC:
        rcc_path = rcc_dir / rcc_name
        if not rcc_path.is_file():
            print(f"[photos] warning: {rcc_path} not found, skipped", flush=True)
            continue
        try:
            entries = list(iter_rcc(rcc_path))
        except RccError as exc:
            print(f"[photos] warning: cannot read {rcc_path}: {exc}", flush=True)
            continue
        readmes = {
            str(PurePosixPath(res_path).parent): parse_upstream_readme(data.decode("utf-8", "replace"), res_path)
            for res_path, data in entries
            if PurePosixPath(res_path).name == "README"
        }
        images = [(r, d) for r, d in entries if PurePosixPath(r).suffix.lower() in IMAGE_EXTENSIONS]
        print(f"[photos]   {rcc_name}: {len(images)} image resources, {len(readmes)} credit READMEs", flush=True)
        for res_path, data in images:
            upstream = res_path.split("/", 1)[1] if res_path.startswith("gcompris/") else res_path
            yield _Candidate(
                package=GCOMPRIS,
                source_path=f"{GCOMPRIS_RCC_DIR}/{rcc_name}:{res_path}",
                upstream_path=upstream,
                name=PurePosixPath(res_path).stem,
                data=data,
                large=False,
                credit=_credit_from_readmes(readmes, res_path),
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


def _iter_wallpapers(package: str, root: Path) -> Iterator[_Candidate]:
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
        yield _Candidate(
            package=package,
            source_path=path.relative_to(root).as_posix(),
            upstream_path=upstream,
            name=name,
            data=path.read_bytes(),
            large=True,
            extra=extra,
        )


def _basis_kind(basis: str) -> str:
    return "upstream README" if basis.startswith("upstream README") else basis


def _split_fraction(sha: str, seed: int) -> float:
    key = hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()
    return int(key[:13], 16) / float(16**13)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "img"


def _write_licences_md(path: Path, records: list[dict], versions: dict[str, str]) -> None:
    lines = [
        "# Licences of the training photographs",
        "",
        "Every image below was taken from a Debian package (Debian's archive, downloaded with",
        "`apt-get download`, unpacked with `dpkg-deb -x`), converted to RGB JPEG and downscaled.",
        "Licences come from the upstream per-image credit README shipped inside GCompris's resource",
        "bundles when there is one, else from the package's `/usr/share/doc/<package>/copyright`",
        "(DEP-5; 'package default (Files: *)' means the file has no more specific paragraph).",
        "Full licence texts: `/usr/share/common-licenses/` on Debian, or the package's copyright file.",
        "",
        "| Package | Version |",
        "|---|---|",
    ]
    lines += [f"| {p} | {v} |" for p, v in sorted(versions.items())]
    counts = Counter((r["source_package"], r["licence"], _basis_kind(r["licence_basis"])) for r in records)
    lines += ["", "| Package | Licence | Basis | Images |", "|---|---|---|---|"]
    lines += [f"| {p} | {lic} | {b} | {n} |" for (p, lic, b), n in sorted(counts.items())]
    lines += [
        "",
        "| File | Split | Package | Source path | Licence | Copyright | Note |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    for r in records:
        note = r["licence_basis"]
        if r.get("comment"):
            note += f"; {r['comment']}"
        if r.get("upstream_author"):
            note += f"; upstream author: {r['upstream_author']}"
        if r.get("upstream_licence"):
            note += f"; upstream metadata licence: {r['upstream_licence']}"
        if r.get("debian_copyright_licence"):
            note += f"; Debian copyright file: {r['debian_copyright_licence']} ({r['debian_copyright_basis']})"
        lines.append(
            f"| {cell(r['file'])} | {r['split']} | {r['source_package']} | {cell(r['source_path'])} "
            f"| {cell(r['licence'])} | {cell(r['copyright'])} | {cell(note)} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------------------


def prepare_photos(
    out_dir: Path,
    cache_dir: Path,
    val_fraction: float = 0.1,
    max_side: int = 640,
    seed: int = 0,
) -> dict:
    """Download, filter, licence-tag, downscale and split the photographs.

    See the module docstring for the sources, the photo rule, the licence rule and the
    split rule.

    Parameters
    ----------
    out_dir : Path
        Output folder; ``train/`` and ``val/`` are emptied of ``*.jpg`` and refilled, and
        ``manifest.json`` and ``LICENCES.md`` are rewritten.
    cache_dir : Path
        Holds the ``.deb`` files and ``extract/<package>/`` trees; reused between runs.
    val_fraction : float, optional
        Expected fraction of images held out for validation, in [0, 1). Default 0.1.
    max_side : int, optional
        Longer side of the saved images is at most this (LANCZOS). Default 640.
    seed : int, optional
        Salt of the hash-based split. Default 0.

    Returns
    -------
    dict
        The summary also stored under ``"summary"`` in ``manifest.json``: counts per split,
        per package and split, per licence, rejections per reason, package versions.

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
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir)

    debs = fetch_debs(PACKAGES, cache_dir)
    versions = {p: deb_version(d) for p, d in debs.items()}
    roots = {p: extract_deb(d, cache_dir / "extract" / p) for p, d in debs.items()}
    dep5 = {}
    for p, root in roots.items():
        cfile = root / "usr/share/doc" / p / "copyright"
        dep5[p] = parse_dep5(cfile.read_text(encoding="utf-8", errors="replace")) if cfile.is_file() else []
        if not dep5[p]:
            print(f"[photos] warning: no DEP-5 paragraphs in {cfile}", flush=True)

    def candidates() -> Iterator[_Candidate]:
        print(f"[photos] reading {GCOMPRIS} resource bundles", flush=True)
        yield from _iter_gcompris(roots[GCOMPRIS])
        for p in (PLASMA, MATE, LOMIRI):
            print(f"[photos] reading {p}", flush=True)
            yield from _iter_wallpapers(p, roots[p])

    kept: list[tuple[_Candidate, str, LicenceInfo, Image.Image, tuple[int, int]]] = []
    seen: set[str] = set()
    rejected: Counter[str] = Counter()
    rejected_items: list[dict[str, str]] = []
    for cand in candidates():
        sha = hashlib.sha256(cand.data).hexdigest()
        if sha in seen:
            rejected["duplicate (sha256)"] += 1
            continue
        seen.add(sha)
        reason = ""
        if cand.name in NOT_PHOTOGRAPHS.get(cand.package, frozenset()):
            reason = "artwork (curated list)"
        else:
            try:
                im = Image.open(io.BytesIO(cand.data))
                im.load()
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip"
                reason = f"does not decode ({type(exc).__name__})"
            else:
                ok, why = is_photo(im)
                reason = "" if ok else why
        lic = None
        if not reason:
            lic = resolve_licence(
                dep5[cand.package], cand.upstream_path, match_file_name=cand.package in WALLPAPER_PACKAGES
            )
            if cand.credit is not None:
                cand.extra["debian_copyright_licence"] = lic.licence
                cand.extra["debian_copyright_basis"] = lic.basis
                lic = cand.credit
            if lic.basis == "none":
                reason = "no licence found"
        if reason:
            key = re.sub(r"\d+", "N", reason)
            rejected[key] += 1
            rejected_items.append({"source_package": cand.package, "source_path": cand.source_path, "reason": reason})
            continue
        assert lic is not None
        kept.append((cand, sha, lic, _to_output(im, max_side), im.size))
        cand.data = b""  # the downscaled copy is all that is needed from here on
        if len(kept) % 50 == 0:
            print(f"[photos]   {len(kept)} photos accepted so far", flush=True)

    # ---- split -------------------------------------------------------------------------
    frac = {sha: _split_fraction(sha, seed) for _, sha, _, _, _ in kept}
    split = {sha: ("val" if frac[sha] < val_fraction else "train") for sha in frac}
    if val_fraction > 0:
        large = sorted((frac[sha], sha) for c, sha, _, _, _ in kept if c.large)
        need = min(MIN_LARGE_PER_SPLIT, len(large) // 2)
        in_val = [s for _, s in large if split[s] == "val"]
        for _, s in large:  # lowest fractions first: closest to the val side
            if len(in_val) >= need:
                break
            if split[s] == "train":
                split[s] = "val"
                in_val.append(s)
        in_train = [s for _, s in large if split[s] == "train"]
        for _, s in reversed(large):
            if len(in_train) >= need:
                break
            if split[s] == "val":
                split[s] = "train"
                in_train.append(s)

    # ---- write -------------------------------------------------------------------------
    for sub in ("train", "val"):
        d = out_dir / sub
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.jpg"):
            old.unlink()
    records: list[dict] = []
    kept.sort(key=lambda t: (PACKAGES.index(t[0].package), t[0].source_path))
    for i, (cand, sha, lic, out, orig_size) in enumerate(kept, 1):
        fname = f"{SHORT_NAMES[cand.package]}_{_safe_name(cand.name)}_{sha[:8]}.jpg"
        rel = f"{split[sha]}/{fname}"
        out.save(out_dir / rel, "JPEG", quality=JPEG_QUALITY)
        rec = {
            "file": rel,
            "split": split[sha],
            "source_package": cand.package,
            "source_version": versions[cand.package],
            "source_path": cand.source_path,
            "licence": lic.licence,
            "licence_basis": lic.basis,
            "licence_glob": lic.matched_glob,
            "copyright": lic.copyright,
            "comment": lic.comment,
            "width": out.size[0],
            "height": out.size[1],
            "original_width": orig_size[0],
            "original_height": orig_size[1],
            "sha256": sha,
            **cand.extra,
        }
        records.append(rec)
        if i % 50 == 0 or i == len(kept):
            print(f"[photos]   wrote {i}/{len(kept)}", flush=True)

    per_pkg: dict[str, dict[str, int]] = {}
    for r in records:
        d = per_pkg.setdefault(r["source_package"], {"train": 0, "val": 0, "total": 0})
        d[r["split"]] += 1
        d["total"] += 1
    summary = {
        "total": len(records),
        "train": sum(r["split"] == "train" for r in records),
        "val": sum(r["split"] == "val" for r in records),
        "large_wallpapers": {
            "train": sum(r["split"] == "train" and r["source_package"] in WALLPAPER_PACKAGES for r in records),
            "val": sum(r["split"] == "val" and r["source_package"] in WALLPAPER_PACKAGES for r in records),
        },
        "per_package": per_pkg,
        "per_licence": dict(sorted(Counter(r["licence"] for r in records).items())),
        "licence_basis": dict(sorted(Counter(_basis_kind(r["licence_basis"]) for r in records).items())),
        "rejected": dict(sorted(rejected.items())),
        "package_versions": versions,
        "params": {
            "val_fraction": val_fraction,
            "max_side": max_side,
            "seed": seed,
            "jpeg_quality": JPEG_QUALITY,
        },
    }
    manifest = {"summary": summary, "images": records, "rejected": rejected_items}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _write_licences_md(out_dir / "LICENCES.md", records, versions)
    print(
        f"[photos] done: {summary['total']} photos ({summary['train']} train, {summary['val']} val) in {out_dir}",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m keypatch.training.photos --out DIR --cache DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m keypatch.training.photos",
        description="Build a licence-recorded folder of photographs from Debian packages "
        "(downloaded and unpacked, not installed) for MAE training.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/, val/, manifest)")
    parser.add_argument("--cache", type=Path, required=True, help="folder for .deb files and extractions")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction (default 0.1)")
    parser.add_argument("--max-side", type=int, default=640, help="longest side in pixels (default 640)")
    parser.add_argument("--seed", type=int, default=0, help="salt of the hash split (default 0)")
    args = parser.parse_args(argv)
    summary = prepare_photos(args.out, args.cache, args.val_fraction, args.max_side, args.seed)
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
