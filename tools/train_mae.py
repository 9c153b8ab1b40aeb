"""``python -m tools.train_mae DATA --out DIR``: train a small MAE on a folder of photos.

Random resized crops (scale 0.2-1) and horizontal flips of the photos, 75% random masking, the
official MAE loss with ``norm_pix_loss`` off, AdamW (betas 0.9/0.95, weight decay 0.05) with linear
warm-up and a cosine schedule. Resumable: a checkpoint is written every ``--save-every`` steps and
picked up on restart. The result is ``OUT/mae.safetensors`` + ``OUT/mae.json`` and a ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from keypatch.experiments.quality import evaluate_quality
from keypatch.geometry import list_image_files, load_images, normalize
from keypatch.reconstructors import ARCHITECTURES, MAE, MAEConfig, save_mae
from keypatch.reconstructors.precision import autocast

logger = logging.getLogger(__name__)


def _load_uint8(path: Path, short_side: int) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        s = short_side / min(im.size)
        if s < 1:
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def random_resized_crop(
    img: torch.Tensor,
    size: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """A random crop of area ``scale`` and aspect ``ratio``, resized to ``size`` (uint8 in, float [0,1] out)."""
    _, h, w = img.shape
    area = h * w
    for _ in range(10):
        a = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(1, generator=gen).item()
        r = math.exp(logr)
        cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = min(h, w), min(h, w)
    y = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    x = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    crop = img[:, y:y + ch, x:x + cw].float()[None] / 255.0
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if torch.rand(1, generator=gen).item() < 0.5:
        out = out.flip(-1)
    return out.clamp(0, 1)


def train(data: Path, out: Path, *, preset: str = "small", steps: int = 3000, batch_size: int = 64,
          lr: float = 1e-3, warmup: int = 150, weight_decay: float = 0.05, mask_ratio: float = 0.75,
          precision: str = "float32", seed: int = 0, save_every: int = 100, eval_every: int = 250,
          val: Path | None = None, threads: int | None = None, max_minutes: float | None = None) -> Path:
    """Train (or resume) an MAE; returns the path of the saved safetensors.

    Parameters
    ----------
    data : Path
        Folder of training photos.
    out : Path
        Run folder (checkpoint, log, final weights).
    preset : str
        Architecture from :data:`keypatch.reconstructors.ARCHITECTURES`.
    steps, batch_size, lr, warmup, weight_decay, mask_ratio : training schedule.
    precision : {"float32", "bfloat16"}
        Autocast precision (bf16 only pays off on CPUs with AVX512-BF16/AMX, or GPUs).
    val : Path, optional
        Folder of held-out photos: quality vs the mean-colour predictor is logged on them.
    max_minutes : float, optional
        Stop (after saving) when this much wall time has passed in this invocation.
    """
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    config: MAEConfig = ARCHITECTURES[preset]
    files = list_image_files(data)
    short = int(config.image_size * 1.15)
    pool = [_load_uint8(p, short) for p in tqdm(files, desc="loading photos", unit="img")]
    val_images = load_images(list_image_files(val), config.image_size) if val else None

    torch.manual_seed(seed)
    model = MAE(config)
    model.reset_parameters(seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "token" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    start = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start = int(state["step"])
        logger.info("resumed from step %d", start)
    (out / "run.json").write_text(json.dumps(dict(
        data=str(data), n_images=len(files), preset=preset, config=config.to_dict(), steps=steps,
        batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay, mask_ratio=mask_ratio,
        precision=precision, seed=seed), indent=2))
    n = config.grid.n
    k = round((1 - mask_ratio) * n)
    log = (out / "log.jsonl").open("a")
    t0 = time.time()
    model.train()

    def save(step: int) -> None:
        tmp = out / "checkpoint.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "step": step}, tmp)
        tmp.replace(ckpt)

    bar = tqdm(range(start, steps), initial=start, total=steps, desc="train-mae", unit="step")
    step = start
    for step in bar:
        lr_now = lr * (step + 1) / warmup if step < warmup else \
            0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for gp in opt.param_groups:
            gp["lr"] = lr_now
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen)
        x = normalize(torch.stack([random_resized_crop(pool[i], config.image_size, gen) for i in idx.tolist()]))
        visible = torch.rand(batch_size, n, generator=gen).argsort(1)[:, :k]
        with autocast(torch.device("cpu"), precision):
            loss = model(x, visible)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr_now, "wall_s": round(time.time() - t0, 1)}
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if val_images is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            model.eval()
            q = evaluate_quality(model, val_images)
            model.train()
            rec.update(val_mae=round(q.mae_loss, 5), val_trivial=round(q.trivial_loss, 5), val_ratio=round(q.ratio, 4))
            tqdm.write(f"step {step + 1}: val masked MSE {q.mae_loss:.4f} vs mean colour {q.trivial_loss:.4f} "
                       f"(ratio {q.ratio:.3f})")
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if (step + 1) % save_every == 0:
            save(step + 1)
        if max_minutes is not None and time.time() - t0 > max_minutes * 60:
            save(step + 1)
            tqdm.write(f"stopping at step {step + 1}: --max-minutes {max_minutes} reached (resume to continue)")
            break
    else:
        save(steps)
    model.eval()
    return save_mae(model, out / "mae.safetensors")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; prints the saved weights' path."""
    p = argparse.ArgumentParser(prog="python -m tools.train_mae", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder of training photos")
    p.add_argument("--out", type=Path, required=True, help="run folder (resumes if a checkpoint is there)")
    p.add_argument("--val", type=Path, help="folder of held-out photos for the quality log")
    p.add_argument("--preset", default="small", choices=sorted(ARCHITECTURES))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    path = train(args.data, args.out, preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, warmup=args.warmup, precision=args.precision, seed=args.seed,
                 save_every=args.save_every, eval_every=args.eval_every, val=args.val,
                 threads=args.threads, max_minutes=args.max_minutes)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
