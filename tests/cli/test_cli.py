"""``keypatch propose`` / ``keypatch export`` end to end: real photos, a tiny random MAE, tmp folders."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from PIL import Image

import keypatch.api
from keypatch.batch import ImageWarning, run_propose
from keypatch.cli.main import main
from keypatch.experiments.pictures import MARGIN, TITLE_HEIGHT
from keypatch.store import ResultStore, sha256_file
from tests.conftest import interrupt_call

skimage_data = pytest.importorskip("skimage.data")

TOY = ["--model", "random:toy", "--quiet"]
STEMS = {"astronaut", "chelsea", "coffee"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A nested folder of three real photos (jpg and png), plus a text file that is not taken."""
    root = tmp_path_factory.mktemp("photos")
    (root / "cats" / "deeper").mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.jpg", quality=90)
    Image.fromarray(skimage_data.chelsea()).save(root / "cats" / "chelsea.png")
    Image.fromarray(skimage_data.coffee()).save(root / "cats" / "deeper" / "coffee.jpg", quality=90)
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def proposed(photos, tmp_path_factory):
    """One finished ``propose`` run on ``photos`` with the toy model at ratio 0.25 (4 of 16 patches)."""
    out = tmp_path_factory.mktemp("results")
    assert main(["propose", str(photos), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    return out


def records(out, **filters):
    with ResultStore(out / "results.sqlite", create=False) as store:
        return store.records(**filters)


def test_propose_stores_one_record_per_image(proposed, photos):
    recs = records(proposed)
    assert {r.image_path.rsplit("/", 1)[-1] for r in recs} == {"astronaut.jpg", "chelsea.png", "coffee.jpg"}
    for r in recs:
        assert (r.model_id, r.strategy, r.ratio, r.start) == ("random:toy", "greedy", 0.25, "center")
        assert len(r.patches) == 4 == len(set(r.patches)) and all(0 <= p < 16 for p in r.patches)
        assert r.patches[0] == 10  # greedy starts at the centre of the 4x4 grid
        assert len(r.losses) == 4 and r.loss == r.losses[-1] and r.evaluations > 0 and r.seconds > 0
        assert r.sha256 == sha256_file(r.image_path) and r.image_path.startswith(str(photos))
        assert r.options == {"precision": "float32"}  # keyed on its settings, not the seed (auto: float32 here)
    # the stored losses are the real L of each prefix
    r = recs[0]
    expected = [keypatch.api.reconstruction_loss(r.image_path, r.patches[: j + 1], "random:toy", device="cpu")
                for j in range(4)]
    assert r.losses == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_second_run_does_no_work(proposed, photos, monkeypatch, capsys):
    before = {r.id: r.created for r in records(proposed)}

    def no_work(*args, **kwargs):
        raise AssertionError("propose_batch was called for an image that is already stored")

    monkeypatch.setattr(keypatch.api, "propose_batch", no_work)
    summary = run_propose([photos], 0.25, model="random:toy", out_dir=proposed, progress=False)
    assert (summary["found"], summary["done"], summary["skipped"], summary["failed"]) == (3, 0, 3, 0)
    assert main(["propose", str(photos), "--ratio", "0.25", "--out", str(proposed), *TOY]) == 0
    assert "0 new, 3 already stored" in capsys.readouterr().out
    assert {r.id: r.created for r in records(proposed)} == before


def test_moved_file_is_recognised_by_content(proposed, photos, tmp_path, monkeypatch):
    shutil.copy(photos / "cats" / "chelsea.png", tmp_path / "renamed.png")
    monkeypatch.setattr(keypatch.api, "propose_batch", lambda *a, **k: pytest.fail("recomputed"))
    summary = run_propose(tmp_path / "renamed.png", 0.25, model="random:toy", out_dir=proposed, progress=False)
    assert summary["skipped"] == 1 and summary["done"] == 0
    with ResultStore(proposed, read_only=True) as s:  # both paths of the content are kept
        (sha,) = {r.sha256 for r in s.records() if r.image_path.endswith("chelsea.png")}
        assert s.paths([sha])[sha] == sorted([str(photos / "cats" / "chelsea.png"), str(tmp_path / "renamed.png")])
    (tmp_path / "renamed.png").unlink()  # gone again: exports leave its path out


def test_export_json_and_one_picture_per_image(proposed, tmp_path, capsys):
    js, pics = tmp_path / "ids.json", tmp_path / "pics"
    assert main(["export", "--out", str(proposed), "--ids", str(js), "--pictures", str(pics), "--quiet"]) == 0
    assert "3 records" in capsys.readouterr().out
    data = json.loads(js.read_text())
    by_stem = {r.image_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]: r for r in records(proposed)}
    assert set(data) == STEMS
    for stem, entry in data.items():
        assert set(entry) == {"patch", "loss"}
        assert entry["patch"] == by_stem[stem].patches and entry["loss"] == by_stem[stem].losses[1:]
    files = sorted(pics.iterdir())
    assert [f.name for f in files] == sorted(f"{s}.png" for s in STEMS)
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size == (3 * 64 + 4 * MARGIN, 64 + TITLE_HEIGHT + 2 * MARGIN)


def test_export_defaults_and_no_pictures(photos, tmp_path):
    out = tmp_path / "res"
    assert main(["propose", str(photos / "astronaut.jpg"), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    assert main(["export", "--out", str(out), "--no-pictures", "--quiet"]) == 0
    assert set(json.loads((out / "patch_ids.json").read_text())) == {"astronaut"}
    assert not (out / "pictures").exists()
    assert main(["export", "--out", str(out), "--quiet"]) == 0
    assert [f.name for f in (out / "pictures").iterdir()] == ["astronaut.png"]


def test_export_needs_one_setting(photos, tmp_path, capsys):
    out = tmp_path / "res"
    one = str(photos / "cats" / "chelsea.png")
    assert main(["propose", one, "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    assert main(["propose", one, "--ratio", "0.25", "--strategy", "random", "--out", str(out), *TOY]) == 0
    capsys.readouterr()
    assert main(["export", "--out", str(out), "--no-pictures"]) == 2
    assert "2 different settings" in capsys.readouterr().err
    assert main(["export", "--out", str(out), "--strategy", "random", "--no-pictures"]) == 0
    (rec,) = records(out, strategy="random")
    assert rec.start == "" and len(rec.patches) == 4
    assert json.loads((out / "patch_ids.json").read_text())["chelsea"]["patch"] == rec.patches
    assert main(["export", "--out", str(out), "--ratio", "0.5"]) == 2
    assert "no records" in capsys.readouterr().err


def test_same_stem_in_two_folders(photos, tmp_path):
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "y").mkdir()
    shutil.copy(photos / "astronaut.jpg", src / "x" / "img.jpg")
    shutil.copy(photos / "cats" / "chelsea.png", src / "y" / "img.png")
    out = tmp_path / "res"
    assert main(["propose", str(src), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    assert main(["export", "--out", str(out), "--quiet"]) == 0
    keys = sorted(json.loads((out / "patch_ids.json").read_text()))
    assert keys == ["x/img", "y/img"]  # each is "img" in its own folder, where the authors' loader reads it
    assert sorted(f"{d.name}/{f.stem}" for d in (out / "pictures").iterdir() for f in d.iterdir()) == keys
    assert main(["export", "--out", str(out), "--quiet", "--per-folder", "--no-pictures"]) == 0
    for folder in ("x", "y"):
        assert list(json.loads((src / folder / "patch_ids.json").read_text())) == ["img"]


@pytest.mark.parametrize("ratio", ["0", "1.5"])
def test_bad_ratio_exits_2_and_writes_nothing(photos, tmp_path, capsys, ratio):
    out = tmp_path / "res"
    assert main(["propose", str(photos), "--ratio", ratio, "--out", str(out), *TOY]) == 2
    err = capsys.readouterr().err
    assert f"argument --ratio: expected a ratio in (0, 1], got '{ratio}'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_path_exits_2(photos, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["propose", str(photos), str(tmp_path / "nowhere"), "--ratio", "0.25", "--out", str(out), *TOY]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert not out.exists()


def test_bad_strategy_and_export_without_store(photos, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["propose", str(photos), "--ratio", "0.25", "--strategy", "magic", "--out", str(out), *TOY]) == 2
    assert "argument --strategy: invalid choice: 'magic'" in capsys.readouterr().err
    assert main(["propose", str(photos), "--ratio", "0.25", "--strategy", "random", "--precision", "bfloat16",
                 "--out", str(out), *TOY]) == 2
    assert "has no option precision" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", "--out", str(out)]) == 2
    assert "no results store" in capsys.readouterr().err
    assert not out.exists()


def test_unreadable_image_is_a_warning(photos, tmp_path, capsys):
    src = tmp_path / "mixed"
    shutil.copytree(photos, src)
    (src / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "res"
    assert main(["propose", str(src), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "broken.jpg" in captured.err
    assert "3 new, 0 already stored, 1 unreadable (of 4)" in captured.out
    assert len(records(out)) == 3
    with pytest.warns(ImageWarning, match="broken.jpg"):
        summary = run_propose(src, 0.25, model="random:toy", out_dir=out, progress=False)
    assert (summary["skipped"], summary["failed"]) == (3, 1)
    assert summary["failed_paths"] == [str(src / "cats" / "broken.jpg")]


def test_commands_show_their_warnings_but_not_other_packages_deprecations(capsys):
    from keypatch.cli.common import command_warnings

    with command_warnings("propose"):
        # as Ray Data raises them when it reads its own settings
        warnings.warn_explicit("`use_polars` is deprecated", DeprecationWarning, "context.py", 1,
                               module="ray.data.context")
        warnings.warn_explicit("option x is deprecated", DeprecationWarning, "batch.py", 1, module="keypatch.batch")
        warnings.warn("an image could not be read", ImageWarning, stacklevel=1)
        warnings.warn("an image could not be read", ImageWarning, stacklevel=1)  # every time, not once
    err = capsys.readouterr().err
    assert "use_polars" not in err
    assert "keypatch propose: warning: option x is deprecated" in err
    assert err.count("keypatch propose: warning: an image could not be read") == 2


def test_interrupted_run_keeps_finished_images(photos, tmp_path, monkeypatch, capsys):
    real = keypatch.api.propose_normalised
    monkeypatch.setattr(keypatch.api, "propose_normalised", interrupt_call(real, 2))
    out = tmp_path / "res"
    assert main(["propose", str(photos), "--ratio", "0.25", "--out", str(out), *TOY]) == 130
    assert "finished records are kept" in capsys.readouterr().err
    assert len(records(out)) == 1
    monkeypatch.setattr(keypatch.api, "propose_normalised", real)
    summary = run_propose(photos, 0.25, model="random:toy", out_dir=out, progress=False)
    assert (summary["done"], summary["skipped"]) == (2, 1)


def test_batched_run_matches_single(photos, proposed, tmp_path):
    out = tmp_path / "res"
    summary = run_propose(photos, 0.25, model="random:toy", out_dir=out, batch_size=3, progress=False)
    assert summary["done"] == 3
    single = {r.sha256: r.patches for r in records(proposed)}
    assert {r.sha256: r.patches for r in records(out)} == single


def test_default_size_model_on_a_224_photo(photos, tmp_path):
    """The 224 path: ``random:small`` (14x14 grid of 16 px patches), ratio 0.02 -> 4 patches."""
    out = tmp_path / "res"
    img = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).resize((224, 224)).save(img)
    assert main(["propose", str(img), "--ratio", "0.02", "--model", "random:small", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    (rec,) = records(out)
    assert rec.model_id == "random:small" and len(rec.patches) == 4 and rec.patches[0] == 105
    assert all(0 <= p < 196 for p in rec.patches) and len(rec.losses) == 4
    assert main(["export", "--out", str(out), "--quiet"]) == 0
    with Image.open(out / "pictures" / "astronaut.png") as im:
        assert im.size == (3 * 224 + 4 * MARGIN, 224 + TITLE_HEIGHT + 2 * MARGIN)


def test_strategy_options_are_passed_and_stored(photos, tmp_path, capsys):
    out = tmp_path / "res"
    one = str(photos / "astronaut.jpg")
    assert main(["propose", one, "--ratio", "0.5", "--strategy", "local", "-o", "radius=0", "-o", "top=2",
                 "--out", str(out), *TOY]) == 0
    (rec,) = records(out, strategy="local")
    stored = json.loads(rec.options_json)
    assert stored["radius"] == 0 and stored["top"] == 2
    assert rec.evaluations == 1 + 15 + 2 * 6  # centre, every candidate, then `top` per later step
    capsys.readouterr()
    assert main(["propose", one, "--ratio", "0.5", "--strategy", "local", "-o", "depth=3",
                 "--out", str(tmp_path / "bad"), *TOY]) == 2
    assert "depth" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["propose", one, "--ratio", "0.5", "-o", "start=none", "--out", str(tmp_path / "bad"), *TOY]) == 2
    assert "start has its own flag" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["propose", one, "--ratio", "0.5", "-o", "no-equals-sign", "--out", str(tmp_path / "bad"), *TOY]) == 2
    assert "argument -o/--option: expected KEY=VALUE, got 'no-equals-sign'" in capsys.readouterr().err


def test_swap_takes_its_base_and_the_base_options_from_the_command_line(photos, tmp_path):
    out = tmp_path / "res"
    one = str(photos / "astronaut.jpg")
    assert main(["propose", one, "--ratio", "0.25", "--strategy", "swap", "-o", "base=stochastic", "-o", "eps=0.5",
                 "-o", "rounds=1", "--out", str(out), *TOY]) == 0
    (rec,) = records(out, strategy="swap")
    stored = json.loads(rec.options_json)
    assert stored == {**stored, "base": "stochastic", "eps": 0.5, "rounds": 1}
    # stochastic: centre, then ceil((16 / 4) ln 2) = 3 samples for each of 3 steps; then 1 round of moves
    assert 1 + 3 * 3 < rec.evaluations <= 1 + 3 * 3 + 4 * 8


def test_json_summaries_of_propose_and_export(photos, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["propose", str(photos), "--ratio", "0.25", "--out", str(out), "--json", *TOY]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["found"], s["done"], s["skipped"], s["k"], s["strategy"]) == (3, 3, 0, 4, "greedy")
    assert main(["propose", str(photos), "--ratio", "0.25", "--out", str(out), "--json", *TOY]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 3
    assert main(["export", "--out", str(out), "--no-pictures", "--json", "--quiet"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["records"] == 3 and set(json.loads((out / "patch_ids.json").read_text())) == STEMS


def test_shared_options_are_the_same_in_every_command():
    import argparse

    from keypatch.cli.common import DEVICES
    from keypatch.cli.main import build_parser

    def leaves(parser):
        for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
            for name, p in sub.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
                yield from (leaves(p) if nested else [(name, p)])

    devices = 0
    for name, p in leaves(build_parser()):
        opts = {o: a for a in p._actions for o in a.option_strings}
        assert "--no-progress" not in opts, name
        assert "-v" in opts and "--verbose" in opts, name
        if "--quiet" in opts:
            assert "-q" in opts, name
        if "--device" in opts:
            devices += 1
            assert tuple(opts["--device"].choices) == DEVICES and opts["--device"].default == "auto", name
    assert devices >= 7
