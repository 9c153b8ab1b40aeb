"""The paper's classification experiment: fine-tune a ViT on the kept patches only.

The ViT is the MAE's own encoder (patch embedding, position embeddings, blocks, norm) with a new
linear head on the mean of its output tokens. Both training and evaluation images show the
network only the patches that a strategy kept (KPP or random, same ratio), exactly as the encoder
sees them during MAE pre-training. The data is a folder with one sub-folder per class.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from keypatch.api import propose_batch
from keypatch.geometry import load_readable
from keypatch.proposers import get_proposer
from keypatch.reconstructors.mae import MAE


class PatchViTClassifier(nn.Module):
    """A ViT classifier that sees only given patches; initialised from an MAE encoder."""

    def __init__(self, mae: MAE, n_classes: int) -> None:
        super().__init__()
        self.patch_embed = copy.deepcopy(mae.patch_embed)
        self.cls_token = nn.Parameter(mae.cls_token.detach().clone())
        self.register_buffer("pos_embed", mae.pos_embed.detach().clone())
        self.blocks = copy.deepcopy(mae.blocks)
        self.norm = copy.deepcopy(mae.norm)
        self.head = nn.Linear(mae.config.embed_dim, n_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` from the patches ``visible`` ``(B, k)`` of ``images``."""
        tokens = self.patch_embed(images) + self.pos_embed[:, 1:]
        x = tokens[torch.arange(images.shape[0], device=images.device)[:, None], visible]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 1:].mean(1))


@dataclass
class ClassifyResult:
    """Accuracy of one strategy at one ratio."""

    strategy: str
    ratio: float
    train_accuracy: float
    test_accuracy: float
    n_train: int
    n_test: int


def labelled_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of a folder with one sub-folder per class (sorted class names); see
    :func:`keypatch.geometry.files.class_folders`."""
    from keypatch.geometry.files import class_folders

    found = class_folders(root)
    if found is None or len(found[2]) < 2:
        raise ValueError(f"{root} needs at least two class sub-folders with images")
    return found


def split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded train/test split of ``range(n)``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(n * test_fraction))
    return sorted(perm[n_test:]), sorted(perm[:n_test])


def finetune_and_evaluate(model: MAE, images: torch.Tensor, patches: torch.Tensor, labels: torch.Tensor,
                          train_idx: list[int], test_idx: list[int], n_classes: int, *, epochs: int = 30,
                          lr: float = 5e-4, batch_size: int = 32, seed: int = 0,
                          progress: bool = True) -> tuple[float, float]:
    """Fine-tune a :class:`PatchViTClassifier` on ``train_idx``; (train, test) accuracy."""
    torch.manual_seed(seed)
    clf = PatchViTClassifier(model, n_classes).to(model.device).train()
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    tr = torch.tensor(train_idx)
    for _ in tqdm(range(epochs), desc="fine-tune", unit="epoch", disable=not progress):
        order = tr[torch.randperm(len(tr), generator=gen)]
        for s in range(0, len(order), batch_size):
            b = order[s:s + batch_size]
            x = images[b]
            flip = torch.rand(len(b), generator=gen) < 0.5  # flip image and patch columns together
            if flip.any():
                x = torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)
            vis = patches[b].clone()
            cols = model.grid.cols
            vis[flip] = (vis[flip] // cols) * cols + (cols - 1 - vis[flip] % cols)
            loss = F.cross_entropy(clf(x, vis), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    clf.eval()

    @torch.no_grad()
    def acc(idx: list[int]) -> float:
        i = torch.tensor(idx)
        return (clf(images[i], patches[i]).argmax(1) == labels[i]).float().mean().item()

    return acc(train_idx), acc(test_idx)


def patches_at_ratios(images: torch.Tensor, ratios: list[float], strategy: str, model: MAE, seed: int = 0,
                      batch_size: int = 8, progress: bool = True, **options) -> dict[float, torch.Tensor]:
    """``(B, k)`` key patches of ``images`` for every ratio, from :func:`keypatch.propose_batch`.

    A ``prefix_consistent`` strategy runs once, to the largest ratio, and its answer is cut to each
    smaller ratio (the same as separate runs); any other strategy runs once per ratio.
    """
    prefix = get_proposer(strategy, **options).prefix_consistent
    runs = [max(ratios)] if prefix else sorted(set(ratios))
    out: dict[float, torch.Tensor] = {}
    for r in runs:
        chosen = []
        for s in tqdm(range(0, images.shape[0], batch_size), desc=f"{strategy} patches, r = {r:g}",
                      disable=not progress):
            chosen += [p.patches for p in propose_batch(images[s:s + batch_size], r, strategy, model, seed=seed,
                                                        **options)]
        out[r] = torch.tensor(chosen, device=model.device)
    if prefix:
        out = {r: out[max(ratios)][:, : model.grid.count(r)] for r in ratios}
    return out


def classification_experiment(root: Path, model: MAE, ratios: list[float], strategies: list[str],
                              test_fraction: float = 0.3, epochs: int = 30, seed: int = 0,
                              batch_size: int = 8, progress: bool = True, **options) -> list[ClassifyResult]:
    """Accuracy of fine-tuning on kept patches, for every strategy and ratio.

    Patches come from :func:`patches_at_ratios` (one run to the largest ratio for prefix-consistent
    strategies, one run per ratio for the others).
    """
    files, labels, classes = labelled_folder(root)
    kept, images = load_readable(files, model.config.image_size)  # unreadable images: skipped with a warning
    files, labels = [files[i] for i in kept], [labels[i] for i in kept]
    if len(set(labels)) < 2:
        raise ValueError(f"{root}: fewer than two classes have readable images")
    images = images.to(model.device)
    y = torch.tensor(labels, device=model.device)
    train_idx, test_idx = split(len(files), test_fraction, seed)
    results = []
    for strategy in strategies:
        kept = patches_at_ratios(images, ratios, strategy, model, seed, batch_size, progress, **options)
        for r in ratios:
            tr_acc, te_acc = finetune_and_evaluate(model, images, kept[r], y, train_idx, test_idx,
                                                   len(classes), epochs=epochs, seed=seed, progress=progress)
            results.append(ClassifyResult(strategy, r, tr_acc, te_acc, len(train_idx), len(test_idx)))
    return results


GCOMPRIS_CLASSES = {
    "categorization/resource/images/fishes": "fish",
    "categorization/resource/images/tools": "tools",
    "categorization/resource/images/renewable": "renewable_energy",
    "categorization/resource/images/monuments": "monuments",
    "explore_monuments/": "monuments",
    "erase/resource": "animals",
    "explore_world_animals/": "animals",
    "explore_farm_animals/": "animals",
}
"""Class of a GCompris photo by the activity folder it came from."""


MAX_PHOTO_MANIFEST_BYTES = 256 << 20
"""The largest photo manifest read."""


def labelled_from_manifest(manifest: Path, out: Path) -> dict[str, int]:
    """Build a class-per-folder dataset from the photo manifest of ``python -m tools.photos.prepare``.

    GCompris photos are labelled by their activity folder (:data:`GCOMPRIS_CLASSES`); the rest
    are left out. Files are hard-linked (or copied) into ``out/CLASS/``. Returns the class counts.

    Each ``file`` must name a file inside the manifest's folder (:func:`keypatch.untrusted.inside`),
    or the manifest is refused with a ValueError naming the entry, before anything is linked.
    """
    import os
    import shutil

    from keypatch.untrusted import inside, read_json, refuse

    manifest = Path(manifest)
    data = read_json(manifest, max_bytes=MAX_PHOTO_MANIFEST_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise refuse(manifest, "the file", "is not a photo manifest (an object with an 'images' list)")
    todo = []
    for i, item in enumerate(data["images"]):
        if not isinstance(item, dict) or not isinstance(item.get("source_path"), str):
            raise refuse(manifest, f"images[{i}]", "is not an object with a 'source_path' string")
        label = next((c for key, c in GCOMPRIS_CLASSES.items() if key in item["source_path"]), None)
        if label is not None:
            todo.append((label, inside(manifest.parent, item.get("file"), file=manifest, entry=f"images[{i}].file")))
    counts: dict[str, int] = {}
    for label, src in todo:
        dst = out / label / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        counts[label] = counts.get(label, 0) + 1
    return counts
