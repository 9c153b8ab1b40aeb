"""A results store from someone else: records altered with sqlite3 cannot make an export write outside its
folder, overwrite an image, or fail with anything but one error naming the store and the record."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keypatch.exports import export_results
from keypatch.exports import patch_ids as patch_ids_module
from keypatch.store import ResultStore
from keypatch.store.record import Record, sha256_file
from keypatch.untrusted import HostileFileError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _photo(seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.array(Image.fromarray(small).resize((64, 48), Image.Resampling.BILINEAR))


@pytest.fixture
def stored(tmp_path) -> tuple[Path, Path]:
    """``(photos, results)``: photos/a/cat.png and photos/b/cat.png, one record each (the toy model's grid)."""
    photos, out = tmp_path / "photos", tmp_path / "results"
    with ResultStore(out / "results.sqlite") as s:
        for i, sub in enumerate("ab"):
            (photos / sub).mkdir(parents=True)
            p = photos / sub / "cat.png"
            Image.fromarray(_photo(i)).save(p)
            s.add(Record(image_path=str(p), sha256=sha256_file(p), model_id="random:toy", strategy="greedy",
                         ratio=0.25, start="center", patches=[5, 6, 9, 10], losses=[0.4, 0.3, 0.2, 0.1]))
    return photos, out


def alter(out: Path, sql: str, *args) -> None:
    conn = sqlite3.connect(out / "results.sqlite")
    with conn:
        conn.execute(sql, args)
    conn.close()


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.startswith("results.sqlite")}


def test_mixed_relative_and_absolute_paths_cannot_make_the_masks_overwrite_a_source_image(stored, tmp_path,
                                                                                         monkeypatch):
    """The known attack: a record's path respelt relative, so the names of two ``cat`` images were
    their folders as given, one absolute: its mask went to that absolute path, over the photo."""
    photos, out = stored
    monkeypatch.chdir(tmp_path)
    alter(out, "UPDATE proposals SET image_path = ? WHERE image_path = ?", "photos/b/cat.png",
          str(photos / "b" / "cat.png"))
    before = snapshot(tmp_path)
    s = export_results(out, pictures=False, progress=False, device="cpu", formats=["masks"])
    after = snapshot(tmp_path)
    assert {p: b for p, b in after.items() if p in before} == before  # no file changed, the photos included
    assert all(p.is_relative_to(out) for p in set(after) - set(before))  # every new file inside the export
    assert s["mask_files"] == 2 and (out / "masks" / "SegmentationClass" / "a" / "cat.png").is_file()


def test_a_mask_that_would_land_on_a_records_image_is_refused_naming_the_store_and_the_record(stored, tmp_path):
    photos, out = stored
    victim = out / "masks" / "SegmentationClass" / "cat.png"  # the mask of a lone cat.png goes here
    victim.parent.mkdir(parents=True)
    shutil.copy(photos / "a" / "cat.png", victim)
    alter(out, "DELETE FROM proposals WHERE image_path = ?", str(photos / "b" / "cat.png"))
    alter(out, "UPDATE proposals SET image_path = ?", str(victim))
    original = victim.read_bytes()
    with pytest.raises(HostileFileError) as err:
        export_results(out, pictures=False, progress=False, device="cpu", formats=["masks"])
    assert str(out / "results.sqlite") in str(err.value) and "record 1" in str(err.value)
    assert "one of the inputs" in str(err.value)
    assert victim.read_bytes() == original


def test_a_hard_link_to_a_photo_in_the_pictures_folder_is_not_written_through(stored, tmp_path):
    photos, out = stored
    alter(out, "DELETE FROM proposals WHERE image_path = ?", str(photos / "b" / "cat.png"))
    (out / "pictures").mkdir()
    (out / "pictures" / "cat.png").hardlink_to(photos / "a" / "cat.png")
    original = (photos / "a" / "cat.png").read_bytes()
    with pytest.raises(HostileFileError, match="one of the inputs"):
        export_results(out, progress=False, device="cpu")
    assert (photos / "a" / "cat.png").read_bytes() == original


def test_a_strategy_that_climbs_out_cannot_name_a_folder_outside_the_results(stored, tmp_path):
    _, out = stored
    alter(out, "UPDATE proposals SET strategy = '../../escaped'")
    with pytest.raises(HostileFileError) as err:
        export_results(out, pictures=False, progress=False, device="cpu", each_setting=True)
    assert str(out / "results.sqlite") in str(err.value) and "escaped" in str(err.value)
    assert not list(tmp_path.glob("escaped*")) and not list(tmp_path.parent.glob("escaped*"))


@pytest.mark.parametrize("column,value,formats", [
    ("patches_json", "[-1, 5]", ["json"]),
    ("patches_json", "[5, 99]", ["masks"]),  # outside the toy model's 16 patches
    ("patches_json", '"5 6 9"', ["json"]),
    ("losses_json", '["low"]', ["json"]),
    ("losses_json", "[[[[", ["json"]),
    ("image_path", b"\x00/etc", ["json"]),
    ("image_path", "/tmp/a\nb.png", ["json"]),
])
def test_records_of_the_wrong_type_are_one_error_naming_the_store_and_the_record(stored, column, value, formats):
    _, out = stored
    alter(out, f"UPDATE proposals SET {column} = ? WHERE id = 2", value)
    with pytest.raises(ValueError) as err:
        export_results(out, pictures=False, progress=False, device="cpu", formats=formats)
    assert str(out / "results.sqlite") in str(err.value) and "record 2" in str(err.value), err.value
    assert not list((out / "masks").rglob("*.png")) if formats == ["masks"] else not (out / "patch_ids.json").exists()


@pytest.mark.parametrize("content", ['{"cat": 5}', '{"cat": {"patch": "5 6"}}', '{"dog": {"patch": [1.5]}}',
                                     '{"dog": {"patch": [1], "loss": "low"}}', '"cat"', "[" * 100_000, "huge"])
def test_a_hostile_patch_ids_json_beside_the_images_is_refused_and_nothing_is_written(stored, content, monkeypatch):
    photos, out = stored
    target = photos / "a" / "patch_ids.json"
    if content == "huge":
        monkeypatch.setattr(patch_ids_module, "MAX_PATCH_IDS_BYTES", 1000)
        content = json.dumps({f"img{i}": {"patch": [1, 2], "loss": [0.5]} for i in range(100)})
    target.write_text(content)
    with pytest.raises(ValueError) as err:
        export_results(out, pictures=False, progress=False, device="cpu", per_folder=True)
    assert str(target) in str(err.value)
    assert target.read_text() == content and not (photos / "b" / "patch_ids.json").exists()
    assert not (out / "patch_ids.json").exists()  # refused before anything was written


def test_an_honest_patch_ids_json_beside_the_images_is_merged(stored):
    photos, out = stored
    (photos / "a" / "patch_ids.json").write_text(json.dumps({"dog": {"patch": [1, 2], "loss": [0.5]}}))
    export_results(out, pictures=False, progress=False, device="cpu", per_folder=True)
    merged = json.loads((photos / "a" / "patch_ids.json").read_text())
    assert merged == {"dog": {"patch": [1, 2], "loss": [0.5]}, "cat": {"patch": [5, 6, 9, 10], "loss": [0.3, 0.2, 0.1]}}
