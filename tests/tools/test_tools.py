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
