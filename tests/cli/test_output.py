"""What the commands print: strict JSON, one line per note or skipped file, logs with -v."""

from __future__ import annotations

import csv
import gc
import json
import logging
import re
import warnings

import numpy as np
import pytest
from PIL import Image

import keypatch
from keypatch.cli.main import main
from keypatch.geometry import ImageWarning, InputNote, list_image_files, load_image


def _no_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def strict_json(text: str):
    return json.loads(text, parse_constant=_no_constant)


@pytest.fixture
def folder(tmp_path, photo_dir):
    """Two readable photos (one not square), a truncated JPEG and an SVG."""
    d = tmp_path / "imgs"
    d.mkdir()
    Image.open(photo_dir / "chelsea.jpg").save(d / "cat.png")
    Image.open(photo_dir / "coffee.jpg").resize((96, 96)).save(d / "cup.png")
    (d / "broken.jpg").write_bytes((photo_dir / "astronaut.jpg").read_bytes()[:2000])
    (d / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    return d


def _lines(err: str, command: str) -> list[str]:
    """The lines of stderr other than a progress bar's redraws."""
    parts = [p.strip() for p in re.split(r"[\r\n]+", err)]
    lines = [p for p in parts if p and not re.match(r"^\w+: +\d+%\|", p)]
    assert all(ln.startswith(f"keypatch {command}: ") for ln in lines), err  # no source lines, no traceback
    return lines


def test_compare_skips_an_unreadable_file_and_prints_strict_json_with_times_per_image(folder, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["experiment", "compare", str(folder), "--ratios", "0.25", "0.5", "--strategies", "greedy", "random",
                 "--model", "random:toy", "--out", str(out), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = strict_json(captured.out)  # NaN seconds (prefix runs) are null
    assert isinstance(summary, dict) and summary["images"] == 2 and set(summary["files"]) >= {"compare.csv"}
    lines = _lines(captured.err, "experiment compare")
    assert len(lines) == 3 and sum("broken.jpg" in ln and "skipped" in ln for ln in lines) == 1
    assert "logo.svg" in captured.err and captured.err.count("note:") == 1  # the squashed photo, once
    rows = list(csv.DictReader((out / "compare.csv").open()))
    timed = [float(r["seconds"]) for r in rows if r["strategy"] == "greedy" and r["ratio"] == "0.5"]
    assert len(timed) == 2 and len(set(timed)) == 2  # each image its own time


def test_propose_export_report_json_are_single_strict_objects(folder, tmp_path, capsys):
    out = tmp_path / "res"
    for argv in (["propose", str(folder), "--ratio", "0.25", "--model", "random:toy", "--out", str(out)],
                 ["export", "--out", str(out), "--no-pictures"], ["report", "--out", str(out)]):
        assert main([*argv, "--json", "--quiet"]) == 0
        assert isinstance(strict_json(capsys.readouterr().out), dict)


def test_ablation_and_select_skip_what_they_cannot_read(folder, tmp_path, capsys):
    assert main(["experiment", "ablation", str(folder), "--max-ratio", "0.25", "--model", "random:toy", "--out",
                 str(tmp_path / "abl")]) == 0
    lines = _lines(capsys.readouterr().err, "experiment ablation")
    assert sum("broken.jpg" in ln for ln in lines) == 1 and sum("note:" in ln for ln in lines) == 1
    assert len((tmp_path / "abl" / "ablation.csv").read_text().splitlines()) > 1
    pytest.importorskip("efficientnet_lite_pytorch")
    assert main(["select", str(folder), "--ratio", "0.5", "--method", "random", "--out", str(tmp_path / "sel"),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert sum("broken.jpg" in ln for ln in _lines(captured.err, "select")) == 1
    assert "kept 1 of 2 images" in captured.out


def test_notes_are_given_once_per_kind_per_process():
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[10:20, 5:30] = 200
    model = keypatch.load_mae("random:toy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            keypatch.propose(arr, 0.25, model=model)
            load_image(arr, 64)
    assert [str(w.message) for w in caught if w.category is InputNote] == [
        "an image was not square: it was squashed to the model's square size without cropping (as KPP does) "
        "(image; said once, for the first such image)"]


def test_a_truncated_jpeg_is_one_message_and_no_unclosed_file(folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="broken.jpg is not a readable image"):
            load_image(folder / "broken.jpg", 64)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_an_svg_in_a_folder_is_left_out_with_a_warning_naming_it(folder):
    with pytest.warns(ImageWarning, match=r"1 image file\(s\) of a kind not taken from folders \(\.svg\).*logo\.svg"):
        files = list_image_files(folder)
    assert sorted(f.name for f in files) == ["broken.jpg", "cat.png", "cup.png"]


def test_verbose_logs_each_image_and_very_verbose_each_step(folder, tmp_path, caplog):
    (folder / "broken.jpg").unlink()
    with caplog.at_level(logging.DEBUG, logger="keypatch"):
        assert main(["propose", str(folder), "--ratio", "0.25", "--model", "random:toy", "--out",
                     str(tmp_path / "a"), "-q", "-v"]) == 0
        images = [r for r in caplog.records if r.name == "keypatch.propose"]
        assert len(images) == 2 and all("patches, L" in r.getMessage() for r in images)
        assert not [r for r in caplog.records if r.name == "keypatch.greedy"]
        caplog.clear()
        assert main(["propose", str(folder), "--ratio", "0.25", "--model", "random:toy", "--out",
                     str(tmp_path / "b"), "-q", "-vv"]) == 0
        steps = [r for r in caplog.records if r.name == "keypatch.greedy"]
        assert len(steps) == 2 * 3  # 4 patches from the centre: 3 steps per image
