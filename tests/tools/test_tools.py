"""The repository's tooling (``tools/``): MAE training end to end on a toy preset, the photo split."""

import json

import numpy as np
from PIL import Image

from keypatch.reconstructors import load_mae
from tools.photos.split import MIN_LARGE_PER_SPLIT, assign_splits, split_fraction
from tools.train_mae import main as train_main


def test_train_mae_writes_loadable_weights_and_resumes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    out = tmp_path / "run"
    argv = [str(tmp_path / "photos"), "--out", str(out), "--preset", "toy", "--steps", "3", "--batch-size", "2",
            "--warmup", "1", "--save-every", "2", "--eval-every", "100"]
    assert train_main(argv) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    model = load_mae(path, device="cpu")
    assert model.config.image_size == 64 and model.grid.n == 16
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log and all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    assert train_main([*argv[:6], "6", *argv[7:]]) == 0  # resumes from step 3 to 6


def test_split_is_deterministic_and_keeps_large_photos_on_both_sides():
    shas = [f"{i:064x}" for i in range(40)]
    fractions = {s: split_fraction(s, seed=0) for s in shas}
    assert fractions == {s: split_fraction(s, seed=0) for s in shas}
    assert fractions != {s: split_fraction(s, seed=1) for s in shas}
    large = set(shas[:10])
    split = assign_splits(fractions, large, 0.1)
    for side in ("train", "val"):
        assert sum(split[s] == side for s in large) >= MIN_LARGE_PER_SPLIT
    assert all(split[s] == ("val" if fractions[s] < 0.1 else "train") for s in shas[10:])
    assert set(assign_splits(fractions, large, 0.0).values()) == {"train"}


def test_ranker_fit_records_greedy_steps_and_trains_a_loadable_ranker(toy_model, tmp_path):
    """tools.ranker.fit on the toy grid: its trajectory (greedy_steps) is exact greedy's, with every candidate's L
    at each step; a ranker trained on it saves, loads and screens; the DAgger trajectory adds the
    best of the ranker's top m."""
    import math

    import pytest
    import torch

    import keypatch
    from keypatch.geometry import normalize
    from keypatch.objective import Objective
    from keypatch.proposers.ranked import Ranking, greedy_steps, load_ranker, ranker_inputs, save_ranker
    from tools.ranker.fit import samples, screen_table, train

    g = torch.Generator().manual_seed(2)
    images = torch.stack([normalize(torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=64,
                                                                   mode="bilinear")[0]) for _ in range(2)])
    t = greedy_steps(Objective(toy_model, images), 5)
    greedy = keypatch.propose_batch(images, 5 / 16, "greedy", toy_model)
    assert [row.tolist() for row in t["chosen"]] == [p.patches for p in greedy]
    assert t["scores"].shape == (2, 4, 16) and t["err"].shape == (2, 4, 16)
    for j in range(4):  # the chosen patches are inf, every other candidate scored, the pick the lowest
        assert t["scores"][:, j].isinf().sum(1).tolist() == [j + 1, j + 1]
        assert t["scores"][:, j].amin(1).tolist() == pytest.approx([p.losses[j + 1] for p in greedy], rel=1e-5)
    x, s, rem = samples([t], 4, 4)
    assert x.shape == (8, 11, 4, 4) and rem.sum().item() == sum(2 * (15 - j) for j in range(4))
    net = train(x, s, rem, 4, 4, tau=0.01, epochs=2, seed=0)
    save_ranker(net, tmp_path / "r.safetensors")
    assert torch.equal(load_ranker(str(tmp_path / "r.safetensors"))(x), net(x))
    objective = Objective(toy_model, images)
    own = greedy_steps(objective, 5, Ranking(objective, net), m=2)
    for j in range(4):  # each pick is the better of the ranker's top 2 at that step
        chosen = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, own["chosen"][:, : j + 1], True)
        inputs = ranker_inputs(own["targets"], own["err"][:, j], own["err"][:, max(j - 1, 0)], chosen, 4, 4)
        with torch.no_grad():
            top = torch.sort(-net(inputs).masked_fill(chosen, -math.inf), dim=1, stable=True).indices[:, :2]
        best = top.gather(1, own["scores"][:, j].gather(1, top).argmin(1, keepdim=True))[:, 0]
        assert own["chosen"][:, j + 1].tolist() == best.tolist()
    screen_table({"ranker": net(x).detach()}, s, rem, sizes=(2,))
