"""Licences of the photographs: DEP-5 copyright files, GCompris's upstream credit READMEs, ``LICENCES.md``."""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tools.photos.filtering import IMAGE_EXTENSIONS
from tools.photos.split import basis_kind


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


def credit_from_readmes(readmes: dict[str, list[_ReadmeEntry]], res_path: str) -> LicenceInfo | None:
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


def write_licences_md(path: Path, records: list[dict], versions: dict[str, str]) -> None:
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
    counts = Counter((r["source_package"], r["licence"], basis_kind(r["licence_basis"])) for r in records)
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
