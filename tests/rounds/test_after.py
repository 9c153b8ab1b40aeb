"""Rounds from files: ``propose --budget`` into a store, ``--after`` a results folder, a
``patch_ids.json`` or a Label Studio export (the patches its annotations cover)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keypatch.cli.main import main
from keypatch.geometry import PatchGrid
from keypatch.rounds.after import match_earlier, patches_covered, read_earlier
from keypatch.store import ResultStore
from keypatch.untrusted import HostileFileError

TOY = ["--model", "random:toy:0", "--quiet"]


def _records(out):
    with ResultStore(out, create=False, read_only=True) as store:
        return {r.image_path.rsplit("/", 1)[-1]: r for r in store.records()}


def test_a_budget_then_a_round_after_it_from_the_store(photo_dir, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["propose", str(photo_dir), "--budget", "7", "--out", str(one), *TOY]) == 0
    first = _records(one)
    assert sum(len(r.patches) for r in first.values()) == 7 and len(first) == 3
    assert len({r.settings for r in first.values()}) == 1  # one setting: the pool's
    capsys.readouterr()
    assert main(["propose", str(photo_dir), "--budget", "7", "--out", str(one), *TOY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 0  # a re-run computes nothing
    assert main(["propose", str(photo_dir), "--budget", "6", "--after", str(one), "--strategy", "ranked",
                 "--out", str(two), *TOY]) == 0
    second = _records(two)
    assert sum(len(r.patches) for r in second.values()) == 13
    for name, r in second.items():
        assert r.patches[: len(first[name].patches)] == first[name].patches
        assert r.options["after"] and r.options["budget"] == 6
    # a store with two settings for an image: which round to continue is not guessed
    assert main(["propose", str(photo_dir), "--ratio", "0.25", "--out", str(one), *TOY]) == 0
    assert main(["propose", str(photo_dir), "--budget", "3", "--after", str(one), "--out", str(tmp_path / "x"),
                 *TOY]) == 2
    assert "more than one setting" in capsys.readouterr().err


def test_patch_ids_json_by_name_and_its_hostile_twins(photo_dir, tmp_path):
    grid = PatchGrid(64, 16)
    good = tmp_path / "patch_ids.json"
    good.write_text(json.dumps({"astronaut": {"patch": [5, 1], "loss": [0.5]}}))
    earlier = read_earlier(good, grid)
    paths = sorted(photo_dir.rglob("*.jpg"))
    assert match_earlier(earlier, paths, ["x"] * len(paths)) == [[5, 1] if p.stem == "astronaut" else []
                                                                  for p in paths]
    for bad in ({"astronaut": {"patch": [16]}}, {"astronaut": {"patch": [2, 2]}}, {"astronaut": [1]}):
        good.write_text(json.dumps(bad))
        with pytest.raises(HostileFileError):
            read_earlier(good, grid)
    good.write_text("42")
    with pytest.raises(HostileFileError, match="neither"):
        read_earlier(good, grid)


def test_the_patches_a_label_studio_export_covers(tmp_path):
    """A rectangle over the left half of a 200x100 image and a polygon over its bottom-right cell,
    a 4x4 grid: the left two columns and that cell; a sliver under half a cell counts for nothing."""
    grid = PatchGrid(64, 16)
    res = {"original_width": 200, "original_height": 100, "from_name": "tag", "to_name": "image"}
    results = [
        {**res, "type": "rectanglelabels", "value": {"x": 0, "y": 0, "width": 50, "height": 100,
                                                      "rectanglelabels": ["road"]}},
        {**res, "type": "polygonlabels", "value": {"points": [[75, 75], [100, 75], [100, 100], [75, 100]],
                                                    "polygonlabels": ["car"]}},
        {**res, "type": "rectanglelabels", "value": {"x": 50, "y": 0, "width": 10, "height": 25,
                                                      "rectanglelabels": ["car"]}},
    ]
    export = [{"id": 1, "data": {"image": "/data/local-files/?d=pool/street.jpg"},
               "annotations": [{"id": 7, "result": results}]},
              {"id": 2, "data": {"image": "/data/local-files/?d=pool/empty.jpg"}, "annotations": []}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    earlier = read_earlier(path, grid)
    assert earlier.by_name == {"street": [0, 1, 4, 5, 8, 9, 12, 13, 15]}
    assert match_earlier(earlier, [tmp_path / "street.jpg", tmp_path / "empty.jpg"], ["a", "b"]) == [
        [0, 1, 4, 5, 8, 9, 12, 13, 15], []]
    with pytest.raises(ValueError, match="both 'street'"):
        match_earlier(earlier, [tmp_path / "a" / "street.jpg", tmp_path / "b" / "street.png"], ["a", "b"])
    # the rule on its own: at least half of a patch's pixels
    labelled = np.zeros((64, 64), bool)
    labelled[:8, :16] = True  # half of patch 0
    labelled[16:23, 16:32] = True  # 7 of patch 5's 16 rows
    assert patches_covered(labelled, grid) == [0]


def test_two_runs_of_one_pool_at_once_store_one_record_per_image(photo_dir, tmp_path):
    """Two processes spend the same budget over the same pool into one store at the same time: both
    finish, the store holds one record per image, and a third run computes nothing."""
    import subprocess
    import sys

    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "keypatch", "propose", str(photo_dir), "--budget", "7", "--out", str(out), *TOY,
           "--json"]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [json.loads(r.communicate(timeout=300)[0]) for r in runs]
    assert all(r.returncode == 0 for r in runs)
    assert sum(d["done"] for d in done) == 3  # each image stored once, by one run or the other
    records = _records(out)
    assert len(records) == 3 and sum(len(r.patches) for r in records.values()) == 7
    with ResultStore(out, create=False, read_only=True) as store:
        assert len(store.records()) == 3
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(third.stdout)["done"] == 0
