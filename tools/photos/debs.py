"""Fetch Debian packages (``apt-get download``) and unpack them (``dpkg-deb -x``) without installing."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


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
        log.info(f"apt-get download {' '.join(missing)}")
        proc = _run(["apt-get", "download", *missing], cwd=cache_dir)
        if proc.returncode != 0 and _MISSING_LISTS.search(proc.stderr + proc.stdout):
            log.info("package lists lack them; running apt-get update")
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
    log.info(f"dpkg-deb -x {deb.name} -> {dest}")
    proc = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb} failed:\n{proc.stderr.strip()}")
    marker.write_text(deb.name + "\n")
    return dest
