"""The results store, export helpers, triptych pictures and file discovery (offline, tiny model)."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest
from PIL import Image

from keypatch.experiments.pictures import MARGIN, TITLE_HEIGHT, triptych
from keypatch.exports.base import check_one_setting
from keypatch.exports.patch_ids import export_json, unique_names, write_patch_ids_per_folder
from keypatch.geometry import PatchGrid, list_image_files, load_image, to_pil
from keypatch.reconstructors import load_mae
from keypatch.store import DuplicateRecordError, Record, ResultStore, sha256_file


def make_record(**kw) -> Record:
    base = dict(image_path="/data/cat.jpg", sha256="a" * 64, model_id="random:toy", strategy="greedy", ratio=0.25,
                start="center", patches=[5, 1, 9, 2], losses=[0.9, 0.7, 0.6, 0.55], options={"seed": 0},
                evaluations=40, seconds=0.125)
    base.update(kw)
    return Record(**base)


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as s:
        yield s


def test_round_trip_keeps_every_field(store, tmp_path):
    rec = make_record(options={"seed": 3, "precision": "bfloat16"})
    rid = store.add(rec)
    assert rid == rec.id and rec.created
    store.close()
    with ResultStore(tmp_path / "results.sqlite", create=False) as again:
        (got,) = again.records()
    assert got == rec
    assert got.loss == 0.55 and got.patches == [5, 1, 9, 2] and got.options == {"seed": 3, "precision": "bfloat16"}


def test_schema_and_wal(store):
    store.add(make_record())
    cols = [r[1] for r in store.conn.execute("PRAGMA table_info(proposals)")]
    assert cols == ["id", "image_path", "sha256", "model_id", "strategy", "ratio", "start", "options_json",
                    "patches_json", "losses_json", "loss", "evaluations", "seconds", "created"]
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = store.conn.execute("SELECT loss, patches_json FROM proposals").fetchone()
    assert row == (0.55, "[5, 1, 9, 2]")


def test_add_is_committed_immediately(store):
    store.add(make_record())
    other = sqlite3.connect(str(store.path))  # a second reader sees it without close()
    assert other.execute("SELECT COUNT(*) FROM proposals").fetchone()[0] == 1
    other.close()


def test_uniqueness_over_content_and_settings(store):
    store.add(make_record())
    with pytest.raises(DuplicateRecordError):
        store.add(make_record(image_path="/elsewhere/renamed.jpg"))  # same bytes, same settings
    # option order does not matter for the key
    with pytest.raises(DuplicateRecordError):
        store.add(make_record(options={"seed": 0}))
    for change in ({"ratio": 0.5}, {"start": "none"}, {"strategy": "random", "start": ""}, {"model_id": "default"},
                   {"options": {"seed": 1}}, {"sha256": "b" * 64}):
        store.add(make_record(**change))
    assert len(store) == 7
    assert store.has("a" * 64, "random:toy", "greedy", 0.25, "center", {"seed": 0})
    assert not store.has("a" * 64, "random:toy", "greedy", 0.25, "center", {"seed": 2})
    assert not store.has("c" * 64, "random:toy", "greedy", 0.25, "center", {"seed": 0})


def test_records_filters(store):
    store.add(make_record())
    store.add(make_record(ratio=0.5))
    store.add(make_record(strategy="random", start=""))
    assert [r.ratio for r in store.records(strategy="greedy")] == [0.25, 0.5]
    assert len(store.records(ratio=0.25)) == 2
    assert len(store.records(strategy="greedy", ratio=0.25, model_id="random:toy", start=None)) == 1
    assert store.records(model_id="default") == []
    assert len(store.records(options={"seed": 0})) == 3
    with pytest.raises(ValueError, match="unknown record filter"):
        store.records(colour="red")


def test_add_rejects_mismatched_losses(store):
    with pytest.raises(ValueError, match="losses"):
        store.add(make_record(losses=[0.5]))
    assert len(store) == 0


def test_missing_store_and_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "nope.sqlite", create=False)
    assert not (tmp_path / "nope.sqlite").exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a keypatch results store"):
        ResultStore(junk)


def test_store_in_a_folder(tmp_path):
    with ResultStore(tmp_path) as s:
        assert s.path == tmp_path / "results.sqlite"


def test_sha256_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"keypatch" * 1000)
    assert sha256_file(f) == hashlib.sha256(b"keypatch" * 1000).hexdigest()


# -- export helpers -------------------------------------------------------------------------------


def test_names_follow_the_authors_loader_per_folder():
    recs = [make_record(image_path="/d/a/cat.jpg", sha256="1" * 64),
            make_record(image_path="/d/b/Cat.png", sha256="2" * 64),
            make_record(image_path="/d/b/dog.v2.png", sha256="3" * 64),
            make_record(image_path="/d/b/dog.jpg", sha256="4" * 64)]
    # stems; clashes across folders by folder, within one folder by whole file name after the first path
    assert unique_names(recs) == ["a/cat", "b/Cat", "dog.v2.png", "dog"]
    assert unique_names(recs[::-1]) == ["dog", "dog.v2.png", "b/Cat", "a/cat"]  # independent of order
    assert unique_names(recs[2:]) == ["dog.v2.png", "dog"]
    assert unique_names(recs[:1]) == ["cat"]
    from keypatch.exports.patch_ids import folder_clashes

    assert folder_clashes(recs) == [["/d/b/dog.jpg", "/d/b/dog.v2.png"]]


def test_export_json_reference_format(tmp_path):
    """As the authors' ``update_data`` writes it: a loss per added patch (none for the start), indent 4."""
    recs = [make_record(image_path="/a/cat.jpg", sha256="1" * 64),
            make_record(image_path="/b/dog.png", sha256="2" * 64, patches=[3], losses=[0.25])]
    path = export_json(recs, tmp_path / "out" / "patch_ids.json")
    data = json.loads(path.read_text())
    assert data == {"cat": {"patch": [5, 1, 9, 2], "loss": [0.7, 0.6, 0.55]},
                    "dog": {"patch": [3], "loss": []}}
    assert path.read_text() == json.dumps(data, indent=4)


def test_patch_ids_per_folder_merge_like_the_authors(tmp_path):
    (tmp_path / "n01").mkdir()
    (tmp_path / "n02").mkdir()
    (tmp_path / "n01" / "patch_ids.json").write_text(json.dumps({"old": {"patch": [1, 2], "loss": [0.5]},
                                                                "a": {"patch": [0, 1], "loss": [9.0]}}))
    recs = [make_record(image_path=str(tmp_path / "n01" / "a.JPEG"), sha256="1" * 64),
            make_record(image_path=str(tmp_path / "n02" / "a.JPEG"), sha256="2" * 64)]
    written = write_patch_ids_per_folder(recs)
    assert sorted(written) == [tmp_path / "n01" / "patch_ids.json", tmp_path / "n02" / "patch_ids.json"]
    one = json.loads((tmp_path / "n01" / "patch_ids.json").read_text())
    assert one == {"old": {"patch": [1, 2], "loss": [0.5]}, "a": {"patch": [5, 1, 9, 2], "loss": [0.7, 0.6, 0.55]}}
    assert set(json.loads((tmp_path / "n02" / "patch_ids.json").read_text())) == {"a"}  # names unique per folder
    (tmp_path / "n02" / "patch_ids.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a patch_ids.json"):
        write_patch_ids_per_folder(recs)
    assert json.loads((tmp_path / "n01" / "patch_ids.json").read_text()) == one  # nothing written


def test_export_refuses_mixed_settings(tmp_path):
    recs = [make_record(), make_record(sha256="2" * 64, ratio=0.5)]
    with pytest.raises(ValueError, match="2 different settings"):
        check_one_setting(recs)
    with pytest.raises(ValueError):
        export_json(recs, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


# -- pictures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    return load_mae("random:toy", device="cpu")


def test_triptych_layout_and_panels(toy):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(80, 120, 3), dtype=np.uint8)
    pic = triptych(arr, [5, 6, 10], toy, numbers=False)
    s = toy.config.image_size
    assert pic.mode == "RGB" and pic.size == (3 * s + 4 * MARGIN, s + TITLE_HEIGHT + 2 * MARGIN)
    top = MARGIN + TITLE_HEIGHT
    panel = lambda i: np.asarray(pic.crop((MARGIN + i * (s + MARGIN), top, MARGIN + i * (s + MARGIN) + s, top + s)))  # noqa: E731
    original = np.asarray(to_pil(load_image(arr, s)))
    assert np.array_equal(panel(0), original)  # the model's view: resized to 64x64
    kept, recon = panel(1).astype(int), panel(2).astype(int)
    p = toy.config.patch_size
    inner = (slice(2, p - 2), slice(2, p - 2))  # inside the frame drawn on kept patches
    for idx in (5, 6, 10):
        r, c = divmod(idx, 4)
        cell = (slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p))
        assert np.array_equal(kept[cell][inner], original[cell][inner])
        assert np.abs(recon[cell] - original[cell]).max() <= 1  # visible patches pasted back
    masked = (slice(3 * p, 4 * p), slice(0, p))  # patch 12, not kept: darkened
    assert kept[masked].mean() < original[masked].astype(int).mean()
    # by default each kept patch carries its pick number, the rest of the picture is the same
    numbered = np.asarray(triptych(arr, [5, 6, 10], toy)).astype(int)
    changed = np.abs(numbered - np.asarray(pic).astype(int)).sum(-1) > 0
    x0 = MARGIN + s + MARGIN
    for idx in (5, 6, 10):
        r, c = divmod(idx, 4)
        assert changed[top + r * p : top + (r + 1) * p, x0 + c * p : x0 + (c + 1) * p].any()
    changed[:top] = False  # the titles say "in pick order"
    changed[top + 0 : top + s, x0 : x0 + s] = False
    assert not changed.any()


def test_triptych_checks_patches_and_grid(toy):
    img = Image.new("RGB", (64, 64), (120, 30, 200))
    with pytest.raises(ValueError, match="outside"):
        triptych(img, [16], toy)
    with pytest.raises(ValueError, match="grid"):
        triptych(img, [0], toy, grid=PatchGrid(224, 16))
    assert triptych(img, [0], toy, grid=PatchGrid(64, 16)).size[0] == 3 * 64 + 4 * MARGIN


# -- file discovery ---------------------------------------------------------------------------------


def test_list_image_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("a/1.JPG", "a/b/2.png", "a/b/3.webp", "a/notes.txt", ".hidden/4.png", "a/b/5.tiff"):
        (tmp_path / name).write_bytes(b"x")
    found = list_image_files([tmp_path / "a", tmp_path / "a" / "b" / "2.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.JPG", "a/b/2.png", "a/b/3.webp", "a/b/5.tiff"]
    assert list_image_files(tmp_path / "a" / "notes.txt") == [tmp_path / "a" / "notes.txt"]  # named: taken
    with pytest.raises(FileNotFoundError, match="missing"):
        list_image_files([tmp_path / "a", tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        list_image_files(tmp_path / "empty")
