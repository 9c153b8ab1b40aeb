"""Fit the ``ranked`` strategy's patch ranker to a model's exact greedy steps.

1. Exact greedy (from the central patch, up to ``--ratio``) on ``--photos`` photos of a folder,
   recording at every step the error map and every candidate's ``L`` (cached under ``--cache``;
   about 16 s per photo at r = 0.25 on the default model, 2 CPU threads).
2. A :class:`~keypatch.proposers.ranked.PatchRanker` trained on all but the last ``--held-out``
   photos to put the best candidates first: cross-entropy against ``softmax(-(L_c - L_best) /
   (tau L_best))`` over the remaining candidates, the grid's flips and transposes as augmentation;
   then (``--own-steps``) refitted with the steps the ranker itself takes when it screens, every
   candidate of those scored too (DAgger).
3. On the held-out photos, for the top ``m`` of the error alone and of the ranker: how often exact
   greedy's pick is among them (hit) and how much higher the best of them is (regret, mean over
   steps). The weights go to ``--out``.

Run from the repository root (the shipped weights)::

    python -m tools.ranker.fit data/photos/train --out keypatch/weights/ranker_default.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import torch

import keypatch
from keypatch.geometry.image import load_images
from keypatch.objective import Objective
from keypatch.proposers.ranked import PatchRanker, Ranking, greedy_steps, ranker_inputs, save_ranker

SUFFIXES = (".jpg", ".jpeg", ".png")


def collect(files: list[Path], model, k: int, cache: Path, model_name: str,
            policy: PatchRanker | None = None, tag: str = "greedy") -> list[dict]:
    """Trajectories of ``files`` in groups of 8 (:func:`~keypatch.proposers.ranked.greedy_steps`,
    screened by ``policy`` when given), each group cached by its names, the model, ``k`` and ``tag``."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(0, len(files), 8):
        group = files[i : i + 8]
        name = model_name.replace("/", "_").replace(":", "_")
        key = cache / f"{name}_k{k}_{tag}_{group[0].stem}_{len(group)}.pt"
        if key.is_file():
            out.append(torch.load(key, weights_only=True))
            continue
        start = time.perf_counter()
        obj = Objective(model, load_images([str(p) for p in group]))
        t = greedy_steps(obj, k, None if policy is None else Ranking(obj, policy))
        torch.save(t, key)
        out.append(t)
        print(f"  {tag} trajectories {i + len(group)}/{len(files)} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return out


def weights_hash(net: PatchRanker) -> str:
    """A short digest of ``net``'s weights (names the cached trajectories it produced)."""
    digest = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def samples(trajs: list[dict], rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step of every trajectory: ranker inputs, candidates' ``L`` and the remaining mask."""
    xs, ss, rs = [], [], []
    for d in trajs:
        b, steps, n = d["err"].shape
        for t in range(steps):
            chosen = torch.zeros(b, n, dtype=torch.bool).scatter_(1, d["chosen"][:, : t + 1], True)
            err = d["err"][:, t]
            xs.append(ranker_inputs(d["targets"], err, d["err"][:, t - 1] if t else err, chosen, rows, cols))
            ss.append(d["scores"][:, t])
            rs.append(~chosen)
    return torch.cat(xs), torch.cat(ss), torch.cat(rs)


# channel orders after a flip of the columns, of the rows, and a transpose (right/down/left/up neighbours)
FLIPS = ([0, 3, 2, 1, 4], [0, 1, 4, 3, 2], [0, 2, 1, 4, 3])


def train(x: torch.Tensor, s: torch.Tensor, rem: torch.Tensor, rows: int, cols: int, *, tau: float,
          epochs: int, seed: int) -> PatchRanker:
    """A ranker trained on ``x`` to put the candidates with the lowest ``s`` first."""
    torch.manual_seed(seed)
    net = PatchRanker()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-5)
    best = s.amin(1, keepdim=True)
    target = torch.softmax((-(s - best) / (tau * best)).masked_fill(~rem, -math.inf), 1)
    rest = list(range(5, x.shape[1]))
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            xb, tb, rb = x[idx], target[idx].view(-1, 1, rows, cols), rem[idx].view(-1, 1, rows, cols)
            for dims, order in zip(((3,), (2,), None), FLIPS, strict=True):
                if torch.rand(()) < 0.5:
                    if dims is None:
                        xb, tb, rb = xb.transpose(2, 3), tb.transpose(2, 3), rb.transpose(2, 3)
                    else:
                        xb, tb, rb = xb.flip(dims), tb.flip(dims), rb.flip(dims)
                    xb = xb[:, order + rest]
            logits = net(xb).masked_fill(~rb.flatten(1), -1e9)
            loss = -(tb.flatten(1) * torch.log_softmax(logits, 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def screen_table(signals: dict[str, torch.Tensor], s: torch.Tensor, rem: torch.Tensor, sizes=(2, 4, 8, 16)) -> None:
    """Hit rate and mean regret of each signal's top ``m`` (larger signal first)."""
    best = s.amin(1)
    print("| signal | " + " | ".join(f"m = {m}: hit, regret" for m in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name, sig in signals.items():
        order = torch.sort(-sig.masked_fill(~rem, -math.inf), dim=1, stable=True).indices
        cells = []
        for m in sizes:
            got = s.gather(1, order[:, :m]).amin(1)
            cells.append(f"{(got == best).float().mean():.0%}, {(got / best - 1).mean():+.2%}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="training photos")
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=48, help="photos taken evenly from the sorted folder")
    ap.add_argument("--held-out", type=int, default=8, help="last photos kept out of training, for the table")
    ap.add_argument("--ratio", type=float, default=0.25, help="greedy's steps up to this ratio")
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--own-steps", type=int, default=1,
                    help="rounds of refitting on the ranker's own screened steps (DAgger), each scored exhaustively")
    ap.add_argument("--cache", type=Path, default=Path("data/ranker"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in SUFFIXES)
    files = files[:: max(1, len(files) // args.photos)][: args.photos]
    model = keypatch.load_mae(args.model)
    rows, cols = model.grid.rows, model.grid.cols
    k = model.grid.count(args.ratio)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  model {args.model}  {len(files)} photos of {args.folder}, "
          f"k = {k}, {torch.get_num_threads()} threads")
    trajs = collect(files, model, k, args.cache, args.model)
    split = len(files) - args.held_out  # photos before it train the ranker, the rest are held out

    def cut(ts: list[dict]) -> tuple[list[dict], list[dict]]:
        cuts = [min(max(split - 8 * i, 0), len(t["chosen"])) for i, t in enumerate(ts)]
        first = [{key: v[:c] for key, v in t.items()} for t, c in zip(ts, cuts, strict=True)]
        rest = [{key: v[c:] for key, v in t.items()} for t, c in zip(ts, cuts, strict=True)]
        return [t for t in first if len(t["chosen"])], [t for t in rest if len(t["chosen"])]

    train_set, held = cut(trajs)
    net = None
    for round_ in range(args.own_steps + 1):
        if round_:  # the last ranker's own states, with every candidate scored (one DAgger round)
            tag = f"own{round_}-{weights_hash(net)}"
            own_train, own_held = cut(collect(files, model, k, args.cache, args.model, net, tag))
            train_set, held = train_set + own_train, held + own_held
        x, s, rem = samples(train_set, rows, cols)
        start = time.perf_counter()
        net = train(x, s, rem, rows, cols, tau=args.tau, epochs=args.epochs, seed=args.seed)
        print(f"trained on {split} photos ({len(x)} steps) in {time.perf_counter() - start:.0f} s", flush=True)
    save_ranker(net, args.out, model=args.model, photos=str(split), ratio=str(args.ratio),
                own_steps=str(args.own_steps))
    print(f"wrote {args.out}")
    if held:
        hx, hs, hrem = samples(held, rows, cols)
        with torch.no_grad():
            ranked = torch.cat([net(hx[i : i + 256]) for i in range(0, len(hx), 256)])
        print(f"\n## held-out: {args.held_out} photos, {len(hx)} steps (exact greedy's"
              f"{' and the rankers' if args.own_steps else ''})\n")
        screen_table({"error": hx[:, 7].flatten(1), "ranker": ranked}, hs, hrem)


if __name__ == "__main__":
    main()
