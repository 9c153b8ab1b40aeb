"""Image embeddings for dataset-level selection: a pretrained classifier's pooled features."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from keypatch.geometry.files import list_image_files


@torch.no_grad()
def embed_images(files: Sequence[str | Path], classifier="efficientnet-lite0", device: str = "cpu",
                 batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Pooled last-layer features of each image, ``(n, d)`` float32.

    Each image is resized whole (bicubic, no crop, as for the MAE) to the classifier's input size
    and normalised its way.
    """
    from tqdm.auto import tqdm

    from keypatch.classifiers import get_classifier
    from keypatch.geometry import load_images
    from keypatch.geometry.image import denormalize

    if classifier == "efficientnet-lite0":
        from keypatch.classifiers import require_dq

        require_dq("dataset selection", None)
    clf = get_classifier(classifier, device=device)
    files = list(files)
    feats = []
    with tqdm(total=len(files), desc=f"embedding ({clf.name})", unit="img", disable=not progress) as bar:
        for s in range(0, len(files), batch_size):
            chunk = files[s : s + batch_size]
            rgb = denormalize(load_images(chunk, clf.input_size))
            feats.append(clf.features(rgb).float().cpu().numpy())
            bar.update(len(chunk))
    return np.concatenate(feats).astype(np.float32)


def _signature(files: Sequence[Path], classifier: str) -> dict:
    return {
        "classifier": classifier,
        "files": [str(Path(f).resolve()) for f in files],
        "sizes": [Path(f).stat().st_size for f in files],
        "mtimes": [int(Path(f).stat().st_mtime) for f in files],
    }


def save_embeddings(path: str | Path, files: Sequence[Path], embeddings: np.ndarray, classifier: str) -> Path:
    """Save ``embeddings`` with what they were computed from (``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, embeddings=embeddings, signature=json.dumps(_signature(files, classifier)))
    return path


def load_embeddings(path: str | Path, files: Sequence[Path], classifier: str) -> np.ndarray | None:
    """Embeddings saved by :func:`save_embeddings` if they match ``files`` and ``classifier``, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as z:
        if "signature" not in z or json.loads(str(z["signature"])) != _signature(files, classifier):
            return None
        return z["embeddings"]


def embed_paths(paths, classifier="efficientnet-lite0", device: str = "cpu", batch_size: int = 16,
                cache: str | Path | None = None, progress: bool = True) -> tuple[list[Path], np.ndarray]:
    """:func:`~keypatch.geometry.list_image_files` + :func:`embed_images`.

    Reuses / writes ``cache`` (an ``.npz``) when given.
    """
    files = list_image_files(paths)
    name = classifier if isinstance(classifier, str) else classifier.name
    if cache is not None:
        emb = load_embeddings(cache, files, name)
        if emb is not None:
            return files, emb
    emb = embed_images(files, classifier, device=device, batch_size=batch_size, progress=progress)
    if cache is not None:
        save_embeddings(cache, files, emb, name)
    return files, emb
