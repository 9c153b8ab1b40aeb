"""The KPP authors' released behaviour on request: start patch, patch count, resize, and the preset.

``benchmarks/reference_loop.py`` re-implements the authors' loop (``KPP_main.py``) with their start
(patch 98), their count (``int(r * N) + 1``) and their image loading (PIL bilinear resize); keypatch
with ``preset="reference"`` must pick exactly what it picks.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import keypatch
from keypatch.cli.main import main
from keypatch.geometry import PatchGrid, load_image
from keypatch.presets import PRESETS, run_settings
from keypatch.proposers.search import parse_start, start_patch
from keypatch.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_loop():
    spec = importlib.util.spec_from_file_location(
        "reference_loop", Path(__file__).resolve().parents[2] / "benchmarks" / "reference_loop.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return ref


@pytest.mark.parametrize("name", ["astronaut.jpg", "coffee.jpg"])
def test_reference_preset_picks_what_the_authors_loop_picks(tiny224, photo_dir, name):
    ref = _reference_loop()
    path = photo_dir / name
    k = ref.reference_count(196, 0.1)
    want, want_losses = ref.reference_kpp(tiny224, ref.load_reference_image(path), k, start=98)
    got = keypatch.propose(path, 0.1, model=tiny224, preset="reference", device="cpu", precision="float32")
    assert got.k == k == 20 and got.patches[0] == 98
    assert got.patches == want
    assert got.losses[1:] == pytest.approx(want_losses, rel=1e-5)
    # the paper's settings pick otherwise: another start, one patch fewer, another resize
    paper = keypatch.propose(path, 0.1, model=tiny224, device="cpu")
    assert paper.k == 20 and paper.patches[0] == 105 and paper.patches != got.patches


def test_reference_count_rule():
    g = PatchGrid()
    assert [g.count(r, "reference") for r in (0.25, 0.1, 0.5, 1.0)] == [50, 20, 99, 196]
    assert [g.count(r) for r in (0.25, 0.1, 0.5, 1.0)] == [49, 20, 98, 196]
    with pytest.raises(ValueError, match="count rule must be one of round, reference"):
        g.count(0.1, "floor")


def test_bilinear_resize_is_pils_bilinear(photo_dir):
    path = photo_dir / "chelsea.jpg"
    ref = _reference_loop()
    assert torch.equal(load_image(path, resize="bilinear"), ref.load_reference_image(path))
    assert not torch.equal(load_image(path), load_image(path, resize="bilinear"))
    with pytest.raises(ValueError, match="resize must be one of bicubic, bilinear"):
        load_image(path, resize="nearest")


@pytest.mark.parametrize("given, canonical, index", [
    ("center", "center", 105), ("centre", "center", 105), ("none", "none", None), (98, "98", 98),
    ("98", "98", 98), ((7, 0), "7,0", 98), ("7, 0", "7,0", 98), ([13, 13], "13,13", 195),
])
def test_start_forms(given, canonical, index):
    assert parse_start(given) == canonical
    assert start_patch(canonical, PatchGrid()) == index


@pytest.mark.parametrize("bad", ["middle", -1, True, 1.5, (7,), "7,0,1", None])
def test_bad_starts_are_refused(bad):
    with pytest.raises(ValueError, match="start must be 'center', 'none', a patch index"):
        parse_start(bad)


def test_start_outside_the_grid(tiny224, photo_dir):
    x = photo_dir / "coffee.jpg"
    with pytest.raises(IndexError, match="start patch 196 is outside a grid of 196 patches"):
        keypatch.propose(x, 0.05, model=tiny224, start=196, device="cpu")
    with pytest.raises(IndexError, match=r"\(14, 0\) is outside a 14x14 grid"):
        keypatch.propose(x, 0.05, model=tiny224, start=(14, 0), device="cpu")


def test_any_start_patch_is_kept_first(tiny224, photo_dir):
    got = keypatch.propose(photo_dir / "coffee.jpg", 0.05, model=tiny224, start=(0, 13), device="cpu")
    assert got.patches[0] == 13 and got.k == 10
    assert got.losses[0] == pytest.approx(keypatch.reconstruction_loss(photo_dir / "coffee.jpg", [13], tiny224,
                                                                       device="cpu"), rel=1e-5)


def test_preset_settings_and_overrides():
    assert run_settings() == PRESETS["paper"] == ("center", "round", "bicubic")
    assert run_settings("reference") == ("98", "reference", "bilinear")
    assert run_settings("reference", start="center", resize="bicubic") == ("center", "reference", "bicubic")
    assert run_settings("reference").stored() == {"count": "reference", "resize": "bilinear"}
    assert run_settings().stored() == {}
    with pytest.raises(ValueError, match="preset must be one of paper, reference"):
        run_settings("authors")


def test_a_preset_start_skips_strategies_without_one(tiny224, photo_dir):
    """``random`` takes no start: the preset's is left out, an explicit one is refused."""
    got = keypatch.propose(photo_dir / "coffee.jpg", 0.1, "random", model=tiny224, preset="reference", device="cpu")
    assert got.k == 20
    with pytest.raises(ValueError, match="start"):
        keypatch.propose(photo_dir / "coffee.jpg", 0.1, "random", model=tiny224, start=98, device="cpu")


def test_reference_run_is_stored_apart_from_the_papers(tmp_path, photo_dir, capsys):
    out = tmp_path / "res"
    args = [str(photo_dir / "chelsea.jpg"), "--ratio", "0.012", "--model", "random:small", "--quiet",
            "--out", str(out), "--precision", "float32"]
    assert main(["propose", *args, "--reference"]) == 0
    assert main(["propose", *args]) == 0
    capsys.readouterr()
    # the same three settings given one by one (the start as row, col) are the same setting
    assert main(["propose", *args, "--start", "7,0", "--count", "reference", "--resize", "bilinear"]) == 0
    assert "0 new, 1 already stored" in capsys.readouterr().out
    with ResultStore(out / "results.sqlite") as store:
        recs = sorted(store.records(), key=lambda r: r.start)
    assert [r.start for r in recs] == ["98", "center"]
    ref, paper = recs
    assert ref.options == {"count": "reference", "resize": "bilinear", "precision": "float32"}
    assert paper.options == {"precision": "float32"}
    # 0.012 x 196 = 2.35: the authors' code keeps int(2.35) + 1 = 3 patches, round() keeps 2
    assert ref.patches[0] == 98 and len(ref.patches) == 3 and len(paper.patches) == 2
    assert ref.losses[-1] == pytest.approx(keypatch.reconstruction_loss(
        photo_dir / "chelsea.jpg", ref.patches, "random:small", device="cpu", resize="bilinear"), rel=1e-5)


def test_bad_preset_and_start_on_the_command_line(photo_dir, tmp_path, capsys):
    base = ["propose", str(photo_dir / "chelsea.jpg"), "--ratio", "0.1", "--out", str(tmp_path), "--quiet"]
    assert main([*base, "--start", "middle"]) == 2
    assert "argument --start: expected center, none, a patch index" in capsys.readouterr().err
    assert main([*base, "--preset", "authors"]) == 2
    assert "argument --preset: invalid choice: 'authors'" in capsys.readouterr().err


def test_per_folder_patch_ids_read_as_the_authors_dataset_reads_them(tmp_path, photo_dir, capsys):
    root = tmp_path / "train"
    for target, src in {"n01/a.JPEG": "astronaut", "n01/b.v2.png": "chelsea", "n02/c.JPEG": "coffee"}.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo_dir / f"{src}.jpg").save(root / target, format="PNG" if target.endswith("png") else "JPEG")
    out = tmp_path / "res"
    assert main(["propose", str(root), "--ratio", "0.012", "--reference", "--model", "random:small", "--quiet",
                 "--out", str(out)]) == 0
    assert main(["export", "--out", str(out), "--per-folder", "--no-pictures", "--quiet"]) == 0
    assert "2 per-folder patch_ids.json" in capsys.readouterr().out
    for cls in ("n01", "n02"):  # ImagenetteKPP: ROOT/CLASS/patch_ids.json, an entry for every .png / .JPEG
        data = json.loads((root / cls / "patch_ids.json").read_text())
        images = [p for p in (root / cls).iterdir() if p.name.endswith((".png", ".JPEG"))]
        assert sorted(data) == sorted(p.name.split(".")[0] for p in images)
        for e in data.values():
            assert len(e["patch"]) == 3 and e["patch"][0] == 98 and len(e["loss"]) == 2
