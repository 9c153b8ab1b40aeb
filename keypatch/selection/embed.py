"""Image embeddings for dataset-level selection: a pretrained classifier's pooled features."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from keypatch.geometry.files import list_image_files, real_path


def embed_images(files: Sequence[str | Path], classifier="efficientnet-lite0", device: str = "cpu",
                 batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Pooled last-layer features of each image, ``(n, d)`` float32 (see :func:`embed_readable`;
    an unreadable image is an error here)."""
    kept, emb = embed_readable(files, classifier, device, batch_size, progress, skip=False)
    return emb


@torch.no_grad()
def embed_readable(files: Sequence[str | Path], classifier="efficientnet-lite0", device: str = "cpu",
                   batch_size: int = 16, progress: bool = True, skip: bool = True) -> tuple[list[int], np.ndarray]:
    """Pooled last-layer features of the images that can be read: ``(kept, features)``, ``kept`` the
    positions in ``files`` and ``features`` ``(len(kept), d)`` float32.

    Each image is resized whole (bicubic, no crop, as for the MAE) to the classifier's input size
    and normalised its way. With ``skip``, an unreadable image is left out with an
    :class:`~keypatch.geometry.ImageWarning`; without, it is a ValueError.
    """
    from tqdm.auto import tqdm

    from keypatch.classifiers import get_classifier
    from keypatch.geometry import load_images, load_readable
    from keypatch.geometry.image import denormalize

    if classifier == "efficientnet-lite0":
        from keypatch.classifiers import require_dq

        require_dq("dataset selection", None)
    clf = get_classifier(classifier, device=device)
    files = list(files)
    feats, kept = [], []
    with tqdm(total=len(files), desc=f"embedding ({clf.name})", unit="img", disable=not progress) as bar:
        for s in range(0, len(files), batch_size):
            chunk = files[s : s + batch_size]
            if skip:
                ok, x = load_readable(chunk, clf.input_size)  # unreadable: skipped with a warning each
            else:
                ok, x = list(range(len(chunk))), load_images(chunk, clf.input_size)
            kept += [s + i for i in ok]
            if ok:
                feats.append(clf.features(denormalize(x)).float().cpu().numpy())
            bar.update(len(chunk))
    if not kept:
        raise ValueError(f"none of the {len(files)} images could be read")
    return kept, np.concatenate(feats).astype(np.float32)


def _signature(files: Sequence[Path], classifier: str) -> dict:
    return {
        "classifier": classifier,
        "files": [str(real_path(f)) for f in files],
        "sizes": [Path(f).stat().st_size for f in files],
        "mtimes": [int(Path(f).stat().st_mtime) for f in files],
    }


def save_embeddings(path: str | Path, files: Sequence[Path], embeddings: np.ndarray, classifier: str,
                    kept: Sequence[int] | None = None) -> Path:
    """Save ``embeddings`` of ``files`` (or of those at positions ``kept``: the readable ones) with
    what they were computed from (``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = list(range(len(files))) if kept is None else list(kept)
    np.savez(path, embeddings=embeddings, kept=np.asarray(kept, dtype=np.int64),
             signature=json.dumps(_signature(files, classifier)))
    return path


def load_embeddings(path: str | Path, files: Sequence[Path], classifier: str) -> np.ndarray | None:
    """Embeddings saved by :func:`save_embeddings` if they match ``files`` and ``classifier``, else None."""
    found = load_kept_embeddings(path, files, classifier)
    return None if found is None or len(found[0]) != len(files) else found[1]


def load_kept_embeddings(path: str | Path, files: Sequence[Path],
                         classifier: str) -> tuple[list[int], np.ndarray] | None:
    """``(kept, embeddings)`` saved by :func:`save_embeddings` for ``files`` (the positions of the
    files that could be read, and their embeddings), or None if the file does not match."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as z:
        if "signature" not in z or json.loads(str(z["signature"])) != _signature(files, classifier):
            return None
        kept = z["kept"].tolist() if "kept" in z else list(range(len(files)))
        return kept, z["embeddings"]


def embed_paths(paths, classifier="efficientnet-lite0", device: str = "cpu", batch_size: int = 16,
                cache: str | Path | None = None, progress: bool = True) -> tuple[list[Path], np.ndarray]:
    """:func:`~keypatch.geometry.list_image_files` + :func:`embed_readable`: the readable files and
    their embeddings (an unreadable image is skipped with a warning).

    Reuses / writes ``cache`` (an ``.npz``) when given.
    """
    files = list_image_files(paths)
    name = classifier if isinstance(classifier, str) else classifier.name
    if cache is not None:
        found = load_kept_embeddings(cache, files, name)
        if found is not None:
            return [files[i] for i in found[0]], found[1]
    kept, emb = embed_readable(files, classifier, device=device, batch_size=batch_size, progress=progress)
    if cache is not None:
        save_embeddings(cache, files, emb, name, kept)
    return [files[i] for i in kept], emb
