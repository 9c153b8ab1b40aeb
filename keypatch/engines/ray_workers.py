"""What runs in the Ray engine's worker processes: the decoding tasks and the model actors.

This module imports neither torch nor the rest of keypatch: a decoding task's process loads only
numpy, PIL and :mod:`keypatch.geometry.pixels` (a fraction of a second where torch takes one to two),
and a model actor imports torch and the MAE when it is made (:class:`ProposeActor`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from keypatch.geometry.decode import InputNotes
from keypatch.geometry.pixels import decode_pixels


def hash_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Ray task: ``path`` and the sha256 of each image file's ``bytes`` (what the driver claims by),
    without the bytes."""
    return {"path": batch["path"],
            "sha256": np.array([hashlib.sha256(bytes(b)).hexdigest() for b in batch["bytes"]], dtype=object)}


def decode_batch(batch: dict[str, np.ndarray], size: int, resize: str,
                 wanted: frozenset[tuple[str, str]] | None = None) -> dict[str, np.ndarray]:
    """A Ray task: the images of ``batch["path"]`` (or of ``batch["bytes"]``, the path then only their
    name) decoded, resized and normalised as the local engine does; ``error`` holds the message of
    an image that could not be read (its image is zeros) and ``notes`` the deliberate changes made
    (JSON list of kinds). With ``wanted``, the rows of bytes are hashed and only those whose
    ``(path, sha256)`` it holds are kept (the driver's claims)."""
    if "bytes" in batch:
        digests = [hashlib.sha256(bytes(b)).hexdigest() for b in batch["bytes"]]
        keep = [i for i, d in enumerate(digests) if wanted is None or (str(batch["path"][i]), d) in wanted]
        batch = {"path": batch["path"][keep], "sha256": np.array([digests[i] for i in keep], dtype=object),
                 "bytes": batch["bytes"][keep]}
    images, errors, notes = [], [], []
    for i, path in enumerate(batch["path"]):
        found = InputNotes()
        source = bytes(batch["bytes"][i]) if "bytes" in batch else str(path)
        try:
            images.append(decode_pixels(source, size, found, name=str(path), resize=resize))
            errors.append("")
        except (OSError, ValueError) as exc:
            images.append(np.zeros((3, size, size), dtype=np.float32))
            errors.append(str(exc))  # the driver's report names the file
        notes.append(json.dumps(sorted(found.counts)))
    batch = {k: v for k, v in batch.items() if k != "bytes"}
    return {**batch, "image": np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.float32),
            "error": np.array(errors, dtype=object), "notes": np.array(notes, dtype=object)}


class ProposeActor:
    """A Ray actor: the MAE and the proposer, made once; each call proposes for one batch of images.

    Parameters
    ----------
    model : str or MAE
        A :func:`keypatch.load_mae` spec or a model.
    proposer : Proposer
        The strategy, built by the driver (it pickles with its options).
    ratio, count, seed
        As in :func:`keypatch.api.propose_normalised`.
    threads : int
        torch threads of this actor (its CPUs).
    device : str
        ``"cuda"`` for actors given a GPU, else ``"cpu"``.
    """

    def __init__(self, model: Any, proposer: Any, ratio: float, count: str, seed: int, threads: int,
                 device: str) -> None:
        import torch

        from keypatch.api import resolve_model

        torch.set_num_threads(max(1, int(threads)))
        self.mae = resolve_model(model, device)
        self.proposer, self.ratio, self.count, self.seed = proposer, ratio, count, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from keypatch.api import propose_normalised

        n = len(batch["path"])
        patches, losses = np.array([""] * n, dtype=object), np.array([""] * n, dtype=object)
        evals, seconds = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)
        good = np.array([not e for e in batch["error"]], dtype=bool)
        if good.any():
            x = torch.from_numpy(np.ascontiguousarray(batch["image"][good])).to(self.mae.device)
            results = propose_normalised(x, self.ratio, self.proposer, self.mae, self.seed, self.count)
            for i, res in zip(np.flatnonzero(good), results, strict=True):
                patches[i], losses[i] = json.dumps(res.patches), json.dumps(res.losses)
                evals[i], seconds[i] = res.evaluations, res.seconds
        return {"path": batch["path"], "sha256": batch["sha256"], "error": batch["error"], "notes": batch["notes"],
                "patches": patches, "losses": losses, "evaluations": evals, "seconds": seconds}
