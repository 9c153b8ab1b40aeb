"""Odd inputs and faults: every case gives the right result or a one-line message naming the input.

Image kinds are checked against a conversion made by hand in the test (the stored picks and the
loaded tensor must equal those of the hand-made 8-bit image); CLI cases also check that the other
images of the run were processed and that nothing already stored was lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import keypatch
from keypatch.cli.main import main
from keypatch.geometry import InputNote, load_image, normalize
from keypatch.geometry.decode import ImageSizeWarning
from keypatch.store import ResultStore

TOY = ["--model", "random:toy", "--quiet"]
SIZE = 64  # the toy model's input


def photo(seed: int = 0, shape=(48, 64)) -> np.ndarray:
    """A smooth, asymmetric 8-bit RGB test image."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.array(Image.fromarray(small).resize(shape[::-1], Image.Resampling.BILINEAR))


def png16(path, arr: np.ndarray) -> None:
    """Write a 16-bit RGB(A) PNG by hand (Pillow cannot)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) +
                     chunk(b"IEND", b""))


def same(a, b) -> bool:
    return torch.equal(load_image(a, SIZE), load_image(b, SIZE))


def stored(out) -> list:
    with ResultStore(out, create=False) as s:
        return s.records()


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


@pytest.fixture(autouse=True)
def quiet_notes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputNote)
        yield


# -- image files: one rule per kind ----------------------------------------------------------------


def test_16bit_png_gives_the_picks_of_its_8bit_conversion(tmp_path):
    g16 = (np.linspace(0, 1, 48 * 64).reshape(48, 64) ** 2 * 65535).astype(np.uint16)
    g16[10:20, 5:30] = 60000
    Image.fromarray(g16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    by_hand = np.round(g16 / 257.0).astype(np.uint8)
    Image.fromarray(by_hand).save(tmp_path / "by_hand.png")
    assert same(tmp_path / "deep.png", tmp_path / "by_hand.png")
    out = tmp_path / "res"
    assert main(["propose", str(tmp_path / "deep.png"), "--ratio", "0.5", "--out", str(out), *TOY]) == 0
    (rec,) = stored(out)
    ref = keypatch.propose(by_hand, 0.5, model="random:toy")
    assert rec.patches == ref.patches and rec.losses == pytest.approx(ref.losses, abs=1e-6)
    white = keypatch.propose(np.full((48, 64), 255, np.uint8), 0.5, model="random:toy")
    assert rec.loss != pytest.approx(white.loss)  # not read as a white image


def test_16bit_tiff_and_16bit_rgb_png(tmp_path):
    g16 = (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g.tif")
    assert same(tmp_path / "g.tif", np.round(g16 / 257.0).astype(np.uint8))
    rgb16 = photo(1).astype(np.uint16) * 257 + 0x7F
    png16(tmp_path / "rgb16.png", rgb16)
    assert same(tmp_path / "rgb16.png", (rgb16 >> 8).astype(np.uint8))  # Pillow keeps the high byte


def test_float_tiff_in_range_and_out_of_range(tmp_path):
    f = (photo(2)[..., 0] / 255.0).astype(np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    assert same(tmp_path / "f.tif", np.round(f.astype(np.float64) * 255).astype(np.uint8))
    Image.fromarray(f * 255).save(tmp_path / "f255.tif")
    with pytest.raises(ValueError, match=r"f255.tif: 32-bit float pixels must lie in \[0, 1\], found \[.*255"):
        load_image(tmp_path / "f255.tif", SIZE)


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr"])
def test_pillow_modes_are_read_as_pillow_converts_them(tmp_path, mode):
    im = Image.fromarray(photo(3)).convert(mode)
    suffix = "jpg" if mode in ("CMYK", "YCbCr") else "png"
    im.save(tmp_path / f"x.{suffix}")
    expected = np.asarray(Image.open(tmp_path / f"x.{suffix}").convert("RGB"))
    assert same(tmp_path / f"x.{suffix}", expected)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM"])
def test_lossless_formats_read_back_exactly(tmp_path, fmt):
    arr = photo(4)
    src = Image.fromarray(arr).convert("P") if fmt == "GIF" else Image.fromarray(arr)
    path = tmp_path / f"x.{fmt.lower()}"
    src.save(path, **({"lossless": True} if fmt == "WEBP" else {}))
    assert same(path, np.asarray(src.convert("RGB")))


def test_alpha_is_dropped_and_said_once_per_run(tmp_path, capsys):
    rgb = photo(5)
    alpha = np.zeros(rgb.shape[:2], np.uint8)  # fully transparent: the stored colours are used
    for i in range(3):
        Image.fromarray(np.dstack([photo(5 + i), alpha])).save(tmp_path / f"a{i}.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert same(tmp_path / "a0.png", rgb)
    la = Image.fromarray(rgb[..., 0]).convert("LA")
    la.save(tmp_path / "la.png")
    assert same(tmp_path / "la.png", rgb[..., 0])
    out = tmp_path / "res"
    assert main(["propose", str(tmp_path), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    err = capsys.readouterr().err
    assert err.count("alpha channel") == 1 and "4 images had an alpha channel" in err
    assert len(stored(out)) == 5


def test_animated_gif_uses_the_first_frame(tmp_path, capsys):
    frames = [Image.fromarray(photo(s)).convert("P") for s in (6, 7)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert same(tmp_path / "anim.gif", np.asarray(frames[0].convert("RGB")))
    assert main(["propose", str(tmp_path / "anim.gif"), "--ratio", "0.25", "--out", str(tmp_path / "r"), *TOY]) == 0
    assert "an image had several frames: the first frame was used" in capsys.readouterr().err


def test_exif_orientation_is_applied(tmp_path):
    arr = photo(8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    stored_pixels = np.asarray(Image.open(tmp_path / "rot.jpg").convert("RGB"))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")).convert("RGB"))
    assert upright.shape == arr.shape[1::-1] + (3,)
    assert same(tmp_path / "rot.jpg", upright) and not same(tmp_path / "rot.jpg", stored_pixels)
    assert np.array_equal(upright, np.rot90(stored_pixels, k=-1))


def test_non_square_images_are_squashed_and_said_once(tmp_path, capsys):
    for i, shape in enumerate([(48, 64), (64, 48), (30, 90)]):
        Image.fromarray(photo(i, shape)).save(tmp_path / f"w{i}.png")
    Image.fromarray(photo(9, (64, 64))).save(tmp_path / "square.png")
    assert main(["propose", str(tmp_path), "--ratio", "0.25", "--out", str(tmp_path / "r"), *TOY]) == 0
    err = capsys.readouterr().err
    assert err.count("not square") == 1 and "3 images were not square" in err


def test_decompression_bomb_warning_names_the_file(tmp_path, monkeypatch):
    Image.fromarray(photo(10)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 48x64 = 3072 pixels: warned, not refused
    with pytest.warns(ImageSizeWarning, match="big.png"):
        load_image(tmp_path / "big.png", SIZE)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice the limit: refused, named
    with pytest.raises(ValueError, match="big.png"):
        load_image(tmp_path / "big.png", SIZE)


def test_unreadable_files_are_named_and_the_rest_is_processed(tmp_path, capsys):
    Image.fromarray(photo(11)).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "good.png").read_bytes()[:100])
    Image.fromarray((photo(12)[..., 0] * 2.0).astype(np.float32)).save(tmp_path / "hot.tif")
    out = tmp_path / "res"
    assert main(["propose", str(tmp_path / "good.png"), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    before = stored(out)
    assert main(["propose", str(tmp_path), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    captured = capsys.readouterr()
    for name in ("empty.png", "truncated.jpg", "hot.tif"):
        assert name in captured.err
    assert "Traceback" not in captured.err and "0 new, 1 already stored, 3 unreadable (of 4)" in captured.out
    assert stored(out) == before


# -- numpy arrays and tensors ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int16, np.int32])
def test_integer_arrays_are_scaled_by_their_range(dtype):
    arr8 = photo(13)
    top = np.iinfo(dtype).max
    wide = np.round(arr8.astype(np.float64) / 255 * top).astype(dtype)
    assert same(wide, arr8)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint32, np.int32, np.int64, np.uint64])
def test_wide_integer_arrays_of_8bit_values_are_refused_with_the_fix(dtype):
    arr = photo(14).astype(dtype)
    with pytest.raises(ValueError, match=rf"{np.dtype(dtype)} array .*all lie in 0-255.*astype\(np\.uint8\)"):
        load_image(arr, SIZE)
    assert same(arr.astype(np.uint8), photo(14))  # the fix the message names gives the 8-bit image


def test_pil_and_16bit_file_of_8bit_values_are_refused(tmp_path):
    arr = photo(14)[..., 0]
    for im in (Image.fromarray(arr.astype(np.int32)), Image.fromarray(arr.astype(np.uint16))):
        assert im.mode in ("I", "I;16")
        with pytest.raises(ValueError, match=r"all lie in 0-255.*astype\(np\.uint8\)"):
            load_image(im, SIZE)
    Image.fromarray(arr.astype(np.uint16)).save(tmp_path / "g16.png")
    with pytest.raises(ValueError, match=r"g16\.png: a 16-bit image whose values all lie in 0-255"):
        load_image(tmp_path / "g16.png", SIZE)
    black = np.zeros((16, 16), np.uint16)  # all black is black in any dtype, not a guess
    assert load_image(black, SIZE).shape == (3, SIZE, SIZE)


def test_propose_refuses_8bit_values_in_a_wide_dtype_and_accepts_the_conversion(toy_model):
    arr = photo(14)
    with pytest.raises(ValueError, match="astype"):
        keypatch.propose(arr.astype(np.uint16), 0.25, model=toy_model)
    a = keypatch.propose(arr.astype(np.uint16).astype(np.uint8), 0.25, model=toy_model)
    b = keypatch.propose(arr, 0.25, model=toy_model)
    assert a.patches == b.patches and a.losses == b.losses


def test_negative_and_float_out_of_range_arrays_name_the_range():
    with pytest.raises(ValueError, match=r"negative value \(-3\)"):
        load_image(np.full((8, 8, 3), -3, np.int16), SIZE)
    with pytest.raises(ValueError, match=r"found \[[0-9.]+, 255\].*divide by 255"):
        load_image(photo(15).astype(np.float32) * (255.0 / photo(15).max()), SIZE)
    nan = np.zeros((8, 8), np.float64)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        load_image(nan, SIZE)


def test_float_bool_gray_and_alpha_arrays():
    arr = photo(16)
    assert same(arr / 255.0, arr) and same((arr / 255.0).astype(np.float16), np.round(
        (arr / 255.0).astype(np.float16).astype(np.float64) * 255).astype(np.uint8))
    assert same(np.dstack([arr, np.zeros(arr.shape[:2], np.uint8)]), arr)
    assert same(arr[..., :1], arr[..., 0]) and same(arr[..., 0] > 128, (arr[..., 0] > 128).astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="channels-first"):
        load_image(arr.transpose(2, 0, 1), SIZE)
    with pytest.raises(TypeError, match="complex"):
        load_image(arr.astype(np.complex64), SIZE)


def test_tensors_must_be_normalised():
    arr = photo(17, (64, 64))
    good = load_image(arr, SIZE)
    assert torch.equal(load_image(good, SIZE), good)
    raw01 = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for bad, words in [(torch.from_numpy(arr).permute(2, 0, 1), "uint8 tensor looks like raw pixels"),
                       (raw01 * 255, "outside the ImageNet-normalised range"),
                       (raw01, "all lie in \\[0, 1\\]")]:
        with pytest.raises(ValueError, match=words):
            keypatch.propose(bad, 0.25, model="random:toy")
    assert torch.equal(load_image(normalize(raw01), SIZE), normalize(raw01))


# -- randomised strategies: a mask of each image's own --------------------------------------------


def test_random_gives_every_image_its_own_mask_whatever_the_batch(tmp_path):
    for i in range(24):
        Image.fromarray(photo(100 + i, (64, 64))).save(tmp_path / f"img{i:02d}.png")
    runs = {}
    for bs in (1, 5, 24):
        out = tmp_path / f"res{bs}"
        assert main(["propose", str(tmp_path), "--ratio", "0.25", "--strategy", "random", "--batch-size", str(bs),
                     "--out", str(out), *TOY]) == 0
        runs[bs] = {r.sha256: tuple(r.patches) for r in stored(out)}
    assert len(runs[1]) == 24 and len(set(runs[1].values())) == 24
    assert runs[1] == runs[5] == runs[24]
    files = sorted(tmp_path.glob("img*.png"))
    api = keypatch.propose_batch(files[::-1], 0.25, "random", "random:toy", seed=0)
    assert [tuple(p.patches) for p in api][::-1] == [runs[1][r] for r in _digests(files)]
    other = keypatch.propose_batch(files, 0.25, "random", "random:toy", seed=1)
    assert sum(tuple(p.patches) != runs[1][d] for p, d in zip(other, _digests(files), strict=True)) >= 20


def _digests(files):
    from keypatch.store import sha256_file

    return [sha256_file(f) for f in files]


def test_stochastic_batch_equals_one_by_one(tiny224):
    imgs = [photo(200 + i, (64, 64)) for i in range(3)]
    batch = keypatch.propose_batch(imgs, 0.05, "stochastic", tiny224, seed=3)
    alone = [keypatch.propose(x, 0.05, "stochastic", tiny224, seed=3) for x in imgs[::-1]][::-1]
    assert [p.patches for p in batch] == [p.patches for p in alone]


# -- store keys and export by setting -------------------------------------------------------------


def test_deterministic_strategies_do_not_key_on_the_seed(tmp_path, capsys):
    Image.fromarray(photo(18)).save(tmp_path / "a.png")
    out = tmp_path / "res"
    for seed in ("0", "1", "2"):
        assert main(["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--seed", seed, "--out", str(out),
                     *TOY]) == 0
    assert "0 new, 1 already stored" in capsys.readouterr().out
    assert len(stored(out)) == 1 and stored(out)[0].options == {"precision": "float32"}
    # an option given at its default is the same setting as no option
    for extra in ([], ["-o", "eps=0.1"]):
        assert main(["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--strategy", "stochastic",
                     "--out", str(out), *TOY, *extra]) == 0
    assert len(stored(out)) == 2


def test_export_each_setting_and_by_seed_or_option(tmp_path, capsys):
    for i in range(3):
        Image.fromarray(photo(300 + i)).save(tmp_path / f"p{i}.png")
    out = tmp_path / "res"
    for seed in ("0", "1", "2"):
        assert main(["propose", str(tmp_path), "--ratio", "0.25", "--strategy", "random", "--seed", seed,
                     "--out", str(out), *TOY]) == 0
    for eps in ("0.2", "0.5"):
        assert main(["propose", str(tmp_path), "--ratio", "0.25", "--strategy", "stochastic", "-o", f"eps={eps}",
                     "--out", str(out), *TOY]) == 0
    capsys.readouterr()
    assert main(["export", "--out", str(out), "--no-pictures"]) == 2
    err = err_line(capsys)
    assert "5 different settings" in err and "--seed" not in err and "-o seed=1" in err and "--each-setting" in err
    assert main(["export", "--out", str(out), "--no-pictures", "--strategy", "random", "--seed", "1"]) == 0
    data = json.loads((out / "patch_ids.json").read_text())
    want = {r.image_path.rsplit("/", 1)[-1][:-4]: r.patches for r in stored(out) if r.options.get("seed") == 1}
    assert {k: v["patch"] for k, v in data.items()} == want
    assert main(["export", "--out", str(out), "--no-pictures", "--strategy", "stochastic", "-o", "eps=0.5"]) == 0
    assert main(["export", "--out", str(out), "--each-setting"]) == 0
    folders = sorted((out / "exports").iterdir())
    assert len(folders) == 5
    for f in folders:
        setting = json.loads((f / "setting.json").read_text())
        assert setting["records"] == 3 == len(json.loads((f / "patch_ids.json").read_text()))
        assert len(list((f / "pictures").glob("*.png"))) == 3
    assert main(["store", "info", "--out", str(out)]) == 0
    assert "15 records of 3 images at 3 paths, 5 settings" in capsys.readouterr().out


# -- the store: corrupt, foreign, concurrent ------------------------------------------------------


def _fill(out, n=300):
    with ResultStore(out / "results.sqlite") as s:
        for i in range(n):
            s.add(keypatch.store.Record(image_path=f"/x/{i}.jpg", sha256=f"{i:064x}", model_id="random:toy",
                                        strategy="greedy", ratio=0.25, start="center", patches=list(range(40)),
                                        losses=[0.5] * 40))
    return out / "results.sqlite"


def test_a_store_with_a_bad_page_is_reported_and_repaired(tmp_path, capsys):
    Image.fromarray(photo(19)).save(tmp_path / "a.png")
    path = _fill(tmp_path / "res")
    raw = bytearray(path.read_bytes())
    raw[40 * 4096 : 41 * 4096] = os.urandom(4096)
    path.write_bytes(bytes(raw))
    for argv in (["propose", str(tmp_path / "a.png"), "--ratio", "0.25", *TOY], ["export", "--quiet"]):
        assert main([*argv, "--out", str(tmp_path / "res")]) == 2
        err = err_line(capsys)
        assert str(path) in err and "damaged" in err and "keypatch store repair" in err
    assert path.read_bytes() == bytes(raw)  # nothing was changed
    assert main(["store", "check", "--out", str(tmp_path / "res")]) == 1
    assert main(["store", "repair", "--out", str(tmp_path / "res")]) == 0
    recovered = stored(tmp_path / "res")
    assert 300 - 40 <= len(recovered) < 300 and all(r.patches == list(range(40)) for r in recovered)
    assert len(list((tmp_path / "res").glob("results.sqlite.damaged-*"))) >= 1
    assert main(["store", "check", "--out", str(tmp_path / "res")]) == 0
    assert main(["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--out", str(tmp_path / "res"), *TOY]) == 0


def test_a_foreign_file_or_database_is_refused_and_left_alone(tmp_path, capsys):
    Image.fromarray(photo(20)).save(tmp_path / "a.png")
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "results.sqlite").write_bytes((tmp_path / "a.png").read_bytes())
    other = tmp_path / "db" / "results.sqlite"
    other.parent.mkdir()
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    for folder, words in (("png", "not an SQLite database"), ("db", "another program")):
        assert main(["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--out", str(tmp_path / folder),
                     *TOY]) == 2
        err = err_line(capsys)
        assert words in err and str(tmp_path / folder / "results.sqlite") in err
    assert other.read_bytes() == before


def test_repair_refuses_what_info_refuses_and_leaves_it_byte_identical(tmp_path, capsys):
    text = tmp_path / "text" / "results.sqlite"
    text.parent.mkdir()
    text.write_text("not a database at all\n")
    other = tmp_path / "db" / "results.sqlite"
    other.parent.mkdir()
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.executemany("INSERT INTO accounts VALUES (?)", [("a",), ("b",)])
    conn.commit()
    conn.close()
    for path in (text, other):
        before, listing = path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
        for action in ("info", "check", "repair"):
            assert main(["store", action, "--out", str(path.parent)]) == 2, action
            err = err_line(capsys)
            assert str(path) in err and ("another program" in err or "not an SQLite database" in err), err
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == listing  # nothing made or moved


@pytest.fixture
def read_only_view(tmp_path):
    """``view(folder)``: ``folder`` mounted read-only at another path (bind mount, as root)."""
    import subprocess

    mounts = []

    def view(folder):
        target = tmp_path / f"ro{len(mounts)}"
        target.mkdir()
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(target)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot make a read-only mount here: {done.stderr.decode().strip()}")
        mounts.append(target)
        return target

    yield view
    for target in mounts:
        subprocess.run(["umount", str(target)], check=False)


def test_a_read_only_store_is_read_and_checked_intact(tmp_path, read_only_view, capsys):
    Image.fromarray(photo(21)).save(tmp_path / "a.png")
    out = tmp_path / "res"
    assert main(["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    assert not (out / "results.sqlite-wal").exists()  # closed cleanly: no WAL files beside it
    for argv in (["store", "info"], ["store", "check"], ["export", "--no-pictures", "-q"]):
        assert main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["patch_ids.json", "results.sqlite"]  # reading left no -wal/-shm
    (out / "patch_ids.json").unlink()
    ro = read_only_view(out)
    capsys.readouterr()
    assert main(["store", "info", "--out", str(ro)]) == 0
    assert "1 record of 1 image at 1 path, 1 setting" in capsys.readouterr().out
    assert main(["store", "check", "--out", str(ro)]) == 0
    assert capsys.readouterr().out.strip() == f"{ro / 'results.sqlite'}: ok"
    ids = tmp_path / "elsewhere" / "ids.json"
    assert main(["export", "--out", str(ro), "--ids", str(ids), "--pictures", str(tmp_path / "pics"), "-q"]) == 0
    assert json.loads(ids.read_text())["a"]["patch"] == stored(out)[0].patches
    assert main(["report", "--out", str(ro), "--report", str(tmp_path / "rep"), "-q"]) == 0
    assert (tmp_path / "rep" / "index.html").is_file()
    # writing there: one line naming the folder, before the model loads (this model spec cannot load)
    capsys.readouterr()
    (tmp_path / "no-model").mkdir()  # a folder, so the spec passes the parser: loading it would fail
    for argv in (["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--model", str(tmp_path / "no-model"),
                  "--out", str(ro)], ["propose", str(tmp_path / "a.png"), "--ratio", "0.25", "--model",
                  str(tmp_path / "no-model"), "--out", str(ro / "new")], ["store", "repair", "--out", str(ro)]):
        assert main(argv) == 2
        err = err_line(capsys)
        assert f"the results folder {ro} cannot be written" in err, err
    assert len(stored(out)) == 1


def test_claims_of_a_live_run_are_left_and_a_dead_runs_taken_over(tmp_path):
    import subprocess
    import sys

    from keypatch.store.sqlite import RunId, claim_key

    path = _fill(tmp_path / "res", n=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    keys = [claim_key(c * 64, "m", "greedy", 0.1, "center", {}) for c in "abc"]
    with ResultStore(path) as s:
        live, gone = RunId(), RunId(pid=int(dead.stdout))
        far = RunId(host="elsewhere")
        assert s.claim(keys[:1], live) == ["claimed"]
        assert s.claim(keys[1:2], gone) == ["claimed"]
        assert s.claim(keys[2:], far, lease=-1.0) == ["claimed"]  # lease already expired
        assert s.live_runs() == 1  # the dead pid and the other host's expired lease do not count
        me = RunId()
        assert s.claim(keys, me) == ["busy", "claimed", "claimed"]
        assert s.live_runs() == 2
        s.release(me)
        assert [c[1] for c in s.claims()] == [live.run_id]


def test_api_misuse_is_a_clear_error(tmp_path):
    img = photo(21, (64, 64))
    with pytest.raises(ValueError, match="no images"):
        keypatch.propose_batch([], 0.25, model="random:toy")
    with pytest.raises(TypeError, match="seed must be an integer, got None"):
        keypatch.propose(img, 0.25, "random", "random:toy", seed=None)
    with pytest.raises(TypeError, match="integers, got 1.5"):
        keypatch.reconstruction_loss(img, [1.5], model="random:toy")
    with pytest.raises(ValueError, match="patch 3 is given twice"):
        keypatch.reconstruction_loss(img, [3, 4, 3], model="random:toy")
    with pytest.raises(ValueError, match="patch index 16 is outside"):
        keypatch.reconstruction_loss(img, [16], model="random:toy")
    with pytest.raises(ValueError, match=r"ratio 0.001 keeps round\(0.001 x 196\) = 0 patches"):
        keypatch.propose(img, 0.001)
    assert keypatch.reconstruction_loss(img, np.array([2, 5]), model="random:toy") == pytest.approx(
        keypatch.reconstruction_loss(img, [2, 5], model="random:toy"))


def test_cli_messages_name_the_users_word(tmp_path, capsys):
    Image.fromarray(photo(22)).save(tmp_path / "a.png")
    base = ["propose", str(tmp_path / "a.png"), "--out", str(tmp_path / "r"), *TOY]
    cases = [(["--ratio", "0.25", "-o", "bogus=1"], "strategy 'greedy' has no option bogus"),
             (["--ratio", "0.25", "--strategy", "random", "--precision", "bfloat16"],
              "strategy 'random' has no option precision"),
             (["--ratio", "0.25", "--strategy", "stochastic", "-o", "eps=abc"], "option eps must be a number"),
             (["--ratio", "0.25", "--strategy", "random", "--start", "none"], "strategy 'random' has no option start"),
             (["--ratio", "0.001", "--model", "default"], "ratio 0.001 keeps")]
    for extra, words in cases:
        assert main([*base, *extra]) == 2
        err = err_line(capsys)
        assert words in err and "__init__" not in err and "Proposer" not in err
        assert err.count("strategy '") <= 1
    assert not (tmp_path / "r" / "results.sqlite").exists() or stored(tmp_path / "r") == []


def test_folders_follow_links_once_and_survive_loops(tmp_path):
    from keypatch.geometry import list_image_files

    (tmp_path / "data" / "sub").mkdir(parents=True)
    Image.fromarray(photo(23)).save(tmp_path / "data" / "sub" / "x.png")
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(photo(24)).save(tmp_path / "elsewhere" / "y.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "linked")
    os.symlink(tmp_path / "data", tmp_path / "data" / "sub" / "loop")
    names = [p.name for p in list_image_files(tmp_path / "data")]
    assert sorted(names) == ["x.png", "y.png"]
